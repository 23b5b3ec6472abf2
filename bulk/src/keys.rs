//! The client's keys. The secret key never leaves the client; the evaluation key (BFV's
//! relinearisation key) is all the server needs, to bring a square back to two polynomials.

use fhe::bfv::{Encoding, Plaintext, RelinearizationKey, SecretKey};
use fhe_traits::{
    DeserializeParametrized, FheDecoder, FheDecrypter, FheEncoder, FheEncrypter, Serialize,
};
use hexray_model::packed::PackedCircuit;
use rayon::prelude::*;

use crate::batch::{EncryptedBatch, EncryptedOutputs};
use crate::error::BulkError;
use crate::parameters::{bfv, DEGREE};

/// Largest serialized evaluation key accepted. The key is about 0.9 MB; a blob much larger is
/// not one.
pub const MAX_EVALUATION_KEY_BYTES: usize = 4 << 20;

/// The client's secret key.
pub struct ClientKey {
    secret: SecretKey,
}

/// What the server evaluates with: the relinearisation key, public.
pub struct EvaluationKey {
    pub(crate) relinearization: RelinearizationKey,
}

impl ClientKey {
    /// A fresh secret key from the operating system's generator.
    pub fn generate() -> Self {
        ClientKey {
            secret: SecretKey::random(&bfv(), &mut rand::rng()),
        }
    }

    /// The evaluation key the server needs for this secret key.
    pub fn evaluation_key(&self) -> Result<EvaluationKey, BulkError> {
        Ok(EvaluationKey {
            relinearization: RelinearizationKey::new(&self.secret, &mut rand::rng())?,
        })
    }

    /// Packs and encrypts the quantized pixels of up to N images (N = 8192): ciphertext i holds
    /// pixel i of image k in slot k. Every image must be the circuit's input, each value in the
    /// pixel range. Encrypted with the secret key, so that each ciphertext travels as one
    /// polynomial and a seed.
    ///
    /// ```
    /// # let network = hexray_model::testing::tiny_quadratic_network();
    /// let circuit = hexray_model::packed::compile(&network, &hexray_bulk::parameters::contract())?;
    /// let key = hexray_bulk::ClientKey::generate();
    /// let images = vec![vec![7; circuit.input_len()]; 3];
    /// let batch = key.encrypt(&circuit, &images)?;
    /// assert_eq!((batch.images(), batch.ciphertexts().len()), (3, circuit.input_len()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn encrypt(
        &self,
        circuit: &PackedCircuit,
        images: &[Vec<i64>],
    ) -> Result<EncryptedBatch, BulkError> {
        if images.is_empty() || images.len() > DEGREE {
            return Err(BulkError::Count {
                what: "a batch",
                unit: "images",
                expected: DEGREE,
                found: images.len(),
            });
        }
        let max = circuit.input.max_value();
        for (index, image) in images.iter().enumerate() {
            if image.len() != circuit.input_len() {
                return Err(BulkError::Image {
                    index,
                    reason: format!(
                        "has {} pixels, the model takes {}",
                        image.len(),
                        circuit.input_len()
                    ),
                });
            }
            if let Some(v) = image.iter().find(|v| !(0..=max).contains(*v)) {
                return Err(BulkError::Image {
                    index,
                    reason: format!("pixel value {v} is outside [0, {max}]"),
                });
            }
        }
        let parameters = bfv();
        let ciphertexts = (0..circuit.input_len())
            .into_par_iter()
            .map(|pixel| {
                let slots: Vec<i64> = images.iter().map(|image| image[pixel]).collect();
                let plaintext = Plaintext::try_encode(&slots, Encoding::simd(), &parameters)?;
                Ok(self.secret.try_encrypt(&plaintext, &mut rand::rng())?)
            })
            .collect::<Result<Vec<_>, BulkError>>()?;
        Ok(EncryptedBatch::new(images.len(), ciphertexts))
    }

    /// The output integers of each image in a batch's results, in the batch's order: what
    /// [`PackedCircuit::evaluate`] gives for that image.
    pub fn decrypt(&self, outputs: &EncryptedOutputs) -> Result<Vec<Vec<i64>>, BulkError> {
        let per_class = outputs
            .ciphertexts()
            .iter()
            .map(|ct| {
                let plaintext = self.secret.try_decrypt(ct)?;
                Ok(Vec::<i64>::try_decode(&plaintext, Encoding::simd())?)
            })
            .collect::<Result<Vec<_>, BulkError>>()?;
        Ok((0..outputs.images())
            .map(|k| per_class.iter().map(|slots| slots[k]).collect())
            .collect())
    }

    /// The noise left in a ciphertext's decryption, in bits: for tests that hold the
    /// compiler's estimate to the scheme's measurement.
    #[doc(hidden)]
    pub fn measure_noise_bits(&self, ct: &fhe::bfv::Ciphertext) -> Result<usize, BulkError> {
        // SAFETY: fhe.rs marks this unsafe because it is not constant-time; it only reads.
        Ok(unsafe { self.secret.measure_noise(ct)? })
    }
}

impl EvaluationKey {
    /// The key's bytes (fhe.rs's protobuf encoding).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.relinearization.to_bytes()
    }

    /// Reads a key written by [`to_bytes`](Self::to_bytes) for this parameter set.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BulkError> {
        if bytes.len() > MAX_EVALUATION_KEY_BYTES {
            return Err(BulkError::Deserialize {
                what: "evaluation key",
                reason: format!(
                    "{} bytes, over the {MAX_EVALUATION_KEY_BYTES}-byte limit",
                    bytes.len()
                ),
            });
        }
        let relinearization =
            RelinearizationKey::from_bytes(bytes, &bfv()).map_err(|e| BulkError::Deserialize {
                what: "evaluation key",
                reason: e.to_string(),
            })?;
        Ok(EvaluationKey { relinearization })
    }
}
