//! Keys: the client key stays with the client; the compressed server key (bootstrapping and
//! keyswitching keys, seeded) is what a client uploads so the server can compute.
//!
//! Every key is (de)serialised with TFHE-rs's safe serialization: a versioned header, a type
//! name, and a size limit enforced while reading, so a forged or oversized blob is refused
//! before anything large is allocated. Every key carries its parameter set, and loading checks it
//! against the parameter sets HEXray supports.

use tfhe::conformance::ParameterSetConformant;
use tfhe::core_crypto::commons::generators::DeterministicSeeder;
use tfhe::core_crypto::commons::math::random::Seed;
use tfhe::core_crypto::prelude::{DefaultRandomGenerator, LweSecretKeyView};
use tfhe::shortint;
use tfhe::shortint::ciphertext::MaxDegree;
use tfhe::shortint::engine::ShortintEngine;

use crate::envelope::{self, ClientKeyEnvelope, ServerKeyEnvelope};
use crate::error::CryptoError;
use crate::params::ParameterSet;

/// Largest client key accepted (a 2_2 client key is about 24 KiB).
pub const CLIENT_KEY_LIMIT: u64 = 1 << 20;
/// Largest compressed server key accepted (a 2_2 one is about 30 MiB).
pub const COMPRESSED_SERVER_KEY_LIMIT: u64 = 1 << 27;

/// The secret key. It encrypts inputs and decrypts outputs, and never leaves the client.
#[derive(Clone)]
pub struct ClientKey {
    pub(crate) inner: shortint::ClientKey,
    set: ParameterSet,
}

/// The server's evaluation keys in seeded (compressed) form, as uploaded.
#[derive(Clone)]
pub struct CompressedServerKey {
    inner: shortint::CompressedServerKey,
    set: ParameterSet,
}

/// Evaluation keys ready to bootstrap.
pub struct ServerKey {
    inner: shortint::ServerKey,
    set: ParameterSet,
}

impl ClientKey {
    /// Generates a fresh client key from the operating system's entropy.
    pub fn generate(set: ParameterSet) -> Self {
        ClientKey {
            inner: shortint::ClientKey::new(set.tfhe()),
            set,
        }
    }

    /// Generates a client key and its server key from a seed: reproducible tests and
    /// benchmarks only, since anyone with the seed has the key.
    pub fn generate_deterministic(set: ParameterSet, seed: u128) -> (Self, CompressedServerKey) {
        let mut seeder = DeterministicSeeder::<DefaultRandomGenerator>::new(Seed(seed));
        let seeded = ShortintEngine::new_from_seeder(&mut seeder);
        let previous = ShortintEngine::with_thread_local_mut(|e| std::mem::replace(e, seeded));
        let client = Self::generate(set);
        let server = client.server_key();
        ShortintEngine::with_thread_local_mut(|e| *e = previous);
        (client, server)
    }

    /// Generates the compressed server key for this client key.
    pub fn server_key(&self) -> CompressedServerKey {
        CompressedServerKey {
            inner: shortint::CompressedServerKey::new(&self.inner),
            set: self.set,
        }
    }

    /// The parameter set the key was generated for.
    pub fn parameter_set(&self) -> ParameterSet {
        self.set
    }

    /// The LWE key inputs are encrypted under (the GLWE key seen as an LWE key).
    pub(crate) fn lwe_key(&self) -> LweSecretKeyView<'_, u64> {
        self.inner.encryption_key()
    }

    /// Serializes the key with TFHE-rs's safe serialization, to store on the client.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CryptoError> {
        envelope::to_bytes(
            &ClientKeyEnvelope(self.inner.clone()),
            CLIENT_KEY_LIMIT,
            "client key",
        )
    }

    /// Reads a stored client key, refusing one over [`CLIENT_KEY_LIMIT`] bytes, of an
    /// unsupported parameter set, or whose key lengths do not match its set.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let ClientKeyEnvelope(inner) = envelope::from_bytes(bytes, CLIENT_KEY_LIMIT, "client key")?;
        let params = inner.parameters().ap_parameters();
        let set = params
            .and_then(ParameterSet::from_tfhe)
            .ok_or_else(|| mismatch("client key", params))?;
        // The key's length must match its parameters, or encryption would index out of bounds.
        if inner.encryption_key().lwe_dimension() != set.big_lwe_dimension()
            || small_key_dimension(&inner) != set.small_lwe_dimension()
        {
            return Err(CryptoError::Malformed {
                what: "client key",
                reason: "its length does not match its parameter set".into(),
            });
        }
        Ok(ClientKey { inner, set })
    }
}

