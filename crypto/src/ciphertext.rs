//! Encrypted inputs and outputs.
//!
//! The client encrypts each input integer q as the plaintext `q·Δ` (Δ the public input unit of
//! the model's [`ClientSpec`]) under the big LWE key with TFHE-rs's seeded encryption: the masks are regenerated
//! from one shared seed, so only the bodies travel, about 8 bytes per pixel. The server expands
//! them ([`EncryptedImage::expand`]) before computing.
//!
//! The outputs travel back compressed ([`EncryptedOutput::compress`]): each class's accumulator
//! is keyswitched to the small LWE key and its modulus switched to 2^16, so the client decrypts
//! 1.8 KB per class, with its small key and no bootstrap, instead of 16 KB.

use hexray_model::network::{MAX_CLASSES, MAX_INPUT_PIXELS};
use hexray_model::parameters::OUTPUT_LOG_MODULUS;
use hexray_model::simulate::Prediction;
use hexray_model::{Circuit, ClientSpec, Diagnosis};
use ndarray::ArrayView3;
use tfhe::conformance::ParameterSetConformant;
use tfhe::core_crypto::commons::generators::DeterministicSeeder;
use tfhe::core_crypto::commons::math::random::{Seed, Seeder};
use tfhe::core_crypto::prelude::packed_integers::{
    PackedIntegers, PackedIntegersConformanceParams,
};
use tfhe::core_crypto::prelude::*;
use tfhe::core_crypto::seeders::new_seeder;
use tfhe::shortint::client_key::atomic_pattern::AtomicPatternClientKey;

use crate::envelope::{self, ImageEnvelope, OutputEnvelope};
use crate::error::CryptoError;
use crate::keys::{ClientKey, ServerKey};
use crate::lwe::{Ciphertexts, Keyswitched};
use crate::params::ParameterSet;

/// Largest encrypted image accepted: 8 bytes for each of the most input integers a model may
/// take ([`MAX_INPUT_PIXELS`]), plus headers.
pub const IMAGE_LIMIT: u64 = 8 * MAX_INPUT_PIXELS as u64 + 4096;
/// Largest encrypted output accepted: the most classes a model may have ([`MAX_CLASSES`]), each
/// at most 1024 values of [`OUTPUT_LOG_MODULUS`] bits, plus headers.
pub const OUTPUT_LIMIT: u64 = (MAX_CLASSES * 1024) as u64 * OUTPUT_LOG_MODULUS as u64 / 8 + 4096;

/// An encrypted, preprocessed image, as a client uploads it.
pub struct EncryptedImage {
    set: ParameterSet,
    ciphertexts: SeededLweCiphertextListOwned<u64>,
}

/// A model's encrypted output accumulators, as the server returns them: per class, a small-key
/// LWE ciphertext (mask, then body) modulo 2^[`OUTPUT_LOG_MODULUS`], all bit-packed.
pub struct EncryptedOutput {
    set: ParameterSet,
    packed: PackedIntegers<u64>,
}

impl ClientKey {
    /// Encrypts a preprocessed image for the model `spec` describes, with fresh randomness.
    ///
    /// ```
    /// use hexray_crypto::{ClientKey, ParameterSet};
    /// # let fhe = ParameterSet::Ks32.fhe_parameters();
    /// # let (model, circuit) = hexray_model::testing::tiny_model_with(fhe);
    /// let spec = hexray_model::ClientSpec::of(&model, &circuit);
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
        set.require("model", &spec.parameter_set)?;
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

    /// Decrypts raw phases (plaintext plus noise) of big-key ciphertexts, e.g. to measure noise.
    pub fn decrypt_phases(&self, ciphertexts: &Ciphertexts) -> Vec<u64> {
        let key = self.lwe_key();
        ciphertexts
            .tfhe()
            .iter()
            .map(|ct| decrypt_lwe_ciphertext(&key, &ct).0)
            .collect()
    }

