//! Every bundled model has a model card, and the card's figures are its sources' figures: the
//! model file, the training report (encrypted accuracy on children; adult figures
//! cross-validated by patient, and the teacher–student gap, where the model learned from
//! adults), the full-resolution check and the stability report. A card
//! that is not regenerated when its model is fails here.

use hexray_test_kit::fixtures;

use hexray_evaluator::server::models::Models;
use hexray_trainer::crossval::wilson;
use serde_json::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(fixtures::repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The value cell of the card's figures table, in the row whose label starts with `label`.
fn figure<'a>(card: &'a str, label: &str) -> &'a str {
    card.lines()
        .find(|line| line.starts_with(&format!("| {label}")))
        .and_then(|line| line.split(" | ").nth(1))
        .unwrap_or_else(|| panic!("the card has no figure `{label}`"))
}

/// The cells of the Markdown table row whose first cell is `first`.
fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|line| line.split('|').map(str::trim).collect::<Vec<_>>())
        .find(|cells| cells.get(1) == Some(&first))
        .unwrap_or_else(|| panic!("no row for {first}"))
}

/// A proportion as cards write it: `0.611 (11/18), 95% CI 0.386–0.797`, with the reports'
/// Wilson interval.
fn proportion(k: u64, n: u64) -> String {
    let (low, high) = wilson(k as f64 / n as f64, n as usize);
    format!(
        "{:.3} ({k}/{n}), 95% CI {low:.3}–{high:.3}",
        k as f64 / n as f64
    )
}

/// `k` and `n` of a cell such as `0.611 (11/18)`.
fn counts(cell: &str) -> (u64, u64) {
    let inner = cell
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'));
    let (k, n) = inner.and_then(|i| i.split_once('/')).expect(cell);
    (k.parse().unwrap(), n.parse().unwrap())
}

/// A cross-validated figure as cards write it, recomputed from the report's per-seed counts:
/// `mean ± sd [low, high]`, the mean and sample standard deviation over seeds and the Wilson
/// interval of the mean over the images.
fn cross_validated_cell(model: &Value, field: &str, images: &str) -> String {
    let shares: Vec<f64> = model["seeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|seed| seed[field][0].as_f64().unwrap() / seed[field][1].as_f64().unwrap())
        .collect();
    let n = shares.len() as f64;
    let mean = shares.iter().sum::<f64>() / n;
    let sd = (shares.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
    let (low, high) = wilson(mean, model[images].as_u64().unwrap() as usize);
    format!("{mean:.3} ± {sd:.3} [{low:.2}, {high:.2}]")
}

#[test]
fn every_bundled_model_has_a_card_whose_figures_are_its_sources() {
    let full_resolution = read("docs/full-resolution.md");
    let stability = read("docs/stability.md");
    let models = Models::bundled().unwrap();
    assert!(models.len() >= 2);
    for model in models.iter() {
        let id = &model.id;
        let card = model.card.as_deref().expect("a bundled model has a card");
        assert_eq!(card, read(&format!("docs/model-cards/{id}.md")), "{id}");
        assert!(card.starts_with(&format!("# Model card: `{id}`")), "{id}");
        for section in [
            "## Summary",
            "## Intended use and users",
            "## Training data and its population",
            "## Measured figures",
            "## Known failure modes",
            "## Must not be used for",
        ] {
            assert!(card.contains(&format!("\n{section}\n")), "{id}: {section}");
        }

        // The model file.
        let loaded = &model.loaded;
        assert_eq!(
            figure(card, "bootstraps per image"),
            loaded.circuit().bootstrap_count().to_string(),
            "{id}"
        );
        assert_eq!(
            figure(card, "borderline margin"),
            format!("{:.2} logits", loaded.model().borderline_margin),
            "{id}"
        );

        // The training report: the encrypted accuracy on the whole test split, where the
        // model was made for it, and the cross-validated figures on adults, where it learned
        // from them.
        let report: Value =
            serde_json::from_str(&read(&format!("docs/training/{id}/report.json"))).unwrap();
        // Its circuit equals the trainer's integer forward pass on the images it was checked on.
        assert_eq!(report["export_mismatches"], 0, "{id}");
        let encrypted = report["rows"].as_array().and_then(|rows| {
            rows.iter()
                .find(|r| r["name"].as_str().unwrap().starts_with("encrypted"))
        });
        if let Some(encrypted) = encrypted {
            let confusion = &encrypted["scores"]["confusion"];
            let right = (0..2)
                .map(|k| confusion[k][k].as_u64().unwrap())
                .sum::<u64>();
            let all = encrypted["scores"]["count"].as_u64().unwrap();
            assert_eq!(
                figure(card, "encrypted accuracy"),
                proportion(right, all),
                "{id}"
            );
        }
        let cross_validated = match (&report["adults"], &report["settings"]) {
            (Value::Object(adults), _) => adults["models"].as_array().unwrap().last().cloned(),
            (_, Value::Array(settings)) => {
                let shipped = settings
                    .iter()
                    .find(|s| s["setting"] == report["shipped"])
                    .expect("the shipped setting's figures");
                let gap = &shipped["gap_points"];
                assert_eq!(
                    figure(card, "teacher–student gap"),
                    format!(
                        "{:.1} ± {:.1} points",
                        gap[0].as_f64().unwrap(),
                        gap[1].as_f64().unwrap()
                    ),
                    "{id}"
                );
                Some(shipped["student"].clone())
            }
            _ => None,
        };
        let adult = row(&full_resolution, id);
        match cross_validated {
            Some(cv) => {
                assert!(
                    encrypted.is_some() || report["export_mismatches"] == 0,
                    "{id}"
                );
                for (label, field, images) in [
                    (
                        "adult abnormal X-rays not called normal",
                        "abnormal_flagged",
                        "abnormal_images",
                    ),
                    (
                        "adult normals called normal",
                        "normal_cleared",
                        "normal_images",
                    ),
                ] {
                    assert_eq!(
                        figure(card, label),
                        cross_validated_cell(&cv, field, images),
                        "{id}: {label}"
                    );
                }
            }
            // Never trained on adults: every adult image is held out.
            None => {
                for (label, cell) in [
                    ("adult normals called normal", adult[5]),
                    ("adult COVID-19 X-rays not called normal", adult[6]),
                ] {
                    let (k, n) = counts(cell);
                    assert_eq!(figure(card, label), proportion(k, n), "{id}: {label}");
                }
            }
        }
        assert_eq!(figure(card, "full-resolution agreement"), adult[4], "{id}");

        // The stability report: the share of simulated results marked borderline.
        let section = stability
            .split_once(&format!("## `{id}`"))
            .expect("a stability section")
            .1;
        let marked = section
            .split_once(" it marks ")
            .and_then(|(_, rest)| rest.split_once(" of results"))
            .expect("the borderline mark's share")
            .0;
        assert_eq!(figure(card, "results marked borderline"), marked, "{id}");
    }
}
