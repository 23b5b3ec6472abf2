//! The compiler's noise model is true: bootstrapping real first-layer accumulators through an
//! identity table at the finest box size, then decrypting, gives errors whose spread matches
//! the σ the compiler recorded for each neuron.

mod common;

use hexray_evaluator::engine::{bootstrap, dot_product, lookup_table};
use rayon::prelude::*;

#[test]
fn measured_bootstrap_noise_matches_the_predicted_sigma() {
    let model = common::reference_model();
    let (client, server) = common::keys(&model);
    let circuit = &model.circuit;
    let stage = &circuit.stages[0];
    let shift = circuit.position_shift();
    let box_width = (1u64 << shift) as f64;
    // Identity table: position p returns the centre of its own box.
    let identity: Vec<u64> = (0..circuit.polynomial_size as u64)
        .map(|p| (p << shift) + (1u64 << (shift - 1)))
        .collect();
    let lut = lookup_table(&server, &identity);

    let mut normalised = Vec::new();
    for (seed, name) in [
        (1, "pneumoniamnist/test-0000-pneumonia.png"),
        (2, "pneumoniamnist/test-0234-normal.png"),
    ] {
        let input = common::sample(&model, name);
        let x: Vec<i64> = input.iter().copied().collect();
        let encrypted = client
            .encrypt_deterministic(circuit, input.view(), seed)
            .unwrap()
            .expand();
        let outputs: Vec<u64> = (0..stage.neurons.len())
            .into_par_iter()
            .flat_map_iter(|j| {
                bootstrap(&server, dot_product(stage, j, &encrypted), &lut).into_container()
            })
            .collect();
        let list = hexray_crypto::tfhe::core_crypto::prelude::LweCiphertextList::from_container(
            outputs,
            encrypted.lwe_size(),
            encrypted.ciphertext_modulus(),
        );
        for (j, decrypted) in client.decrypt_phases(&list).into_iter().enumerate() {
            let exact = stage.phase(j, &x);
            let error = decrypted.wrapping_sub(exact) as i64 as f64 / box_width;
            // Recorded σ, plus the rounding to a box (uniform over one box: variance 1/12).
            let sigma_boxes = stage.neurons[j].sigma * 2.0 * circuit.polynomial_size as f64;
            let predicted = (sigma_boxes * sigma_boxes + 1.0 / 12.0).sqrt();
            normalised.push(error / predicted);
        }
    }
    let n = normalised.len() as f64;
    let mean = normalised.iter().sum::<f64>() / n;
    let std = (normalised.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / n).sqrt();
    println!(
        "{} bootstraps: measured/predicted σ = {std:.3}, mean error = {mean:.3} σ",
        normalised.len()
    );
    assert!(
        (0.75..=1.25).contains(&std),
        "measured σ is {std:.3}× the prediction"
    );
    assert!(
        mean.abs() < 0.25,
        "errors are biased by {mean:.3} σ: the box convention is off"
    );
}