    /// The small LWE key (the bootstrap's input key), widened to 64 bits: compressed outputs
    /// are encrypted under it.
    fn small_key(&self) -> Vec<u64> {
        match &self.inner.atomic_pattern {
            AtomicPatternClientKey::Standard(ap) => ap.small_lwe_secret_key().as_ref().to_vec(),
            AtomicPatternClientKey::KeySwitch32(ap) => ap
                .small_lwe_secret_key()
                .as_ref()
                .iter()
                .map(|&s| u64::from(s))
                .collect(),
        }
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

    /// The raw phases of the outputs, once their parameter set and count are checked, in 64-bit
    /// torus units (the low bits the compression dropped are zero).
    fn checked_phases(
        &self,
        count: usize,
        output: &EncryptedOutput,
    ) -> Result<Vec<u64>, CryptoError> {
        self.parameter_set()
            .require("encrypted output", output.set.name())?;
        check_count("encrypted output", count, output.len())?;
        let key = self.small_key();
        let bits = OUTPUT_LOG_MODULUS;
        let values: Vec<u64> = output.packed.unpack::<u64>().collect();
        Ok(values
            .chunks_exact(key.len() + 1)
            .map(|ciphertext| {
                let (body, mask) = ciphertext.split_last().expect("n + 1 values");
                let dot = mask
                    .iter()
                    .zip(&key)
                    .fold(0u64, |sum, (a, s)| sum.wrapping_add(a.wrapping_mul(*s)));
                (body.wrapping_sub(dot) & ((1 << bits) - 1)) << (64 - bits)
            })
            .collect())
    }
}

impl EncryptedImage {
    /// The parameter set the image was encrypted under.
    pub fn parameter_set(&self) -> ParameterSet {
        self.set
    }

    /// Number of ciphertexts: one per input integer (pixel).
    pub fn len(&self) -> usize {
        self.ciphertexts.lwe_ciphertext_count().0
    }

    /// Whether the image holds no ciphertext.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Regenerates the masks from the seed: one full LWE ciphertext per input integer.
    pub fn expand(self) -> Ciphertexts {
        Ciphertexts::from_tfhe(self.ciphertexts.decompress_into_lwe_ciphertext_list())
    }

    /// Serializes the seeded ciphertexts (bodies and seed) for upload, with their parameter set.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CryptoError> {
        let envelope = ImageEnvelope {
            parameter_set: self.set.name().to_owned(),
            ciphertexts: self.ciphertexts.clone(),
        };
        envelope::to_bytes(&envelope, IMAGE_LIMIT, "encrypted image")
    }

    /// The size of an encrypted image of `inputs` values once serialized: what a job body
    /// holds per image, so a server can bound bodies by the models it serves. An error for more
    /// inputs than any valid model reads.
    pub fn serialized_size(set: ParameterSet, inputs: usize) -> Result<usize, CryptoError> {
        let ciphertexts = SeededLweCiphertextList::new(
            0u64,
            set.big_lwe_dimension().to_lwe_size(),
            LweCiphertextCount(inputs),
            Seed(0).into(),
            CiphertextModulus::new_native(),
        );
        Ok(EncryptedImage { set, ciphertexts }.to_bytes()?.len())
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
    /// Compresses a model's output accumulators (big-key LWE ciphertexts, one per class) for
    /// the trip back to the client, with the public server key only. Each is keyswitched to
    /// the small key, as before a bootstrap, and its modulus switched to 2^[`OUTPUT_LOG_MODULUS`]
    /// (centred, as TFHE-rs does before a bootstrap); then all are bit-packed. It costs one
    /// keyswitch per class, a few percent of one bootstrap, and adds the noise the compiler
    /// counts in the output stage (`FheParameters::output_compression_variance`).
    ///
    /// TFHE-rs's own `switch_modulus_and_compress` does the same to a shortint ciphertext, but
    /// keeps only log2(2N) = 12 bits (noise as large as the logits' own), and its result can
    /// only be read back through a bootstrap.
    pub fn compress(key: &ServerKey, accumulators: &Ciphertexts) -> Self {
        let mut values = Vec::new();
        match key.keyswitch(accumulators.tfhe().iter()) {
            Keyswitched::U64(small, _) => small
                .iter()
                .for_each(|ct| push_switched(ct.as_view(), &mut values)),
            Keyswitched::U32(small, _) => small
                .iter()
                .for_each(|ct| push_switched(ct.as_view(), &mut values)),
        }
        EncryptedOutput {
            set: key.parameter_set(),
            packed: PackedIntegers::pack(&values, output_log_modulus()),
        }
    }

    /// Number of outputs (classes).
    pub fn len(&self) -> usize {
        self.packed.initial_len() / self.set.small_lwe_dimension().to_lwe_size().0
    }

    /// Whether there is no output.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Serializes the packed outputs, with their parameter set, for the trip to the client.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CryptoError> {
        let envelope = OutputEnvelope {
            parameter_set: self.set.name().to_owned(),
            ciphertexts: self.packed.clone(),
        };
        envelope::to_bytes(&envelope, OUTPUT_LIMIT, "encrypted output")
    }

