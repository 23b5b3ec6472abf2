//! The batched bootstrap (`ServerKey::bootstrap_batch`) is exactly TFHE-rs's
//! `apply_lookup_table_assign`, bit for bit, for both supported parameter sets, on a real
//! model's phases and tables.

use hexray_test_kit::fixtures;

use hexray_crypto::{ClientKey, ParameterSet};
use hexray_engine::evaluate::dot_product;

#[test]
fn batched_bootstraps_equal_single_ones_bit_for_bit() {
    let model = fixtures::reference_model();
    let circuit = &model.circuit();
    let stage = &circuit.stages[0];
    let input = fixtures::sample(&model, "pneumoniamnist/test-0001-pneumonia.png");
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
                server.lookup_table(&stage.lookup_table(
                    j,
                    circuit.polynomial_size,
                    circuit.stages[1].delta,
                ))
            })
            .collect();
        let batched = server.bootstrap_batch(&phases, &tables);
        for ((phase, table), batched) in phases.into_iter().zip(&tables).zip(batched) {
            assert_eq!(server.bootstrap(phase, table), batched, "{}", set.name());
        }
    }
}
