//! Keys and ciphertexts received from elsewhere: good ones round-trip, bad ones (truncated,
//! random, oversized, of the wrong kind or parameter set) are clear errors, never panics.

use hexray_crypto::ciphertext::IMAGE_LIMIT;
use hexray_crypto::keys::CLIENT_KEY_LIMIT;
use hexray_crypto::{
    ClientKey, CompressedServerKey, CryptoError, EncryptedImage, EncryptedOutput, ParameterSet,
};
use hexray_model::ClientSpec;
use hexray_model::CompiledModel;
use ndarray::Array3;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const MODEL: &[u8] = include_bytes!("../../models/reference-a.hexray");

fn garbage(seed: u64) -> Vec<Vec<u8>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    [0, 1, 16, 300, 100_000]
        .iter()
        .map(|&n| (0..n).map(|_| rng.gen()).collect())
        .collect()
}

fn truncations(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    [1, 8, 40, bytes.len() / 2, bytes.len() - 1]
        .into_iter()
        .map(move |n| &bytes[..n])
}

#[test]
fn client_keys_round_trip_and_bad_blobs_are_refused() {
    let (client, server) = ClientKey::generate_deterministic(ParameterSet::Ks32, 7);
    let bytes = client.to_bytes().unwrap();
    assert!(
        bytes.len() < 64 << 10,
        "client key is {} bytes",
        bytes.len()
    );
    let back = ClientKey::from_bytes(&bytes).unwrap();
    assert_eq!(back.to_bytes().unwrap(), bytes);
    assert_eq!(back.parameter_set(), ParameterSet::Ks32);
    for cut in truncations(&bytes) {
        assert!(ClientKey::from_bytes(cut).is_err());
    }
    for g in garbage(1) {
        assert!(ClientKey::from_bytes(&g).is_err());
    }
    let oversized = vec![0u8; CLIENT_KEY_LIMIT as usize + 1];
    assert!(matches!(
        ClientKey::from_bytes(&oversized),
        Err(CryptoError::Deserialize { .. })
    ));
    // A server key is not a client key, even though both are valid blobs.
    let server_bytes = server.to_bytes().unwrap();
    assert!(ClientKey::from_bytes(&server_bytes).is_err());

    // The compressed server key round-trips and keeps its parameter set.
    let back = CompressedServerKey::from_bytes(&server_bytes).unwrap();
    assert_eq!(back.parameter_set(), ParameterSet::Ks32);
    for cut in truncations(&server_bytes) {
        assert!(CompressedServerKey::from_bytes(cut).is_err());
    }
    for g in garbage(2) {
        assert!(CompressedServerKey::from_bytes(&g).is_err());
    }
    assert!(
        CompressedServerKey::from_bytes(&bytes).is_err(),
        "a client key is not a server key"
    );
}

#[test]
fn ciphertexts_round_trip_and_bad_blobs_are_refused() {
    let (model, circuit) = CompiledModel::from_bytes(MODEL).unwrap();
    let spec = ClientSpec::of(&model, &circuit);
    let (client, _) = ClientKey::generate_deterministic(ParameterSet::Ks32, 8);
    let input = Array3::from_shape_fn((1, 28, 28), |(_, y, x)| ((x * 9 + y) % 256) as i64);
    let bytes = client
        .encrypt_deterministic(&spec, input.view(), 5)
        .unwrap()
        .to_bytes()
        .unwrap();
    let n = circuit.input_len();
    assert!(
        bytes.len() <= 8 * 1024,
        "upload of {} bytes for 784 pixels",
        bytes.len()
    );
    let image = EncryptedImage::from_bytes(&bytes, ParameterSet::Ks32, n).unwrap();
    assert_eq!(image.len(), n);

    assert!(matches!(
        EncryptedImage::from_bytes(&bytes, ParameterSet::Ks32, n + 1),
        Err(CryptoError::Count {
            expected: 785,
            found: 784,
            ..
        })
    ));
    assert!(matches!(
        EncryptedImage::from_bytes(&bytes, ParameterSet::Ks64, n),
        Err(CryptoError::ParameterMismatch { .. })
    ));
    for cut in truncations(&bytes) {
        assert!(EncryptedImage::from_bytes(cut, ParameterSet::Ks32, n).is_err());
    }
    for g in garbage(3) {
        assert!(EncryptedImage::from_bytes(&g, ParameterSet::Ks32, n).is_err());
        assert!(EncryptedOutput::from_bytes(&g, ParameterSet::Ks32, 2).is_err());
    }
    let oversized = vec![0u8; IMAGE_LIMIT as usize + 1];
    assert!(matches!(
        EncryptedImage::from_bytes(&oversized, ParameterSet::Ks32, n),
        Err(CryptoError::Deserialize { .. })
    ));
    // An image is not an output.
    assert!(EncryptedOutput::from_bytes(&bytes, ParameterSet::Ks32, 2).is_err());

    // Inputs outside the model's input range or shape are refused before encryption.
    let wrong_shape = Array3::<i64>::zeros((1, 27, 28));
    assert!(client.encrypt(&spec, wrong_shape.view()).is_err());
    let out_of_range = Array3::from_elem((1, 28, 28), 256i64);
    assert!(client.encrypt(&spec, out_of_range.view()).is_err());
}