    /// Reads the server's answer and checks it against the parameter set and number of
    /// outputs it must have.
    pub fn from_bytes(
        bytes: &[u8],
        set: ParameterSet,
        expected_len: usize,
    ) -> Result<Self, CryptoError> {
        const WHAT: &str = "encrypted output";
        let OutputEnvelope {
            parameter_set,
            ciphertexts: packed,
        } = envelope::from_bytes(bytes, OUTPUT_LIMIT, WHAT)?;
        set.require(WHAT, &parameter_set)?;
        let per_output = set.small_lwe_dimension().to_lwe_size().0;
        let values = packed.initial_len();
        // Conformance: the declared length matches the packed words, so unpacking stays in
        // bounds, and every value has exactly the bits the compression keeps.
        if packed.log_modulus() != output_log_modulus()
            || values % per_output != 0
            || !packed.is_conformant(&PackedIntegersConformanceParams::new::<u64>(values))
        {
            return Err(CryptoError::Malformed {
                what: WHAT,
                reason: format!(
                    "it is not a list of {per_output}-value ciphertexts of {OUTPUT_LOG_MODULUS} bits"
                ),
            });
        }
        check_count(WHAT, expected_len, values / per_output)?;
        Ok(EncryptedOutput { set, packed })
    }
}

fn output_log_modulus() -> CiphertextModulusLog {
    CiphertextModulusLog(OUTPUT_LOG_MODULUS as usize)
}

