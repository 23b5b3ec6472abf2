//! The bulk path end to end on real X-rays: packed, encrypted, evaluated and decrypted, it
//! gives the contract's exact evaluation bit for bit, with the noise inside the compiler's
//! estimate; and batches that are not what they claim are refused.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use hexray_bulk::{
    evaluate, parameters, BulkError, ClientKey, EncryptedBatch, EncryptedOutputs, EvaluationKey,
};
use hexray_model::packed::{compile, PackedCircuit};
use hexray_model::parameters::BULK_FLOODING_BITS;
use hexray_model::preprocess::preprocess;
use hexray_model::CompiledModel;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The bundled default model, compiled for the bulk path.
fn default_circuit() -> PackedCircuit {
    let bytes = std::fs::read(repo().join("models/screen-mlp-32.hexray")).unwrap();
    let (model, _) = CompiledModel::from_bytes(&bytes).unwrap();
    compile(&model.network, &parameters::contract()).unwrap()
}

/// Every committed sample X-ray (pediatric and adult PNGs, and the chest DICOMs), quantized.
fn sample_images(circuit: &PackedCircuit) -> Vec<Vec<i64>> {
    let mut images = Vec::new();
    for dir in ["pneumoniamnist", "covid-cxr-actualmed", "dicom/chest"] {
        let mut paths: Vec<_> = std::fs::read_dir(repo().join("samples").join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        for path in paths {
            let pixels = preprocess(&std::fs::read(&path).unwrap(), &circuit.input).unwrap();
            images.push(pixels.into_raw_vec_and_offset().0);
        }
    }
    images
}

#[test]
fn a_packed_batch_decrypts_to_the_exact_evaluation_bit_for_bit() {
    let circuit = default_circuit();
    let images = sample_images(&circuit);
    assert!(images.len() >= 12, "{} samples", images.len());
    let key = ClientKey::generate();
    let batch = key.encrypt(&circuit.input, &images).unwrap();

    // Key and batch through the wire format, as the server receives them.
    let evaluation_key = EvaluationKey::from_bytes(&key.evaluation_key().unwrap().to_bytes());
    let batch = EncryptedBatch::read_from(batch.to_bytes().as_slice(), circuit.input_len());
    let done = AtomicUsize::new(0);
    let outputs = evaluate(&circuit, &evaluation_key.unwrap(), batch.unwrap(), &|| {
        done.fetch_add(1, Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(done.into_inner(), hexray_bulk::evaluate::neurons(&circuit));
    let classes = circuit.classes.len();
    let outputs = EncryptedOutputs::read_from(outputs.to_bytes().as_slice(), classes).unwrap();

    let decrypted = key.decrypt(&outputs).unwrap();
    assert_eq!(decrypted.len(), images.len());
    for (k, image) in images.iter().enumerate() {
        assert_eq!(decrypted[k], circuit.evaluate(image), "image {k}");
    }
    // The results carry the flooding noise, 40 bits above the circuit's estimate, and still
    // decrypt exactly (above).
    let flooded = circuit.noise_bits + BULK_FLOODING_BITS;
    for ct in outputs.ciphertexts() {
        let measured = key.measure_noise_bits(ct).unwrap() as f64;
        assert!(
            (flooded - 2.0..=flooded + 2.0).contains(&measured),
            "measured {measured} bits of noise, where flooding gives {flooded}"
        );
    }
}

/// The circuit's own noise, measured before flooding, stays under the compiler's estimate:
/// what the flooding is sized from.
#[test]
fn the_circuits_noise_stays_under_the_compilers_estimate() {
    let circuit = default_circuit();
    let key = ClientKey::generate();
    let batch = key
        .encrypt(&circuit.input, &sample_images(&circuit))
        .unwrap();
    let evaluation_key = key.evaluation_key().unwrap();
    let outputs = hexray_bulk::evaluate::unflooded(&circuit, &evaluation_key, batch).unwrap();
    for ct in outputs.ciphertexts() {
        let measured = key.measure_noise_bits(ct).unwrap() as f64;
        assert!(
            measured <= circuit.noise_bits,
            "measured {measured} bits of noise over the estimate {}",
            circuit.noise_bits
        );
    }
}

#[test]
fn batches_that_are_not_what_they_claim_are_refused() {
    let circuit = default_circuit();
    let key = ClientKey::generate();
    let images = vec![vec![0; circuit.input_len()]; 2];
    let bytes = key.encrypt(&circuit.input, &images).unwrap().to_bytes();
    let inputs = circuit.input_len();
    let refused = |bytes: &[u8]| match EncryptedBatch::read_from(bytes, inputs) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a bad batch was read"),
    };

    assert!(refused(&bytes[..bytes.len() - 10]).contains("ciphertext 783 of 784: truncated"));
    let header_end = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    let body_start = header_end
        + bytes[header_end..]
            .iter()
            .position(|&b| b == b'\n')
            .unwrap()
        + 1;
    assert!(refused(&bytes[..body_start]).contains("ciphertext 0 of 784: missing"));
    // Another model's count is refused from the header, before any ciphertext is read.
    assert!(matches!(
        EncryptedBatch::read_from(&bytes[..body_start], 16),
        Err(BulkError::Count {
            expected: 16,
            found: 784,
            ..
        })
    ));
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(refused(&longer).contains("bytes follow"));
    assert!(refused(b"HEXRAY-BULK OUTPUTS 1\n").contains("does not start with"));
    let foreign =
        String::from_utf8_lossy(&bytes[..body_start]).replace(parameters::NAME, "BFV_OTHER");
    assert!(matches!(
        EncryptedBatch::read_from(foreign.as_bytes(), inputs),
        Err(BulkError::ParameterMismatch { .. })
    ));
    // A ciphertext's bytes flipped into garbage.
    let mut corrupt = bytes.clone();
    for b in &mut corrupt[body_start + 4..body_start + 64] {
        *b = 0xff;
    }
    assert!(refused(&corrupt).contains("ciphertext 0"));

    // A batch read correctly but of another model's input size.
    let short = vec![vec![0; 16]; 1];
    let tiny = compile(
        &hexray_model::testing::tiny_quadratic_network(),
        &parameters::contract(),
    )
    .unwrap();
    let batch = key.encrypt(&tiny.input, &short).unwrap();
    let e = evaluate(&circuit, &key.evaluation_key().unwrap(), batch, &|| {}).err();
    assert!(
        matches!(
            e,
            Some(BulkError::Count {
                expected: 784,
                found: 16,
                ..
            })
        ),
        "{e:?}"
    );
    // Evaluation keys: truncated, with bytes after them, or not in fhe.rs's own encoding.
    let key_bytes = key.evaluation_key().unwrap().to_bytes();
    let key_refused = |bytes: &[u8]| match EvaluationKey::from_bytes(bytes) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a bad evaluation key was read"),
    };
    assert!(key_refused(&key_bytes[..key_bytes.len() - 1]).contains("public key: truncated"));
    let mut longer = key_bytes.clone();
    longer.push(0);
    assert!(key_refused(&longer).contains("bytes follow the public key"));
    assert!(key_refused(&key_bytes[..3]).contains("relinearisation key: missing"));
    // Images that are not the model's input.
    let e = key
        .encrypt(&circuit.input, &[vec![300; circuit.input_len()]])
        .err();
    assert!(e
        .unwrap()
        .to_string()
        .contains("pixel value 300 is outside [0, 255]"));
}
