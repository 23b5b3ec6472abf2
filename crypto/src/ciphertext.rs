//! Encrypted inputs and outputs.
//!
//! The client encrypts each input integer q as the plaintext `q·Δ` (Δ the public input unit of
//! the model's [`ClientSpec`]) under the big LWE key with TFHE-rs's seeded encryption: the masks are regenerated
//! from one shared seed, so only the bodies travel, about 8 bytes per pixel. The server expands
//! them ([`EncryptedImage::expand`]) before computing.

use hexray_model::simulate::Prediction;
use hexray_model::{Circuit, ClientSpec, Diagnosis};
use ndarray::ArrayView3;
use tfhe::core_crypto::commons::generators::DeterministicSeeder;
use tfhe::core_crypto::commons::math::random::{Seed, Seeder};
use tfhe::core_crypto::prelude::*;
use tfhe::core_crypto::seeders::new_seeder;

use crate::envelope::{self, ImageEnvelope, OutputEnvelope};
use crate::error::CryptoError;
use crate::keys::ClientKey;
use crate::params::ParameterSet;

/// Largest encrypted image accepted: 8 bytes × 2^17 pixels plus headers.
pub const IMAGE_LIMIT: u64 = (8 << 17) + 4096;
/// Largest encrypted output accepted: 64 outputs of 2049 words.
pub const OUTPUT_LIMIT: u64 = 64 * 2049 * 8 + 4096;

/// An encrypted, preprocessed image, as a client uploads it.
pub struct EncryptedImage {
    set: ParameterSet,
    ciphertexts: SeededLweCiphertextListOwned<u64>,
}

/// A model's encrypted output accumulators, as the server returns them.
pub struct EncryptedOutput {
    set: ParameterSet,
    ciphertexts: LweCiphertextListOwned<u64>,
}

impl ClientKey {
    /// Encrypts a preprocessed image for the model `spec` describes, with fresh randomness.
    ///
    /// ```
    /// use hexray_crypto::{ClientKey, ParameterSet};
    /// # let fhe = ParameterSet::Ks32.fhe_parameters();
    /// # let (model, circuit) = hexray_model::testing::tiny_model_with(fhe);
    /// let spec = model.client_spec(&circuit);
    /// let key = ClientKey::generate(ParameterSet::Ks32);
    /// let input = ndarray::Array3::<i64>::from_elem((1, 4, 4), 200);
    /// let encrypted = key.encrypt(&spec, input.view()).unwrap();
    /// assert_eq!(encrypted.len(), 16);
    /// // A value outside the input's bits is refused, not wrapped.
    /// let too_bright = ndarray::Array3::<i64>::from_elem((1, 4, 4), 256);
    /// assert!(key.encrypt(&spec, too_bright.view()).is_err());
    /// ```
    pub fn encrypt(
        &self,
        spec: &ClientSpec,
        input: ArrayView3<i64>,
    ) -> Result<EncryptedImage, CryptoError> {
        self.encrypt_with(spec, input, new_seeder().as_mut())
    }

    /// Encrypts with randomness from `seed`: reproducible tests only.
    pub fn encrypt_deterministic(
        &self,
        spec: &ClientSpec,
        input: ArrayView3<i64>,
        seed: u128,
    ) -> Result<EncryptedImage, CryptoError> {
        let mut seeder = DeterministicSeeder::<DefaultRandomGenerator>::new(Seed(seed));
        self.encrypt_with(spec, input, &mut seeder)
    }

