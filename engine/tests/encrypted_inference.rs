//! Encrypted inference agrees with the plaintext simulator on real chest X-rays.

use hexray_test_kit::fixtures;

use hexray_crypto::{EncryptedImage, EncryptedOutput};
use hexray_engine::{evaluate, evaluate_batch};
use hexray_model::simulate;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[test]
fn encrypted_outputs_lie_in_the_noisy_simulators_spread() {
    let model = fixtures::reference_model();
    let (client, server) = fixtures::keys(&model);
    let circuit = &model.circuit();
    let images = [
        "pneumoniamnist/test-0001-pneumonia.png",
        "pneumoniamnist/test-0235-normal.png",
        "covid-cxr-actualmed/normal-1.png",
    ];
    for (seed, name) in images.into_iter().enumerate() {
        let input = fixtures::sample(&model, name);
        // Through bytes, as a client and a server would exchange them.
        let upload = client
            .encrypt_deterministic(model.spec(), input.view(), seed as u128)
            .unwrap()
            .to_bytes()
            .unwrap();
        let encrypted =
            EncryptedImage::from_bytes(&upload, model.parameter_set(), circuit.input_len())
                .unwrap();
        let (output, stats) = evaluate(&model, &server, encrypted, &|| {}).unwrap();
        assert_eq!(stats.bootstraps, 320);
        let download = output.to_bytes().unwrap();
        let output =
            EncryptedOutput::from_bytes(&download, model.parameter_set(), circuit.output_len())
                .unwrap();
        let encrypted = client.decrypt_prediction(circuit, &output).unwrap();

        let exact = simulate::exact(circuit, input.view()).unwrap();
        let spread = simulate::spread(
            circuit,
            input.view(),
            300,
            &mut ChaCha8Rng::seed_from_u64(seed as u64),
        )
        .unwrap();
        println!(
            "{name}: encrypted {:?}, exact {:?}, spread {:?}..{:?}, class changes {}",
            encrypted.accumulators,
            exact.accumulators,
            spread.min,
            spread.max,
            spread.class_changes
        );
        assert!(
            spread.contains(&encrypted, 0.25),
            "{name}: encrypted result outside the noisy spread"
        );
        if spread.class_changes == 0 {
            assert_eq!(
                encrypted.class(),
                exact.class(),
                "{name}: encrypted class differs"
            );
        }
        let total: f64 = encrypted.probabilities.iter().sum();
        assert!((total - 1.0).abs() < 1e-9);
    }
}

#[test]
fn keys_and_ciphertexts_of_another_parameter_set_are_refused() {
    let model = fixtures::reference_model();
    let (client, server) =
        hexray_crypto::ClientKey::generate_deterministic(hexray_crypto::ParameterSet::Ks64, 11);
    let server = server.decompress();
    let input = fixtures::sample(&model, "pneumoniamnist/test-0000-pneumonia.png");
    // The client refuses to encrypt for a model of another set…
    assert!(matches!(
        client.encrypt_deterministic(model.spec(), input.view(), 1),
        Err(hexray_crypto::CryptoError::ParameterMismatch { .. })
    ));
    // …and a client that does anyway is refused by the engine.
    let mut forged = model.spec().clone();
    forged.parameter_set = hexray_crypto::ParameterSet::Ks64.name().into();
    let image = client
        .encrypt_deterministic(&forged, input.view(), 1)
        .unwrap();
    let err = evaluate(&model, &server, image, &|| {})
        .err()
        .expect("a Ks64 key cannot run a KS32 model");
    assert!(
        matches!(
            err,
            hexray_engine::EngineError::Parameters(hexray_crypto::CryptoError::ParameterMismatch {
                what: "server key",
                ..
            })
        ),
        "{err}"
    );
}

#[test]
fn a_model_whose_noise_figures_were_edited_is_refused() {
    let bytes = std::fs::read(fixtures::repo().join("models/reference-a.hexray")).unwrap();
    let (mut model, _) = hexray_model::CompiledModel::from_bytes(&bytes).unwrap();
    model.fhe.modulus_switch_variance /= 4.0;
    let rebuilt = hexray_model::CompiledModel::build(
        &model.name,
        &model.model_version,
        &model.description,
        model.network.clone(),
        model.fhe.clone(),
        model.borderline_margin,
    )
    .unwrap();
    let err = hexray_engine::LoadedModel::from_bytes(&rebuilt.to_bytes(), "edited")
        .err()
        .unwrap();
    assert!(err.to_string().contains("edited noise figures"), "{err}");
}

