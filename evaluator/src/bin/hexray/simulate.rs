//! `hexray simulate`: what the plaintext simulator predicts for an image, exactly and under
//! TFHE's noise, as JSON, with the preprocessed input integers a client would encrypt. It is
//! the native reference the browser test compares the page with, borderline marks included.

use anyhow::Result;
use hexray_model::{simulate, Diagnosis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::{read_image, ImageArgs};

pub fn simulate(args: ImageArgs) -> Result<()> {
    let loaded = args.model.load()?;
    let circuit = &loaded.circuit();
    let input = read_image(&args.image, &loaded.model().network.input)?;
    let exact = simulate::exact(circuit, input.view())?;
    let classes = circuit.classes.len();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let runs = (0..args.noisy_runs)
        .map(|_| simulate::noisy(circuit, input.view(), &mut rng))
        .collect::<Result<Vec<_>, _>>()?;
    let mut votes = vec![0usize; classes];
    for run in &runs {
        votes[run.class()] += 1;
    }
    // Draws a client would mark borderline, decoded as a client decodes them.
    let margin = loaded.model().borderline_margin;
    let borderline = runs
        .iter()
        .filter(|run| Diagnosis::of_prediction(circuit, run).is_borderline(margin))
        .count();
    let column = |k: usize| runs.iter().map(move |r| r.probabilities[k]);
    let n = runs.len() as f64;
    let mean: Vec<f64> = (0..classes).map(|k| column(k).sum::<f64>() / n).collect();
    let sd: Vec<f64> = (0..classes)
        .map(|k| (column(k).map(|p| (p - mean[k]).powi(2)).sum::<f64>() / (n - 1.0)).sqrt())
        .collect();
    let low: Vec<f64> = (0..classes)
        .map(|k| column(k).fold(f64::INFINITY, f64::min))
        .collect();
    let high: Vec<f64> = (0..classes)
        .map(|k| column(k).fold(f64::NEG_INFINITY, f64::max))
        .collect();
    let report = json!({
        "image": args.image.display().to_string(),
        "model": { "name": loaded.model().name, "version": loaded.model().model_version },
        "classes": circuit.classes,
        // What a client encrypts for this image, row by row: for audits of what leaves a page.
        "input": input.iter().collect::<Vec<_>>(),
        "exact": {
            "class": circuit.classes[exact.class()],
            "probabilities": exact.probabilities,
        },
        "noisy": {
            "runs": runs.len(),
            "mean_probabilities": mean,
            "sd_probabilities": sd,
            "min_probabilities": low,
            "max_probabilities": high,
            "class_votes": votes,
            "borderline_votes": borderline,
        },
        "borderline_margin": margin,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
