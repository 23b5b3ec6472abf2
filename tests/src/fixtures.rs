//! Shared fixtures: the bundled reference model, sample images and deterministic keys.

use std::path::PathBuf;

use hexray_crypto::{ClientKey, ServerKey};
use hexray_engine::LoadedModel;
use hexray_model::preprocess::preprocess;
use ndarray::Array3;

/// The repository's root, for its committed models and samples.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The engine's reference model (`models/reference-a.hexray`): small, and two stages deep.
pub fn reference_model() -> LoadedModel {
    LoadedModel::from_file(&repo().join("models/reference-a.hexray")).expect("bundled model loads")
}

/// A committed sample file: `samples/<name>`.
pub fn sample_file(name: &str) -> PathBuf {
    repo().join("samples").join(name)
}

/// A committed sample image, preprocessed for `model`.
pub fn sample(model: &LoadedModel, name: &str) -> Array3<i64> {
    let bytes = std::fs::read(sample_file(name)).expect("sample exists");
    preprocess(&bytes, &model.model().network.input).expect("sample preprocesses")
}

/// Keys from a fixed seed, so that every bootstrap in a test is reproducible.
pub fn keys(model: &LoadedModel) -> (ClientKey, ServerKey) {
    let (client, server) =
        ClientKey::generate_deterministic(model.parameter_set(), 0x4845_5852_4159);
    (client, server.decompress())
}
