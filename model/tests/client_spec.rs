//! The client spec and the bulk spec: the public parts of a model hold nothing derived from
//! the weights.

use hexray_model::bulk_spec::BulkSpec;
use hexray_model::circuit::fit_logit_bound;
use hexray_model::client_spec::ClientSpec;
use hexray_model::network::{Conv2d, Dense, Layer};
use hexray_model::testing::{test_bulk, test_fhe, tiny_network, tiny_quadratic_network};
use hexray_model::{compile, CompiledModel, ModelError};
use serde_json::Value;

fn spec_of(model: &CompiledModel) -> ClientSpec {
    ClientSpec::of(model, &compile(&model.network, &model.fhe).unwrap())
}

fn bulk_spec_of(model: &CompiledModel) -> BulkSpec {
    let circuit = hexray_model::packed::compile(&model.network, &test_bulk()).unwrap();
    BulkSpec::of(model, &circuit)
}

/// Every key of a JSON document, at any depth.
fn keys(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                out.push(k.clone());
                keys(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

#[test]
fn models_that_differ_only_in_weights_differ_only_in_fingerprint() {
    // A quadratic network, so that both paths take it.
    let a = CompiledModel::build("m", "1", "d", tiny_quadratic_network(), test_fhe(), 1.0).unwrap();
    let mut network = tiny_quadratic_network();
    // Other weights and biases throughout, with other ranges, so every derived encoding moves.
    for layer in &mut network.layers {
        match layer {
            Layer::Conv2d(Conv2d { weights, bias, .. })
            | Layer::Dense(Dense { weights, bias, .. }) => {
                weights.iter_mut().for_each(|w| *w = *w * 2 + 1);
                bias.iter_mut().for_each(|b| *b = -*b * 7);
            }
            _ => {}
        }
    }
    let b = CompiledModel::build("m", "1", "d", network, test_fhe(), 1.0).unwrap();
    assert_ne!(
        a.encoding, b.encoding,
        "the two circuits must be encoded differently"
    );
    let (spec_a, mut spec_b) = (spec_of(&a), spec_of(&b));
    assert_ne!(spec_a.fingerprint, spec_b.fingerprint);
    spec_b.fingerprint = spec_a.fingerprint.clone();
    assert_eq!(spec_a, spec_b);
    assert_eq!(spec_a.to_json(), spec_b.to_json());

    let (bulk_a, mut bulk_b) = (bulk_spec_of(&a), bulk_spec_of(&b));
    assert_ne!(bulk_a.fingerprint, bulk_b.fingerprint);
    bulk_b.fingerprint = bulk_a.fingerprint.clone();
    assert_eq!(bulk_a.to_json(), bulk_b.to_json());
}

#[test]
fn a_spec_holds_no_weights_and_round_trips() {
    let model = CompiledModel::build("m", "1", "d", tiny_network(), test_fhe(), 1.0).unwrap();
    let spec = spec_of(&model);
    let json = spec.to_json();
    let quadratic =
        CompiledModel::build("m", "1", "d", tiny_quadratic_network(), test_fhe(), 1.0).unwrap();
    let bulk = bulk_spec_of(&quadratic);
    let mut found = Vec::new();
    keys(&serde_json::from_slice(&json).unwrap(), &mut found);
    keys(
        &serde_json::from_slice(&bulk.to_json()).unwrap(),
        &mut found,
    );
    for secret in [
        "weights",
        "bias",
        "functions",
        "input_scales",
        "encoding",
        "acc_min",
        "acc_max",
        "sigma",
        "layers",
        "network",
        "margin",
        "delta",
    ] {
        assert!(
            !found.iter().any(|k| k == secret),
            "the spec has `{secret}`"
        );
    }
    assert_eq!(ClientSpec::from_json(&json).unwrap(), spec);
    assert_eq!(spec.fingerprint, model.fingerprint());
    assert_eq!(BulkSpec::from_json(&bulk.to_json()).unwrap(), bulk);
}

#[test]
fn a_foreign_or_altered_spec_is_refused_in_words() {
    let model = CompiledModel::build("m", "1", "d", tiny_network(), test_fhe(), 1.0).unwrap();
    let spec = spec_of(&model);
    let field = |json: Value| match ClientSpec::from_json(json.to_string().as_bytes()) {
        Err(ModelError::Field { field, .. }) => field,
        other => panic!("expected a field error, got {other:?}"),
    };
    let base: Value = serde_json::from_slice(&spec.to_json()).unwrap();
    let mut other = base.clone();
    other["input_encoding"]["delta_log2"] = 40.into();
    assert_eq!(field(other), "input_encoding");
    let mut other = base.clone();
    other["fingerprint"] = "abc".into();
    assert_eq!(field(other), "fingerprint");
    let mut other = base.clone();
    other["classes"] = serde_json::json!(["one"]);
    assert_eq!(field(other), "classes");
    for margin in [
        serde_json::json!(-0.5),
        serde_json::json!(1e12),
        Value::Null,
    ] {
        let mut other = base.clone();
        other["borderline_margin"] = margin;
        assert_eq!(field(other), "borderline_margin");
    }
    let mut other = base.clone();
    other["weights"] = serde_json::json!([1, 2]);
    assert!(ClientSpec::from_json(other.to_string().as_bytes()).is_err());
    assert!(matches!(
        ClientSpec::from_json(&vec![b' '; 70_000]),
        Err(ModelError::TooLarge { .. })
    ));
}

#[test]
fn decoding_rounds_logits_to_the_public_step() {
    let model = CompiledModel::build("m", "1", "d", tiny_network(), test_fhe(), 1.0).unwrap();
    let spec = spec_of(&model);
    let unit = (1u64 << 58) as f64;
    // 1.1 rounds to 1.0; −0.6 rounds to −0.5: the noise bits below the step are gone.
    let phases = [(1.1 * unit) as i64 as u64, (-0.6 * unit) as i64 as u64];
    let diagnosis = spec.decode(&phases);
    assert_eq!(diagnosis.logits, vec![1.0, -0.5]);
    assert_eq!(diagnosis.class, 0);
    let p0 = 1.0 / (1.0 + (-1.5f64).exp());
    assert!((diagnosis.probabilities[0] - p0).abs() < 1e-12);
    let exact = spec.exact_logits(&phases);
    assert!((exact[0] - 1.1).abs() < 1e-9 && (exact[1] + 0.6).abs() < 1e-9);
}

#[test]
fn a_result_is_borderline_exactly_when_its_shown_margin_is_within_the_models_margin() {
    let model = CompiledModel::build("m", "1", "d", tiny_network(), test_fhe(), 1.0).unwrap();
    let spec = spec_of(&model);
    assert_eq!(spec.borderline_margin, 1.0);
    let unit = (1u64 << 58) as f64;
    let shown = |a: f64, b: f64| spec.decode(&[(a * unit) as i64 as u64, (b * unit) as i64 as u64]);
    // Shown margins 0.75 and 1.0 are inside; 1.25 (rounded from 1.2) and 3 are not.
    for (a, b, borderline) in [
        (0.8, 0.0, true),
        (-1.0, 0.0, true),
        (1.2, 0.0, false),
        (0.0, 3.0, false),
    ] {
        let diagnosis = shown(a, b);
        assert_eq!(
            diagnosis.is_borderline(spec.borderline_margin),
            borderline,
            "logits {a} and {b}: shown margin {}",
            diagnosis.margin()
        );
    }
    // A tie names the first class and is always borderline.
    assert_eq!(shown(0.5, 0.5).margin(), 0.0);
    assert!(shown(0.5, 0.5).is_borderline(0.0));
}

#[test]
fn a_network_over_its_declared_logit_bound_is_refused_and_fit_declares_the_smallest() {
    let mut network = tiny_network();
    for layer in &mut network.layers {
        if let Layer::Dense(Dense { weights, .. }) = layer {
            weights.iter_mut().for_each(|w| *w *= 4);
        }
    }
    assert!(matches!(
        compile(&network, &test_fhe()),
        Err(ModelError::Compile(
            hexray_model::CompileError::LogitRange { .. }
        ))
    ));
    let circuit = fit_logit_bound(&mut network, &test_fhe()).unwrap();
    let bound = network.output.logit_bound_log2;
    assert!(bound > hexray_model::network::DEFAULT_LOGIT_BOUND_LOG2);
    network.output.logit_bound_log2 = bound - 1;
    assert!(
        compile(&network, &test_fhe()).is_err(),
        "the smallest bound that fits"
    );
    network.output.logit_bound_log2 = bound;
    let model = CompiledModel::build("m", "1", "d", network, test_fhe(), 1.0).unwrap();
    let spec = ClientSpec::of(&model, &circuit);
    assert_eq!(spec.output_decoding.unit_log2, 63 - bound);
    assert_eq!(ClientSpec::from_json(&spec.to_json()).unwrap(), spec);
}
