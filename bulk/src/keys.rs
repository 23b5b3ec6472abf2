//! The client's keys. The secret key never leaves the client. The evaluation key is all the
//! server needs: BFV's relinearisation key, to bring a square back to two polynomials, and
//! the public key, to re-randomise the results before they go back (see
//! [`crate::evaluate`]).

use fhe::bfv::{Encoding, Plaintext, PublicKey, RelinearizationKey, SecretKey};
use fhe_traits::{
    DeserializeParametrized, FheDecoder, FheDecrypter, FheEncoder, FheEncrypter, Serialize,
};
use hexray_model::network::InputSpec;
use rayon::prelude::*;

use crate::batch::{read_prefixed, write_prefixed, EncryptedBatch, EncryptedOutputs};
use crate::error::BulkError;
use crate::parameters::{bfv, DEGREE};

/// Largest serialized evaluation key accepted: the relinearisation key is about 0.9 MB and
/// the public key 0.2 MB.
pub const MAX_EVALUATION_KEY_BYTES: usize = 4 << 20;

/// The client's secret key.
pub struct ClientKey {
    secret: SecretKey,
}

/// What the server evaluates with: public keys only.
pub struct EvaluationKey {
    pub(crate) relinearization: RelinearizationKey,
    pub(crate) public: PublicKey,
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
            public: PublicKey::new(&self.secret, &mut rand::rng()),
        })
    }

    /// Packs and encrypts the quantized pixels of up to N images (N = 8192): ciphertext i holds
    /// pixel i of image k in slot k. Every image must be `input`'s tensor (the bulk spec's
    /// input, which is all a client has), each value in the pixel range. Encrypted with the
    /// secret key, so that each ciphertext travels as one polynomial and a seed.
    ///
    /// ```
    /// # let network = hexray_model::testing::tiny_quadratic_network();
    /// let circuit = hexray_model::packed::compile(&network, &hexray_bulk::parameters::contract())?;
    /// let key = hexray_bulk::ClientKey::generate();
    /// let images = vec![vec![7; circuit.input_len()]; 3];
    /// let batch = key.encrypt(&circuit.input, &images)?;
    /// assert_eq!((batch.images(), batch.ciphertexts().len()), (3, circuit.input_len()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn encrypt(
        &self,
        input: &InputSpec,
        images: &[Vec<i64>],
    ) -> Result<EncryptedBatch, BulkError> {
        let pixels = input.shape().len();
        if images.is_empty() || images.len() > DEGREE {
            return Err(BulkError::Count {
                what: "a batch",
                unit: "images",
                expected: DEGREE,
                found: images.len(),
            });
        }
        let max = input.max_value();
        for (index, image) in images.iter().enumerate() {
            if image.len() != pixels {
                return Err(BulkError::Image {
                    index,
                    reason: format!("has {} pixels, the model takes {pixels}", image.len()),
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
        let ciphertexts = (0..pixels)
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
    /// `PackedCircuit::evaluate` gives for that image, and what `BulkSpec::decode` reads.
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

    /// The noise in a ciphertext's decryption, in bits: for tests that hold the compiler's
    /// estimate and the server's flooding to the scheme's measurement.
    #[doc(hidden)]
    pub fn measure_noise_bits(&self, ct: &fhe::bfv::Ciphertext) -> Result<usize, BulkError> {
        // SAFETY: fhe.rs marks this unsafe because it is not constant-time; it only reads.
        Ok(unsafe { self.secret.measure_noise(ct)? })
    }
}

impl EvaluationKey {
    /// The key's bytes: the relinearisation key's and the public key's (fhe.rs's protobuf
    /// encodings), each length-prefixed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for part in [self.relinearization.to_bytes(), self.public.to_bytes()] {
            write_prefixed(&mut out, &part).expect("writing to memory cannot fail");
        }
        out
    }

    /// Reads a key written by [`to_bytes`](Self::to_bytes) for this parameter set. Each part
    /// must be in fhe.rs's canonical encoding (it writes back to the same bytes), and nothing
    /// may follow.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BulkError> {
        let fault = |reason: String| BulkError::Deserialize {
            what: "evaluation key",
            reason,
        };
        if bytes.len() > MAX_EVALUATION_KEY_BYTES {
            return Err(fault(format!(
                "{} bytes, over the {MAX_EVALUATION_KEY_BYTES}-byte limit",
                bytes.len()
            )));
        }
        let mut reader = bytes;
        let mut part = |name: &str| -> Result<Vec<u8>, BulkError> {
            read_prefixed(&mut reader, MAX_EVALUATION_KEY_BYTES)
                .map_err(|reason| fault(format!("{name}: {reason}")))
        };
        let (relinearization, public) = (part("relinearisation key")?, part("public key")?);
        if !reader.is_empty() {
            return Err(fault("bytes follow the public key".into()));
        }
        let parameters = bfv();
        let key = EvaluationKey {
            relinearization: RelinearizationKey::from_bytes(&relinearization, &parameters)
                .map_err(|e| fault(format!("relinearisation key: {e}")))?,
            public: PublicKey::from_bytes(&public, &parameters)
                .map_err(|e| fault(format!("public key: {e}")))?,
        };
        if key.relinearization.to_bytes() != relinearization || key.public.to_bytes() != public {
            return Err(fault("not in the canonical encoding".into()));
        }
        Ok(key)
    }
}
