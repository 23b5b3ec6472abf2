//! The compiler's noise model is true. Real layer accumulators are bootstrapped through an
//! identity table at the finest box size, decrypted and compared with their exact values; the
//! errors' spread must match the σ the compiler recorded for each neuron.
//!
//! - Stage 0 reads fresh encryptions: its noise is almost all keyswitch + modulus switch.
//! - Stage 1 reads real stage-0 bootstrap outputs: its noise also carries ‖w‖² times the
//!   bootstrap output variance, the term that grows with the trained weights. To know those
//!   inputs exactly, stage 0 is bootstrapped here through constant tables (a bootstrap's noise
//!   does not depend on its table), so each output is exactly `q·Δ₁` plus bootstrap noise.

use hexray_test_kit::fixtures;

use hexray_crypto::{Ciphertexts, ClientKey, ServerKey};
use hexray_engine::evaluate::dot_product;
use hexray_model::{Circuit, Stage};
use rayon::prelude::*;

const IMAGES: [&str; 2] = [
    "pneumoniamnist/test-0000-pneumonia.png",
    "pneumoniamnist/test-0234-normal.png",
];

/// Bootstraps every neuron of `stage` through an identity table and returns each error,
/// divided by the predicted σ (recorded σ plus the rounding to a box, variance 1/12 box²).
fn normalised_errors(
    circuit: &Circuit,
    stage: &Stage,
    inputs: &Ciphertexts,
    exact_inputs: &[i64],
    client: &ClientKey,
    server: &ServerKey,
) -> Vec<f64> {
    let shift = circuit.position_shift();
    let identity: Vec<u64> = (0..circuit.polynomial_size as u64)
        .map(|p| (p << shift) + (1u64 << (shift - 1)))
        .collect();
    let lut = server.lookup_table(&identity);
    let outputs = (0..stage.neurons.len())
        .into_par_iter()
        .map(|j| server.bootstrap(dot_product(stage, j, inputs), &lut))
        .collect();
    client
        .decrypt_phases(&Ciphertexts::concat(outputs))
        .into_iter()
        .enumerate()
        .map(|(j, decrypted)| {
            let error = decrypted.wrapping_sub(stage.phase(j, exact_inputs)) as i64 as f64
                / (1u64 << shift) as f64;
            let sigma_boxes = stage.neurons[j].sigma * 2.0 * circuit.polynomial_size as f64;
            error / (sigma_boxes * sigma_boxes + 1.0 / 12.0).sqrt()
        })
        .collect()
}

fn check(label: &str, errors: &[f64]) {
    let n = errors.len() as f64;
    let mean = errors.iter().sum::<f64>() / n;
    let std = (errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / n).sqrt();
    println!(
        "{label}: {} bootstraps, measured/predicted σ = {std:.3}, mean error = {mean:.3} σ",
        errors.len()
    );
    assert!(
        (0.75..=1.25).contains(&std),
        "{label}: measured σ is {std:.3}× the prediction"
    );
    assert!(
        mean.abs() < 0.25,
        "{label}: errors are biased by {mean:.3} σ: the box convention is off"
    );
}

#[test]
fn measured_bootstrap_noise_matches_the_predicted_sigma() {
    let model = fixtures::reference_model();
    let (client, server) = fixtures::keys(&model);
    let circuit = &model.circuit();
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for (seed, name) in IMAGES.into_iter().enumerate() {
        let input = fixtures::sample(&model, name);
        let pixels: Vec<i64> = input.iter().copied().collect();
        let encrypted = client
            .encrypt_deterministic(model.spec(), input.view(), seed as u128)
            .unwrap()
            .expand();
        first.extend(normalised_errors(
            circuit,
            &circuit.stages[0],
            &encrypted,
            &pixels,
            &client,
            &server,
        ));

        // Stage 1 reads real bootstrap outputs whose integers are known: neuron j of stage 0
        // outputs a constant q_j spread over stage 1's input range.
        let stage1 = &circuit.stages[1];
        let produced: Vec<i64> = stage1
            .input_ranges
            .iter()
            .enumerate()
            .map(|(j, &(lo, hi))| lo + (j as i64 * 7) % (hi - lo + 1))
            .collect();
        let outputs = produced
            .par_iter()
            .enumerate()
            .map(|(j, &q)| {
                let table =
                    vec![(q as u64).wrapping_mul(stage1.delta); circuit.polynomial_size as usize];
                let phase = dot_product(&circuit.stages[0], j, &encrypted);
                server.bootstrap(phase, &server.lookup_table(&table))
            })
            .collect();
        let hidden = Ciphertexts::concat(outputs);
        second.extend(normalised_errors(
            circuit, stage1, &hidden, &produced, &client, &server,
        ));
    }
    check("stage 0 (fresh inputs)", &first);
    check("stage 1 (bootstrapped inputs)", &second);
}
