//! The two commands that learn from the adult X-rays, run as a user runs them (tiny epochs, real
//! data): `train --adults` (with the default's flags: class-balanced, each repeat a new
//! rendering of the file) cross-validates by patient and then trains a screen for both
//! populations, and `transfer` cross-validates four settings and writes the COVID-19 model.
//! Each model file must load, name its classes, and equal the trainer's integer forward pass.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use hexray_model::CompiledModel;
use serde_json::Value;

/// The flags that make a run take seconds: one epoch per phase, two folds, one seed.
const TINY: &[&str] = &[
    "--teacher-epochs",
    "1",
    "--blend-epochs",
    "1",
    "--student-epochs",
    "1",
    "--quantized-epochs",
    "1",
    "--full-resolution-copies",
    "0",
    "--strong-teacher",
    "none",
    "--draws",
    "2",
    "--quiet",
];

fn run(args: &[&str], data: &Path) {
    let output = Command::new(env!("CARGO_BIN_EXE_hexray-trainer"))
        .args(args)
        .args(TINY)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn model(path: &Path) -> CompiledModel {
    CompiledModel::from_bytes(&std::fs::read(path).unwrap())
        .unwrap()
        .0
}

fn report(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// PneumoniaMNIST and the adult set's labels.csv, from the shared data.
fn datasets() -> (PathBuf, PathBuf) {
    (
        common::shared_data("pneumoniamnist.npz"),
        common::shared_data("covid-cxr-actualmed/labels.csv"),
    )
}

/// Each seed's calls cover every adult image once per draw (and once for a float teacher).
fn assert_every_image_called(cv: &Value, draws: u64) {
    assert_eq!(cv["images"], 44);
    assert_eq!(cv["patients"], 39);
    for seed in cv["seeds"].as_array().unwrap() {
        let calls = seed["abnormal_flagged"][1].as_u64().unwrap()
            + seed["normal_cleared"][1].as_u64().unwrap();
        assert_eq!(calls, 44 * draws, "{seed}");
    }
}

#[test]
fn a_screen_learns_from_both_populations_and_is_cross_validated_on_adults() {
    let (data, adults) = datasets();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("screen");
    run(
        &[
            "train",
            "--topology",
            "mlp-16",
            "--name",
            "screen-test",
            "--class-names",
            "normal,abnormal (pneumonia or COVID-19)",
            "--adults",
            adults.to_str().unwrap(),
            "--adult-repeats",
            "2",
            "--adult-balance",
            "--adult-renderings",
            "--adult-folds",
            "2",
            "--adult-seeds",
            "1",
            "--encrypted-sample",
            "0",
            "--out",
            out.to_str().unwrap(),
        ],
        &data,
    );
    let model = model(&out.join("model.hexray"));
    assert_eq!(model.name, "screen-test");
    assert_eq!(
        model.network.output.classes,
        ["normal", "abnormal (pneumonia or COVID-19)"]
    );
    // A sentence, though its first class name is lower-case.
    assert!(model.description.starts_with("Normal vs abnormal"));
    for said in ["44 adult X-rays", "full-resolution renderings"] {
        assert!(model.description.contains(said), "{}", model.description);
    }
    let report = report(&out.join("report.json"));
    assert_eq!(report["export_mismatches"], 0);
    let models = report["adults"]["models"].as_array().unwrap();
    assert_eq!(
        models.len(),
        2,
        "the float teacher and the compiled student"
    );
    assert_every_image_called(&models[0], 1);
    assert_every_image_called(&models[1], 2);
    assert!(report["adults"]["balanced"].as_bool().unwrap());
    assert!(report["adults"]["renderings"].as_bool().unwrap());
}

#[test]
fn transfer_cross_validates_four_settings_and_writes_the_covid_model() {
    let (data, adults) = datasets();
    let dir = tempfile::tempdir().unwrap();
    let (doc, model_dir) = (dir.path().join("transfer.md"), dir.path().join("covid"));
    run(
        &[
            "transfer",
            "--topology",
            "mlp-16",
            "--folder",
            adults.to_str().unwrap(),
            "--folds",
            "2",
            "--seeds",
            "1",
            "--out",
            doc.to_str().unwrap(),
            "--model-dir",
            model_dir.to_str().unwrap(),
        ],
        &data,
    );
    let model = model(&model_dir.join("model.hexray"));
    assert_eq!(model.name, "covid-19-mlp-16");
    assert_eq!(model.network.output.classes, ["normal", "covid-19"]);
    let report = report(&model_dir.join("report.json"));
    assert_eq!(report["export_mismatches"], 0);
    assert_eq!(report["export_images"], 44 + 468);
    let settings = report["settings"].as_array().unwrap();
    assert_eq!(settings.len(), 4);
    assert_eq!(report["shipped"], settings[3]["setting"]);
    assert_eq!(report["renderings"], false);
    for setting in settings {
        assert_every_image_called(&setting["teacher"], 1);
        assert_every_image_called(&setting["student"], 2);
    }
    let doc = std::fs::read_to_string(&doc).unwrap();
    for setting in settings {
        assert!(doc.contains(setting["setting"].as_str().unwrap()), "{doc}");
    }
    assert!(doc.contains("no patient in two"), "{doc}");
}
