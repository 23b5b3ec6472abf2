//! The model file: round trips, and every malformed file is refused with an error naming the
//! field, never a panic.

use hexray_model::network::{Activation, Conv2d, Dense, InputSpec, Intensity, Layer, OutputSpec};
use hexray_model::network::{Function, Granularity, Quantizer};
use hexray_model::simulate;
use hexray_model::testing::{test_fhe as fhe, tiny_network as tiny};
use hexray_model::{CompileError, CompiledModel, ModelError, Network};
use ndarray::Array3;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn input(side: u32) -> InputSpec {
    InputSpec::square_8bit(side, Intensity::AsIs)
}

fn build(network: Network) -> Result<CompiledModel, ModelError> {
    CompiledModel::build("tiny", "1", "test model", network, fhe(), 1.0)
}

fn field_of(err: ModelError) -> String {
    match err {
        ModelError::Field { field, .. } => field,
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn round_trip_preserves_the_model_and_its_circuit() {
    let model = build(tiny()).unwrap();
    let (loaded, circuit) = CompiledModel::from_bytes(&model.to_bytes()).unwrap();
    assert_eq!(loaded, model);
    assert_eq!(circuit.bootstrap_count(), 8);
    assert_eq!(circuit.stages.len(), 2);
    let x = Array3::from_shape_fn((1, 4, 4), |(_, y, x)| (y * 60 + x * 5) as i64);
    let p = simulate::exact(&circuit, x.view()).unwrap();
    assert_eq!(p.probabilities.len(), 2);
}

#[test]
fn exact_simulation_matches_integer_arithmetic_when_boxes_are_fine() {
    // With a small accumulator range every integer has its own boxes, so the table reads the
    // exact accumulator and the circuit equals the quantized network computed by hand.
    let network = tiny();
    let (_, circuit) =
        CompiledModel::from_bytes(&build(network.clone()).unwrap().to_bytes()).unwrap();
    let x = Array3::from_shape_fn((1, 4, 4), |(_, y, x)| ((y * 4 + x) * 13 % 256) as i64);
    let Layer::Conv2d(Conv2d {
        weights: cw,
        bias: cb,
        ..
    }) = &network.layers[0]
    else {
        unreachable!()
    };
    let Layer::Activation(act) = &network.layers[1] else {
        unreachable!()
    };
    let Layer::Dense(Dense {
        weights: dw,
        bias: db,
        ..
    }) = &network.layers[3]
    else {
        unreachable!()
    };
    let mut hidden = Vec::new();
    for o in 0..2 {
        for y in 0..2 {
            for xx in 0..2 {
                let mut acc = cb[o];
                for ky in 0..3 {
                    for kx in 0..3 {
                        acc += cw[o * 9 + ky * 3 + kx] as i64 * x[[0, y + ky, xx + kx]];
                    }
                }
                hidden.push(
                    act.output
                        .quantize(act.functions[o].eval(acc as f64 * act.input_scales[o])),
                );
            }
        }
    }
    let expected: Vec<f64> = (0..2)
        .map(|c| {
            (db[c]
                + (0..8)
                    .map(|i| dw[c * 8 + i] as i64 * hidden[i])
                    .sum::<i64>()) as f64
        })
        .collect();
    let got = simulate::exact(&circuit, x.view()).unwrap().accumulators;
    for (g, e) in got.iter().zip(&expected) {
        assert!((g - e).abs() < 1e-6, "{got:?} vs {expected:?}");
    }
}

#[test]
fn simulated_noise_is_shared_by_outputs_that_read_the_same_ciphertexts() {
    // Two logits with opposite weights over the same hidden ciphertexts: encrypted, the noise
    // they carry (and any level a noisy bootstrap got wrong) cancels exactly in their sum and
    // doubles in their difference. Only the output compression's noise, fresh for each
    // output, is left in the sum. A simulator drawing each output's noise on its own would
    // spread the sum as widely as the difference.
    let mut network = tiny();
    let Some(Layer::Dense(Dense { weights, bias, .. })) = network.layers.last_mut() else {
        unreachable!()
    };
    *weights = (0..16)
        .map(|i| {
            if i < 8 {
                (i % 7) - 3
            } else {
                3 - ((i - 8) % 7)
            }
        })
        .collect();
    *bias = vec![5, -5];
    let (_, circuit) = CompiledModel::from_bytes(&build(network).unwrap().to_bytes()).unwrap();
    let x = Array3::from_shape_fn((1, 4, 4), |(_, y, x)| ((y * 4 + x) * 29 % 256) as i64);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (mut sums, mut differences) = (Vec::new(), Vec::new());
    for _ in 0..400 {
        let a = simulate::noisy(&circuit, x.view(), &mut rng)
            .unwrap()
            .accumulators;
        sums.push(a[0] + a[1]);
        differences.push(a[0] - a[1]);
    }
    let sd = |v: &[f64]| {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
    };
    let output = circuit.stages.last().unwrap();
    let compression = 2f64.sqrt() * output.switch_sigma * 2f64.powi(64) / output.delta as f64;
    assert!(
        (0.8 * compression..1.2 * compression).contains(&sd(&sums)),
        "the sum moved by {}, the compression alone gives {compression}",
        sd(&sums)
    );
    assert!(
        sd(&differences) > 3.0 * sd(&sums),
        "the shared noise doubles in the difference"
    );
}

#[test]
fn wrong_magic_and_unknown_version_are_refused() {
    let bytes = build(tiny()).unwrap().to_bytes();
    let body = &bytes[bytes.iter().position(|&b| b == b'\n').unwrap()..];
    let with_header = |h: &str| [h.as_bytes(), body].concat();
    assert!(matches!(
        CompiledModel::from_bytes(&with_header("ONNX-MODEL 1")),
        Err(ModelError::Magic { .. })
    ));
    assert!(matches!(
        CompiledModel::from_bytes(&with_header("HEXRAY-MODEL 99")),
        Err(ModelError::Version { found, .. }) if found == "99"
    ));
    assert!(matches!(
        CompiledModel::from_bytes(b""),
        Err(ModelError::Magic { .. })
    ));
}

#[test]
fn inconsistent_shapes_name_the_field() {
    let mut network = tiny();
    if let Layer::Dense(Dense { weights, .. }) = &mut network.layers[3] {
        weights.pop();
    }
    assert_eq!(
        field_of(build(network).unwrap_err()),
        "network.layers[3].weights"
    );

    let mut network = tiny();
    if let Layer::Dense(Dense { inputs, .. }) = &mut network.layers[3] {
        *inputs = 9;
    }
    assert_eq!(
        field_of(build(network).unwrap_err()),
        "network.layers[3].inputs"
    );

    let mut network = tiny();
    if let Layer::Activation(act) = &mut network.layers[1] {
        act.input_scales.push(1.0);
    }
    assert_eq!(
        field_of(build(network).unwrap_err()),
        "network.layers[1].input_scales"
    );

    let mut network = tiny();
    network.layers.pop();
    assert_eq!(field_of(build(network).unwrap_err()), "network.layers");
}

#[test]
fn layer_sizes_past_the_element_limit_are_refused_before_any_allocation() {
    // 8 inputs × 2^22 outputs: the weight count is checked, not computed with a multiplication
    // that wraps on the 32-bit wasm client.
    let mut network = tiny();
    if let Layer::Dense(Dense { outputs, .. }) = &mut network.layers[3] {
        *outputs = 1 << 22;
    }
    let err = build(network).unwrap_err();
    assert!(err.to_string().contains("elements"), "{err}");
    assert_eq!(field_of(err), "network.layers[3].weights");
}

#[test]
fn networks_beyond_the_bootstrap_limit_are_refused() {
    // A 362×362 input (within the 2^17 a client may encrypt), padded by 10 on each side: a
    // 3×3 convolution then gives 2 × 380 × 380 activations, over the 2^18 bootstraps a model
    // may need.
    let (side, padded) = (362, 380);
    let mut network = tiny();
    network.input = input(side);
    if let Layer::Conv2d(Conv2d { padding, .. }) = &mut network.layers[0] {
        *padding = 10;
    }
    if let Layer::Dense(Dense {
        inputs, weights, ..
    }) = &mut network.layers[3]
    {
        *inputs = 2 * padded * padded;
        *weights = vec![1; 2 * 2 * (padded * padded) as usize];
    }
    let err = build(network).unwrap_err();
    assert!(err.to_string().contains("bootstraps per image"), "{err}");
}

#[test]
fn nan_coefficients_are_refused_in_memory_and_on_disk() {
    let mut network = tiny();
    if let Layer::Activation(act) = &mut network.layers[1] {
        act.functions[0] = Function::Polynomial {
            coefficients: vec![0.0, f64::NAN],
        };
    }
    assert_eq!(
        field_of(build(network).unwrap_err()),
        "network.layers[1].functions[0]"
    );

    let text = String::from_utf8(build(tiny()).unwrap().to_bytes()).unwrap();
    let tampered = text.replacen("[0.1,0.5,0.25]", "[0.1,NaN,0.25]", 1);
    assert_ne!(tampered, text);
    let field = field_of(CompiledModel::from_bytes(tampered.as_bytes()).unwrap_err());
    assert!(field.starts_with("network.layers[1]"), "{field}");
}

#[test]
fn a_borderline_margin_that_is_no_margin_is_refused_in_memory_and_on_disk() {
    for margin in [-0.5, f64::NAN, f64::INFINITY, 1e9] {
        let built = CompiledModel::build("tiny", "1", "test model", tiny(), fhe(), margin);
        assert_eq!(field_of(built.unwrap_err()), "borderline_margin");
    }
    let text = String::from_utf8(build(tiny()).unwrap().to_bytes()).unwrap();
    let tampered = text.replacen("\"borderline_margin\":1.0", "\"borderline_margin\":-1.0", 1);
    assert_ne!(tampered, text);
    assert_eq!(
        field_of(CompiledModel::from_bytes(tampered.as_bytes()).unwrap_err()),
        "borderline_margin"
    );
}

#[test]
fn a_tampered_encoding_is_refused() {
    let mut model = build(tiny()).unwrap();
    model.encoding.stages[0].delta *= 2;
    assert_eq!(
        field_of(CompiledModel::from_bytes(&model.to_bytes()).unwrap_err()),
        "encoding.stages[0].delta"
    );
}

#[test]
fn truncated_random_and_oversized_files_are_errors() {
    let bytes = build(tiny()).unwrap().to_bytes();
    for cut in [1, 10, bytes.len() / 3, bytes.len() / 2, bytes.len() - 3] {
        assert!(
            CompiledModel::from_bytes(&bytes[..cut]).is_err(),
            "truncated at {cut}"
        );
    }
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for len in [0, 7, 100, 5000] {
        let noise: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        assert!(CompiledModel::from_bytes(&noise).is_err());
        let prefixed = [b"HEXRAY-MODEL 3\n".as_slice(), &noise].concat();
        assert!(CompiledModel::from_bytes(&prefixed).is_err());
    }
    let huge = vec![b' '; hexray_model::file::MAX_MODEL_BYTES + 1];
    assert!(matches!(
        CompiledModel::from_bytes(&huge),
        Err(ModelError::TooLarge { .. })
    ));
}

#[test]
fn range_analysis_refuses_a_model_crafted_to_overflow() {
    // 256 hidden neurons saturating at 2^24 − 1, summed with weights near 2^31: the output
    // accumulator could reach 2^63, past the half torus.
    let network = Network {
        input: input(16),
        layers: vec![
            Layer::Flatten,
            Layer::Dense(Dense {
                inputs: 256,
                outputs: 256,
                weights: vec![1; 256 * 256],
                bias: vec![0; 256],
            }),
            Layer::Activation(Activation {
                granularity: Granularity::Layer,
                functions: vec![Function::Relu],
                input_scales: vec![1.0],
                output: Quantizer {
                    bits: 24,
                    signed: false,
                    scale: 1e-9,
                },
            }),
            Layer::Dense(Dense {
                inputs: 256,
                outputs: 2,
                weights: vec![i32::MAX; 512],
                bias: vec![0, 0],
            }),
        ],
        output: OutputSpec {
            classes: vec!["a".into(), "b".into()],
            logit_scale: 1.0,
            logit_bound_log2: hexray_model::network::DEFAULT_LOGIT_BOUND_LOG2,
        },
    };
    match build(network) {
        Err(ModelError::Compile(CompileError::RangeOverflow { stage: 1, .. })) => {}
        other => panic!("expected a range overflow in stage 1, got {other:?}"),
    }
}

/// An input larger than a client may encrypt (2^17 integers) is refused by the loader in words,
/// before a browser could panic on its encrypted-image size limit.
#[test]
fn inputs_past_the_encryption_limit_are_refused() {
    let mut network = tiny();
    network.input.width = 512;
    network.input.height = 512;
    let err = build(network).unwrap_err();
    assert!(err.to_string().contains("262144 pixels"), "{err}");
    assert_eq!(field_of(err), "network.input");
}

#[test]
fn the_bundled_model_files_serialise_back_to_their_exact_bytes() {
    // A file's fingerprint is the SHA-256 of its bytes, so a change to how the schema is
    // written would silently change every served model's fingerprint.
    let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let mut checked = 0;
    for entry in std::fs::read_dir(models).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "hexray") {
            let bytes = std::fs::read(&path).unwrap();
            let (model, _) = CompiledModel::from_bytes(&bytes).unwrap();
            assert!(model.to_bytes() == bytes, "{} changed", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 4);
}