    fn encrypt_with(
        &self,
        spec: &ClientSpec,
        input: ArrayView3<i64>,
        seeder: &mut dyn Seeder,
    ) -> Result<EncryptedImage, CryptoError> {
        spec.input.check(input)?;
        let set = self.parameter_set();
        check_set("model", set, ParameterSet::from_name(&spec.parameter_set)?)?;
        let delta = spec.input_delta();
        let plaintexts: Vec<u64> = input
            .iter()
            .map(|&q| (q as u64).wrapping_mul(delta))
            .collect();
        let mut ciphertexts = SeededLweCiphertextList::new(
            0u64,
            set.big_lwe_dimension().to_lwe_size(),
            LweCiphertextCount(plaintexts.len()),
            seeder.seed().into(),
            CiphertextModulus::new_native(),
        );
        encrypt_seeded_lwe_ciphertext_list(
            &self.lwe_key(),
            &mut ciphertexts,
            &PlaintextList::from_container(plaintexts),
            set.encryption_noise(),
            seeder,
        );
        Ok(EncryptedImage { set, ciphertexts })
    }

    /// Decrypts raw phases (plaintext plus noise), e.g. to measure noise.
    pub fn decrypt_phases(&self, ciphertexts: &LweCiphertextListOwned<u64>) -> Vec<u64> {
        let key = self.lwe_key();
        ciphertexts
            .iter()
            .map(|ct| decrypt_lwe_ciphertext(&key, &ct).0)
            .collect()
    }

    /// Decrypts the outputs into the diagnosis the client shows: logits rounded to the spec's
    /// step, their softmax and the class.
    pub fn decrypt(
        &self,
        spec: &ClientSpec,
        output: &EncryptedOutput,
    ) -> Result<Diagnosis, CryptoError> {
        Ok(spec.decode(&self.checked_phases(spec.output_len(), output)?))
    }

    /// The unrounded logits: for measuring noise against the simulator, never for showing.
    pub fn decrypt_exact_logits(
        &self,
        spec: &ClientSpec,
        output: &EncryptedOutput,
    ) -> Result<Vec<f64>, CryptoError> {
        Ok(spec.exact_logits(&self.checked_phases(spec.output_len(), output)?))
    }

    /// Decrypts the outputs into the model owner's accumulators, as the simulator reports
    /// them: for checking encrypted results against the simulator where the circuit is at hand
    /// (tests, the trainer's reports, `hexray run`). A client has only the spec and uses
    /// [`ClientKey::decrypt`].
    pub fn decrypt_prediction(
        &self,
        circuit: &Circuit,
        output: &EncryptedOutput,
    ) -> Result<Prediction, CryptoError> {
        let stage = circuit
            .stages
            .last()
            .expect("a circuit has an output stage");
        let accumulators = self
            .checked_phases(circuit.output_len(), output)?
            .into_iter()
            .map(|phase| stage.decode(phase))
            .collect();
        Ok(Prediction::from_accumulators(circuit, accumulators))
    }

    /// The raw phases of the outputs, once their parameter set and count are checked.
    fn checked_phases(
        &self,
        count: usize,
        output: &EncryptedOutput,
    ) -> Result<Vec<u64>, CryptoError> {
        check_set("encrypted output", self.parameter_set(), output.set)?;
        check_count(
            "encrypted output",
            count,
            output.ciphertexts.lwe_ciphertext_count().0,
        )?;
        Ok(self.decrypt_phases(&output.ciphertexts))
    }
}

impl EncryptedImage {
    pub fn parameter_set(&self) -> ParameterSet {
        self.set
    }

