//! The engine's batched bootstrap is exactly TFHE-rs's `apply_lookup_table_assign`, bit for bit,
//! for both supported parameter sets.

mod common;

use hexray_crypto::{ClientKey, ParameterSet};
use hexray_engine::batch::bootstrap_batch;
use hexray_engine::evaluate::{bootstrap, dot_product, lookup_table};

#[test]
fn batched_bootstraps_equal_single_ones_bit_for_bit() {
    let model = common::reference_model();
    let circuit = &model.circuit();
    let stage = &circuit.stages[0];
    let input = common::sample(&model, "pneumoniamnist/test-0001-pneumonia.png");
    for set in ParameterSet::ALL {
        let (client, server) = ClientKey::generate_deterministic(set, 21);
        let server = server.decompress();
        // The model's first stage is a realistic one for either set: they share the polynomial size.
        let mut spec = model.spec().clone();
        spec.parameter_set = set.name().into();
        let encrypted = client
            .encrypt_deterministic(&spec, input.view(), 4)
            .unwrap()
            .expand();
        let neurons = [0, 5, 17, 64, 100, 255];
        let phases: Vec<_> = neurons
            .iter()
            .map(|&j| dot_product(stage, j, &encrypted))
            .collect();
        let tables: Vec<_> = neurons
            .iter()
            .map(|&j| {
                lookup_table(
                    &server,
                    &stage.lookup_table(j, circuit.polynomial_size, circuit.stages[1].delta),
                )
            })
            .collect();
        let batched = bootstrap_batch(&server, &phases, &tables);
        for ((phase, table), batched) in phases.into_iter().zip(&tables).zip(batched) {
            assert_eq!(bootstrap(&server, phase, table), batched, "{}", set.name());
        }
    }
}
