//! Encrypted inference on a sample of test images, through the evaluator library: the same
//! keys, encryption, engine and decryption the product uses. It is the ground truth the
//! simulator's predictions are checked against in every report.

use std::time::Instant;

use hexray_crypto::{ClientKey, CryptoError};
use hexray_evaluator::engine::{evaluate, EngineError};
use hexray_evaluator::model::LoadError;
use hexray_evaluator::LoadedModel;
use hexray_model::CompiledModel;
use serde::Serialize;

use crate::data::Dataset;

/// Why an encrypted run failed.
#[derive(Debug, thiserror::Error)]
pub enum EncryptedError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Model(#[from] hexray_model::ModelError),
}

/// What encrypted inference gave on the sample.
#[derive(Clone, Debug, Serialize)]
pub struct EncryptedRun {
    /// Class probabilities per image, as decrypted.
    pub probabilities: Vec<Vec<f64>>,
    pub labels: Vec<usize>,
    /// Images whose decrypted class equals the exact simulation's.
    pub agree_with_simulator: usize,
    pub bootstraps_per_image: usize,
    /// Mean wall-clock seconds per image on this machine.
    pub seconds_per_image: f64,
    /// Mean single-core seconds per bootstrap, from the engine's own accounting.
    pub seconds_per_bootstrap: f64,
    pub threads: usize,
}

/// Encrypts, evaluates and decrypts `count` images spread evenly over `test`, with a fresh key.
pub fn run(
    model: &CompiledModel,
    test: &Dataset,
    count: usize,
) -> Result<EncryptedRun, EncryptedError> {
    let loaded = LoadedModel::from_bytes(&model.to_bytes(), &model.name)?;
    let client = ClientKey::generate(loaded.parameter_set);
    let server = client.server_key().decompress();
    let circuit = &loaded.circuit;
    let count = count.min(test.len());
    let sample: Vec<usize> = (0..count).map(|i| i * test.len() / count).collect();
    let mut run = EncryptedRun {
        probabilities: Vec::with_capacity(count),
        labels: sample.iter().map(|&i| test.labels[i]).collect(),
        agree_with_simulator: 0,
        bootstraps_per_image: circuit.bootstrap_count(),
        seconds_per_image: 0.0,
        seconds_per_bootstrap: 0.0,
        threads: rayon::current_num_threads(),
    };
    let (mut wall, mut bootstrap_cpu) = (0.0, 0.0);
    for image in sample.iter().map(|&i| &test.images[i]) {
        let encrypted = client.encrypt(circuit, image.view())?;
        let start = Instant::now();
        let (output, stats) = evaluate(&loaded, &server, encrypted, &|| {})?;
        wall += start.elapsed().as_secs_f64();
        bootstrap_cpu += stats.bootstrap_cpu.as_secs_f64();
        let prediction = client.decrypt(circuit, &output)?;
        let exact = circuit.simulate(image.view())?;
        run.agree_with_simulator += usize::from(prediction.class() == exact.class());
        run.probabilities.push(prediction.probabilities);
    }
    let n = count.max(1) as f64;
    run.seconds_per_image = wall / n;
    run.seconds_per_bootstrap = bootstrap_cpu / (n * run.bootstraps_per_image.max(1) as f64);
    Ok(run)
}