    pub fn len(&self) -> usize {
        self.ciphertexts.lwe_ciphertext_count().0
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Regenerates the masks from the seed: one full LWE ciphertext per input integer.
    pub fn expand(self) -> LweCiphertextListOwned<u64> {
        self.ciphertexts.decompress_into_lwe_ciphertext_list()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let envelope = ImageEnvelope {
            parameter_set: self.set.name().to_owned(),
            ciphertexts: self.ciphertexts.clone(),
        };
        envelope::to_bytes(&envelope, IMAGE_LIMIT)
    }

    /// The size of an encrypted image of `inputs` values once serialized: what a job body
    /// holds per image, so a server can bound bodies by the models it serves.
    pub fn serialized_size(set: ParameterSet, inputs: usize) -> usize {
        let ciphertexts = SeededLweCiphertextList::new(
            0u64,
            set.big_lwe_dimension().to_lwe_size(),
            LweCiphertextCount(inputs),
            Seed(0).into(),
            CiphertextModulus::new_native(),
        );
        EncryptedImage { set, ciphertexts }.to_bytes().len()
    }

    /// Reads an upload and checks it against the parameter set and input size it must have.
    pub fn from_bytes(
        bytes: &[u8],
        set: ParameterSet,
        expected_len: usize,
    ) -> Result<Self, CryptoError> {
        const WHAT: &str = "encrypted image";
        let ImageEnvelope {
            parameter_set,
            ciphertexts,
        } = envelope::from_bytes(bytes, IMAGE_LIMIT, WHAT)?;
        Received {
            what: WHAT,
            parameter_set: &parameter_set,
            lwe_size: ciphertexts.lwe_size(),
            modulus: ciphertexts.ciphertext_modulus(),
            count: ciphertexts.lwe_ciphertext_count().0,
        }
        .check(set, expected_len)?;
        Ok(EncryptedImage { set, ciphertexts })
    }
}

impl EncryptedOutput {
    /// Wraps the server's output ciphertexts.
    pub fn new(set: ParameterSet, ciphertexts: LweCiphertextListOwned<u64>) -> Self {
        EncryptedOutput { set, ciphertexts }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let envelope = OutputEnvelope {
            parameter_set: self.set.name().to_owned(),
            ciphertexts: self.ciphertexts.clone(),
        };
        envelope::to_bytes(&envelope, OUTPUT_LIMIT)
    }

    pub fn from_bytes(
        bytes: &[u8],
        set: ParameterSet,
        expected_len: usize,
    ) -> Result<Self, CryptoError> {
        const WHAT: &str = "encrypted output";
        let OutputEnvelope {
            parameter_set,
            ciphertexts,
        } = envelope::from_bytes(bytes, OUTPUT_LIMIT, WHAT)?;
        Received {
            what: WHAT,
            parameter_set: &parameter_set,
            lwe_size: ciphertexts.lwe_size(),
            modulus: ciphertexts.ciphertext_modulus(),
            count: ciphertexts.lwe_ciphertext_count().0,
        }
        .check(set, expected_len)?;
        Ok(EncryptedOutput { set, ciphertexts })
    }
}

fn check_set(
    what: &'static str,
    expected: ParameterSet,
    found: ParameterSet,
) -> Result<(), CryptoError> {
    if expected == found {
        Ok(())
    } else {
        Err(CryptoError::ParameterMismatch {
            what,
            expected: expected.name().into(),
            found: found.name().into(),
        })
    }
}

/// What a received ciphertext list claims to be, to check before computing on it.
struct Received<'a> {
    what: &'static str,
    parameter_set: &'a str,
    lwe_size: LweSize,
    modulus: CiphertextModulus<u64>,
    count: usize,
}

impl Received<'_> {
    fn check(&self, set: ParameterSet, expected_len: usize) -> Result<(), CryptoError> {
        if set.name() != self.parameter_set {
            return Err(CryptoError::ParameterMismatch {
                what: self.what,
                expected: set.name().into(),
                found: self.parameter_set.chars().take(80).collect(),
            });
        }
        if self.lwe_size != set.big_lwe_dimension().to_lwe_size()
            || !self.modulus.is_native_modulus()
        {
            return Err(CryptoError::Malformed {
                what: self.what,
                reason: format!(
                    "ciphertexts of size {} do not belong to {}",
                    self.lwe_size.0,
                    set.name()
                ),
            });
        }
        check_count(self.what, expected_len, self.count)
    }
}

fn check_count(what: &'static str, expected: usize, found: usize) -> Result<(), CryptoError> {
    if expected == found {
        Ok(())
    } else {
        Err(CryptoError::Count {
            what,
            expected,
            found,
        })
    }
}