#[test]
fn a_batch_gives_bit_for_bit_what_each_image_gives_alone() {
    let model = fixtures::reference_model();
    let (client, server) = fixtures::keys(&model);
    let circuit = &model.circuit();
    let encrypt = |seed: u128, name: &str| {
        client
            .encrypt_deterministic(model.spec(), fixtures::sample(&model, name).view(), seed)
            .unwrap()
    };
    let names = [
        "pneumoniamnist/test-0001-pneumonia.png",
        "covid-cxr-actualmed/normal-1.png",
    ];
    let batch = names
        .iter()
        .enumerate()
        .map(|(seed, name)| encrypt(seed as u128, name))
        .collect();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let (outputs, stats) = evaluate_batch(&model, &server, batch, &|| {
        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(stats.bootstraps, 2 * circuit.bootstrap_count());
    assert_eq!(done.into_inner(), stats.bootstraps);
    for (seed, (name, output)) in names.iter().zip(&outputs).enumerate() {
        let (alone, _) = evaluate(&model, &server, encrypt(seed as u128, name), &|| {}).unwrap();
        assert!(
            output.to_bytes().unwrap() == alone.to_bytes().unwrap(),
            "{name} differs in a batch"
        );
    }
    assert!(matches!(
        evaluate_batch(&model, &server, Vec::new(), &|| {}),
        Err(hexray_engine::EngineError::EmptyBatch)
    ));
}

/// A model file through the whole trip as a client and a server make it: the server loads the
/// file, the client reads the public spec's JSON, encrypts, and decrypts the server's bytes.
/// Each image's class must be one the noisy simulator gives, and each logit within its spread.
fn round_trip(model: hexray_model::CompiledModel, set: hexray_crypto::ParameterSet) {
    let loaded = hexray_engine::LoadedModel::from_bytes(&model.to_bytes(), "test model").unwrap();
    assert_eq!(loaded.parameter_set(), set);
    let spec = hexray_model::ClientSpec::from_json(&loaded.spec().to_json()).unwrap();
    let (client, server) = hexray_crypto::ClientKey::generate_deterministic(set, 21);
    let server = server.decompress();
    let circuit = loaded.circuit();
    let classes = circuit.output_len();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for seed in 0..3u128 {
        let input = ndarray::Array3::from_shape_fn((1, 4, 4), |_| {
            rand::Rng::gen_range(&mut rng, 0..256i64)
        });
        let upload = client
            .encrypt_deterministic(&spec, input.view(), seed)
            .unwrap()
            .to_bytes()
            .unwrap();
        let image = EncryptedImage::from_bytes(&upload, set, circuit.input_len()).unwrap();
        let (output, stats) = evaluate(&loaded, &server, image, &|| {}).unwrap();
        assert_eq!(stats.bootstraps, circuit.bootstrap_count());
        let download = output.to_bytes().unwrap();
        let output = EncryptedOutput::from_bytes(&download, set, classes).unwrap();
        let diagnosis = client.decrypt(&spec, &output).unwrap();
        assert_eq!(diagnosis.probabilities.len(), classes);
        let prediction = client.decrypt_prediction(circuit, &output).unwrap();
        let spread = simulate::spread(circuit, input.view(), 200, &mut rng).unwrap();
        assert!(
            spread.contains(&prediction, 0.25),
            "{set:?}, {classes} classes: {:?} outside [{:?}, {:?}]",
            prediction.accumulators,
            spread.min,
            spread.max
        );
        let votes: Vec<usize> = (0..50)
            .map(|_| {
                simulate::noisy(circuit, input.view(), &mut rng)
                    .unwrap()
                    .class()
            })
            .collect();
        let exact = simulate::exact(circuit, input.view()).unwrap().class();
        assert!(
            votes.contains(&prediction.class()) || prediction.class() == exact,
            "class {} is none of the simulator's {votes:?}",
            prediction.class()
        );
    }
}

#[test]
fn a_model_compiled_for_ks64_runs_end_to_end() {
    let set = hexray_crypto::ParameterSet::Ks64;
    let (model, _) = hexray_model::testing::tiny_model_with(set.fhe_parameters());
    round_trip(model, set);
}

#[test]
fn a_three_class_model_runs_end_to_end() {
    let set = hexray_crypto::ParameterSet::Ks32;
    let mut network = hexray_model::testing::tiny_network();
    network.layers[3] = hexray_model::network::Layer::Dense(hexray_model::network::Dense {
        inputs: 8,
        outputs: 3,
        weights: (0..24).map(|i| (i % 7) - 3).collect(),
        bias: vec![1, 0, -1],
    });
    network.output.classes = vec!["normal".into(), "pneumonia".into(), "covid-19".into()];
    let model = hexray_model::CompiledModel::build(
        "three",
        "1",
        "test",
        network,
        set.fhe_parameters(),
        1.0,
    )
    .unwrap();
    round_trip(model, set);
}
