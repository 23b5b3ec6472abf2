//! The bulk compiler: which networks it takes, which it refuses and why, and that its exact
//! evaluation keeps the interactive path's classes.

use hexray_model::packed::{compile, PackedCircuit};
use hexray_model::preprocess::preprocess;
use hexray_model::testing::{test_bulk, tiny_network};
use hexray_model::{simulate, BulkParameters, CompileError, CompiledModel, ModelError};

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn bundled(name: &str) -> (CompiledModel, hexray_model::Circuit) {
    let bytes = std::fs::read(repo(&format!("models/{name}.hexray"))).unwrap();
    CompiledModel::from_bytes(&bytes).unwrap()
}

fn compile_error(network: &hexray_model::Network) -> CompileError {
    match compile(network, &test_bulk()) {
        Err(ModelError::Compile(e)) => e,
        Err(other) => panic!("expected a compile error, got {other}"),
        Ok(_) => panic!("expected a compile error, the network compiled"),
    }
}

#[test]
fn relu_is_refused_in_words() {
    let e = compile_error(&tiny_network());
    assert_eq!(
        e,
        CompileError::NotQuadratic {
            layer: 1,
            found: "ReLU".into()
        }
    );
    assert!(
        e.to_string().contains("polynomials of degree at most 2"),
        "{e}"
    );
}

#[test]
fn a_network_beyond_the_plaintext_modulus_is_refused_with_the_value_at_fault() {
    // The default model's first accumulators reach ±2^17.7; a 17-bit t holds ±2^15.
    let (model, _) = bundled("screen-mlp-32");
    let small = BulkParameters {
        plaintext_modulus: 65537,
        ..test_bulk()
    };
    let e = match compile(&model.network, &small) {
        Err(ModelError::Compile(e)) => e,
        Err(other) => panic!("expected a compile error, got {other}"),
        Ok(_) => panic!("a 17-bit plaintext modulus cannot hold the default model"),
    };
    let CompileError::PlaintextRange { stage, what, .. } = &e else {
        panic!("expected a range refusal, got {e}");
    };
    assert_eq!((*stage, *what), (0, "accumulator"));
    assert!(e.to_string().contains("beyond the ±2^15.0"), "{e}");
}

#[test]
fn a_second_activation_layer_is_refused_in_words() {
    // reference-a has two activation layers: a second square would need log2 t + log2 N more
    // bits of noise than the budget holds.
    let (model, _) = bundled("reference-a");
    let e = compile_error(&model.network);
    assert_eq!(e, CompileError::PackedDepth { activations: 2 });
    assert!(e.to_string().contains("one activation layer"), "{e}");
}

/// The default model compiles for the bulk path, its values proven inside ±t/2 and its noise
/// estimate inside the budget, and the packed exact evaluation keeps the interactive path's
/// class on every committed sample X-ray.
#[test]
fn the_default_model_takes_the_bulk_path_with_the_interactive_classes() {
    let (model, circuit) = bundled("screen-mlp-32");
    let packed: PackedCircuit = compile(&model.network, &test_bulk()).unwrap();
    assert!(packed.noise_bits <= test_bulk().noise_budget_bits());
    let limit = test_bulk().value_limit() as i64;
    let mut compared = 0;
    for dir in ["pneumoniamnist", "covid-cxr-actualmed"] {
        for entry in std::fs::read_dir(repo(&format!("samples/{dir}"))).unwrap() {
            let path = entry.unwrap().path();
            let pixels = preprocess(&std::fs::read(&path).unwrap(), &model.network.input).unwrap();
            let interactive = simulate::exact(&circuit, pixels.view()).unwrap();
            let outputs = packed.evaluate(pixels.as_slice().unwrap());
            assert!(outputs.iter().all(|v| v.abs() <= limit));
            let logits = packed.logits(&outputs);
            assert_eq!(
                simulate::argmax(&logits),
                interactive.class(),
                "{}: packed logits {logits:?}, interactive {:?}",
                path.display(),
                interactive.logits
            );
            compared += 1;
        }
    }
    assert!(compared >= 10);
}
