//! The bundled models, trained with full-resolution copies (`--full-resolution-copies`), must
//! call a full-resolution X-ray as it calls the same X-ray shrunk the way MedMNIST shrank its
//! training images, or shrunk and recompressed by an export tool.

use std::io::Cursor;
use std::path::PathBuf;

use hexray_model::preprocess::preprocess;
use hexray_model::simulate;
use hexray_model::CompiledModel;
use hexray_trainer::full_resolution::check_file;
use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_shipped_models_call_full_resolution_x_rays_as_their_downscaled_copies() {
    for id in ["screen-mlp-32", "pneumonia-mlp-64"] {
        agrees_at_every_size(id);
    }
}

fn agrees_at_every_size(id: &str) {
    let bytes = std::fs::read(repo().join(format!("models/{id}.hexray"))).unwrap();
    let (model, circuit) = CompiledModel::from_bytes(&bytes).unwrap();
    let spec = &model.network.input;
    for sample in ["covid-1.png", "normal-1.png"] {
        let file = std::fs::read(repo().join("samples/covid-cxr-actualmed").join(sample)).unwrap();
        let (full, medmnist) = check_file(&file, &circuit, spec).unwrap();
        assert_eq!(
            full.class(),
            medmnist.class(),
            "{id}, {sample}: full resolution {:?}, MedMNIST-style copy {:?}",
            full.probabilities,
            medmnist.probabilities
        );

        // A quarter-size JPEG, as a PACS export or a screenshot gives.
        let image = image::load_from_memory(&file).unwrap();
        let small = image.resize(image.width() / 4, image.height() / 4, FilterType::Triangle);
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(Cursor::new(&mut jpeg), 80)
            .encode_image(&small.to_luma8())
            .unwrap();
        let shrunk = simulate::exact(&circuit, preprocess(&jpeg, spec).unwrap().view()).unwrap();
        assert_eq!(
            full.class(),
            shrunk.class(),
            "{id}, {sample}: full resolution {:?}, quarter-size JPEG {:?}",
            full.probabilities,
            shrunk.probabilities
        );
    }
}
