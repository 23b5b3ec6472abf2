//! The compiler's noise model is true. Real layer accumulators are bootstrapped through an
//! identity table at the finest box size, decrypted and compared with their exact values; the
//! errors' spread must match the σ the compiler recorded for each neuron.
//!
//! - Stage 0 reads fresh encryptions: its noise is almost all keyswitch + modulus switch.
//! - Stage 1 reads real stage-0 bootstrap outputs: its noise also carries ‖w‖² times the
//!   bootstrap output variance, the term that grows with the trained weights. To know those
//!   inputs exactly, stage 0 is bootstrapped here through constant tables (a bootstrap's noise
//!   does not depend on its table), so each output is exactly `q·Δ₁` plus bootstrap noise.

mod common;

use hexray_crypto::tfhe::core_crypto::prelude::{LweCiphertextList, LweCiphertextListOwned};
use hexray_crypto::{ClientKey, ServerKey};
use hexray_engine::evaluate::{bootstrap, dot_product, lookup_table};
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
    inputs: &LweCiphertextListOwned<u64>,
    exact_inputs: &[i64],
    client: &ClientKey,
    server: &ServerKey,
) -> Vec<f64> {
    let shift = circuit.position_shift();
    let identity: Vec<u64> = (0..circuit.polynomial_size as u64)
        .map(|p| (p << shift) + (1u64 << (shift - 1)))
        .collect();
    let lut = lookup_table(server, &identity);
    let outputs: Vec<u64> = (0..stage.neurons.len())
        .into_par_iter()
        .flat_map_iter(|j| bootstrap(server, dot_product(stage, j, inputs), &lut).into_container())
        .collect();
    let list =
        LweCiphertextList::from_container(outputs, inputs.lwe_size(), inputs.ciphertext_modulus());
    client
        .decrypt_phases(&list)
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
    let model = common::reference_model();
    let (client, server) = common::keys(&model);
    let circuit = &model.circuit();
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for (seed, name) in IMAGES.into_iter().enumerate() {
        let input = common::sample(&model, name);
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
        let outputs: Vec<u64> = produced
            .par_iter()
            .enumerate()
            .flat_map_iter(|(j, &q)| {
                let table =
                    vec![(q as u64).wrapping_mul(stage1.delta); circuit.polynomial_size as usize];
                let phase = dot_product(&circuit.stages[0], j, &encrypted);
                bootstrap(&server, phase, &lookup_table(&server, &table)).into_container()
            })
            .collect();
        let hidden = LweCiphertextList::from_container(
            outputs,
            encrypted.lwe_size(),
            encrypted.ciphertext_modulus(),
        );
        second.extend(normalised_errors(
            circuit, stage1, &hidden, &produced, &client, &server,
        ));
    }
    check("stage 0 (fresh inputs)", &first);
    check("stage 1 (bootstrapped inputs)", &second);
}