/// The dimension of the small LWE key, which decrypts compressed outputs.
fn small_key_dimension(key: &shortint::ClientKey) -> tfhe::core_crypto::prelude::LweDimension {
    use tfhe::shortint::client_key::atomic_pattern::AtomicPatternClientKey;
    match &key.atomic_pattern {
        AtomicPatternClientKey::Standard(ap) => ap.small_lwe_secret_key().lwe_dimension(),
        AtomicPatternClientKey::KeySwitch32(ap) => ap.small_lwe_secret_key().lwe_dimension(),
    }
}

impl CompressedServerKey {
    /// The parameter set the key was generated for, or found conformant to when read.
    pub fn parameter_set(&self) -> ParameterSet {
        self.set
    }

    /// The size of a serialized compressed server key of `set`: what a client uploads. It is
    /// measured on a throwaway key, once per set and process (a second or two), so it is exact
    /// for this build of TFHE-rs and a server can bound key bodies by it.
    pub fn serialized_size(set: ParameterSet) -> usize {
        static SIZES: [std::sync::OnceLock<usize>; 2] =
            [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
        let slot = ParameterSet::ALL
            .iter()
            .position(|&s| s == set)
            .expect("every set is in ALL");
        *SIZES[slot].get_or_init(|| {
            let (_, server) = ClientKey::generate_deterministic(set, 0);
            server
                .to_bytes()
                .expect("a supported set's key is within the key limit, which is sized from it")
                .len()
        })
    }

    /// Expands the seeded key into evaluation keys (Fourier bootstrapping key and keyswitching
    /// key). Takes a few seconds and about 120 MB; servers do it once per client.
    pub fn decompress(&self) -> ServerKey {
        ServerKey {
            inner: self.inner.decompress(),
            set: self.set,
        }
    }

    /// Serializes the key for upload; at most [`COMPRESSED_SERVER_KEY_LIMIT`] bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CryptoError> {
        envelope::to_bytes(
            &ServerKeyEnvelope(self.inner.clone()),
            COMPRESSED_SERVER_KEY_LIMIT,
            "server key",
        )
    }

    /// Reads a compressed server key, checking that every part of it has exactly the shape of
    /// one of the supported parameter sets.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let ServerKeyEnvelope(inner) =
            envelope::from_bytes(bytes, COMPRESSED_SERVER_KEY_LIMIT, "server key")?;
        let set = ParameterSet::ALL
            .into_iter()
            .find(|set| {
                let p = set.tfhe();
                let max_degree = MaxDegree::new(p.message_modulus().0 * p.carry_modulus().0 - 1);
                inner.is_conformant(&(p, max_degree))
            })
            .ok_or_else(|| CryptoError::ParameterMismatch {
                what: "server key",
                expected: ParameterSet::ALL.map(ParameterSet::name).join(" or "),
                found: "an unsupported or inconsistent parameter set".into(),
            })?;
        Ok(CompressedServerKey { inner, set })
    }
}

impl ServerKey {
    /// The TFHE-rs key, read-only, for [`lwe`](crate::lwe)'s bootstraps and keyswitches: it
    /// stays the key of [`ServerKey::parameter_set`], which it was checked against when read.
    pub(crate) fn tfhe(&self) -> &shortint::ServerKey {
        &self.inner
    }

    /// The parameter set of the compressed key this was expanded from.
    pub fn parameter_set(&self) -> ParameterSet {
        self.set
    }
}

fn mismatch(what: &'static str, found: impl std::fmt::Debug) -> CryptoError {
    CryptoError::ParameterMismatch {
        what,
        expected: ParameterSet::ALL.map(ParameterSet::name).join(" or "),
        found: format!("{found:?}").chars().take(200).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tfhe::shortint::parameters::v1_8::V1_8_PARAM_MESSAGE_1_CARRY_1_KS_PBS_TUNIFORM_2M128;

    #[test]
    fn keys_of_an_unsupported_parameter_set_are_refused() {
        let foreign = shortint::ClientKey::new(V1_8_PARAM_MESSAGE_1_CARRY_1_KS_PBS_TUNIFORM_2M128);
        let client = envelope::to_bytes(
            &ClientKeyEnvelope(foreign.clone()),
            CLIENT_KEY_LIMIT,
            "client key",
        )
        .unwrap();
        assert!(matches!(
            ClientKey::from_bytes(&client),
            Err(CryptoError::ParameterMismatch { .. })
        ));
        let server = shortint::CompressedServerKey::new(&foreign);
        let server = envelope::to_bytes(
            &ServerKeyEnvelope(server),
            COMPRESSED_SERVER_KEY_LIMIT,
            "server key",
        )
        .unwrap();
        assert!(matches!(
            CompressedServerKey::from_bytes(&server),
            Err(CryptoError::ParameterMismatch { .. })
        ));
    }
}