/// Appends the mask and body of a small-key ciphertext switched to 2^[`OUTPUT_LOG_MODULUS`].
fn push_switched<S: UnsignedInteger + CastInto<u64>>(
    ciphertext: LweCiphertextView<'_, S>,
    values: &mut Vec<u64>,
) {
    let (ciphertext, correction, log) = lwe_ciphertext_centered_binary_modulus_switch::<S, u64, _>(
        ciphertext,
        output_log_modulus(),
    )
    .into_raw_parts();
    // TFHE-rs also takes half a step off the body, which centres a phase in its lookup table
    // box before a bootstrap. The client reads the phase itself: the half step goes back.
    let half_step = S::ONE << (S::BITS - log.0 - 1);
    let switched = LazyStandardModulusSwitchedLweCiphertext::<S, u64, _>::from_raw_parts(
        ciphertext,
        correction.wrapping_add(half_step),
        log,
    );
    values.extend(switched.mask());
    values.push(switched.body());
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
        set.require(self.what, self.parameter_set)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Known phases under the big key, compressed with the public server key alone, decrypt
    /// to themselves within the noise the compiler counts for the output stage, for both
    /// parameter sets; and the compressed form is what its size says.
    #[test]
    fn compressed_outputs_decrypt_to_their_phases_within_the_counted_noise() {
        for set in ParameterSet::ALL {
            let (client, server) = ClientKey::generate_deterministic(set, 11);
            let server = server.decompress();
            // Logits from −31 to +31 in the bundled models' unit, 2^58.
            let phases: Vec<u64> = (-31i64..32).map(|l| (l << 58) as u64).collect();
            let mut list = LweCiphertextList::new(
                0u64,
                set.big_lwe_dimension().to_lwe_size(),
                LweCiphertextCount(phases.len()),
                CiphertextModulus::new_native(),
            );
            let mut seeder = new_seeder();
            let mut generator = EncryptionRandomGenerator::<DefaultRandomGenerator>::new(
                seeder.seed(),
                seeder.as_mut(),
            );
            encrypt_lwe_ciphertext_list(
                &client.lwe_key(),
                &mut list,
                &PlaintextList::from_container(phases.clone()),
                set.encryption_noise(),
                &mut generator,
            );
            let output = EncryptedOutput::compress(&server, &Ciphertexts::from_tfhe(list));
            let bytes = output.to_bytes().unwrap();
            let per_class = (set.small_lwe_dimension().0 + 1) * OUTPUT_LOG_MODULUS as usize / 8;
            assert!(
                bytes.len() <= phases.len() * per_class + 200,
                "{} bytes",
                bytes.len()
            );
            let back = EncryptedOutput::from_bytes(&bytes, set, phases.len()).unwrap();
            let decrypted = client.checked_phases(phases.len(), &back).unwrap();

            let sigma = set.fhe_parameters().output_compression_variance().sqrt();
            let errors: Vec<f64> = decrypted
                .iter()
                .zip(&phases)
                .map(|(d, p)| d.wrapping_sub(*p) as i64 as f64 / 2f64.powi(64))
                .collect();
            let worst = errors.iter().fold(0f64, |m, e| m.max(e.abs()));
            assert!(
                worst < 6.0 * sigma,
                "{}: error {worst} against σ {sigma}",
                set.name()
            );
            let sd = (errors.iter().map(|e| e * e).sum::<f64>() / errors.len() as f64).sqrt();
            assert!(
                (0.5 * sigma..1.5 * sigma).contains(&sd),
                "{}: measured σ {sd}, counted {sigma}",
                set.name()
            );
        }
    }

    /// A packed list of the wrong modulus or length is refused in words, never unpacked.
    #[test]
    fn malformed_compressed_outputs_are_refused() {
        let set = ParameterSet::Ks32;
        let n = set.small_lwe_dimension().to_lwe_size().0;
        let envelope = |values: usize, bits: usize| {
            let packed = PackedIntegers::pack(&vec![1u64; values], CiphertextModulusLog(bits));
            envelope::to_bytes(
                &OutputEnvelope {
                    parameter_set: set.name().into(),
                    ciphertexts: packed,
                },
                OUTPUT_LIMIT,
                "encrypted output",
            )
            .unwrap()
        };
        assert!(EncryptedOutput::from_bytes(&envelope(2 * n, 16), set, 2).is_ok());
        for (bytes, why) in [
            (envelope(2 * n, 12), "12-bit values"),
            (envelope(2 * n - 1, 16), "a partial ciphertext"),
            (envelope(3 * n, 16), "three outputs for two classes"),
        ] {
            assert!(
                matches!(
                    EncryptedOutput::from_bytes(&bytes, set, 2),
                    Err(CryptoError::Malformed { .. } | CryptoError::Count { .. })
                ),
                "{why} was accepted"
            );
        }
        let other = ParameterSet::Ks64;
        assert!(matches!(
            EncryptedOutput::from_bytes(&envelope(2 * n, 16), other, 2),
            Err(CryptoError::ParameterMismatch { .. })
        ));
    }
}
