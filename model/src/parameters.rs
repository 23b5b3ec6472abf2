//! The parameter sets as the plain numbers the compilers, the simulator and the trainer need:
//! none of them links TFHE-rs or the BFV library, so what a parameter set allows reaches them
//! here. [`FheParameters`] is the interactive (TFHE) path's; [`BulkParameters`] the bulk
//! (BFV, element-wise packed) path's.

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// The 64-bit torus's size, 2^64: torus fractions times this are phases.
pub const TORUS: f64 = 18_446_744_073_709_551_616.0;

/// The TFHE parameter set a model was compiled for, as the numbers the compiler needs.
///
/// Variances are of the torus normalised to [0, 1). They come from TFHE-rs's noise formulas
/// (see the `hexray-crypto` crate) and are recorded so that the simulator and the trainer, which
/// do not link TFHE-rs, see exactly what the compiler saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FheParameters {
    /// The TFHE-rs parameter set's name; keys and ciphertexts must carry the same name.
    pub name: String,
    /// GLWE polynomial size N: the bootstrap reads 2N positions of the torus, N of them in the
    /// half torus that the padding bit leaves.
    pub polynomial_size: u32,
    /// Noise of a freshly encrypted input.
    pub fresh_variance: f64,
    /// Noise of a bootstrap's output.
    pub bootstrap_variance: f64,
    /// Noise the keyswitch adds before a bootstrap.
    pub keyswitch_variance: f64,
    /// Noise the (centred) modulus switch adds before a bootstrap, excluding the rounding of the
    /// body, which the simulator models exactly.
    pub modulus_switch_variance: f64,
}

/// Bits each value of an output ciphertext keeps on its way back to the client. The server
/// keyswitches every output accumulator to the bootstrap's small LWE key and switches its
/// modulus to 2^16 (`hexray_crypto::EncryptedOutput::compress`): 1.8 KB per class instead of
/// the 16 KB of a big-key ciphertext, for noise well under the output's own.
pub const OUTPUT_LOG_MODULUS: u32 = 16;

impl FheParameters {
    /// Noise the output compression adds to each output phase: the keyswitch, plus the centred
    /// modulus switch to 2^[`OUTPUT_LOG_MODULUS`]. The switch's mask rounding is
    /// `modulus_switch_variance` (a switch to 2N) scaled by the square of the coarser step
    /// (2N / 2^16); its body rounding, uniform over one step, is 2^-32 / 12.
    ///
    /// ```
    /// # let (_, circuit) = hexray_model::testing::tiny_model();
    /// # let fhe = hexray_model::testing::test_fhe();
    /// // Compression noise is in the output stage's noise, which the simulator draws.
    /// let output = circuit.stages.last().unwrap();
    /// assert_eq!(output.switch_sigma, fhe.output_compression_variance().sqrt());
    /// ```
    pub fn output_compression_variance(&self) -> f64 {
        let step = 2.0 * f64::from(self.polynomial_size) / 2f64.powi(OUTPUT_LOG_MODULUS as i32);
        let body = 2f64.powi(-2 * OUTPUT_LOG_MODULUS as i32) / 12.0;
        self.keyswitch_variance + self.modulus_switch_variance * step * step + body
    }

    pub(crate) fn validate(&self) -> Result<(), ModelError> {
        if !self.polynomial_size.is_power_of_two()
            || !(256..=1 << 16).contains(&self.polynomial_size)
        {
            return Err(ModelError::field(
                "fhe.polynomial_size",
                "must be a power of two between 256 and 65536",
            ));
        }
        for (field, v) in [
            ("fhe.fresh_variance", self.fresh_variance),
            ("fhe.bootstrap_variance", self.bootstrap_variance),
            ("fhe.keyswitch_variance", self.keyswitch_variance),
            ("fhe.modulus_switch_variance", self.modulus_switch_variance),
        ] {
            if !(v.is_finite() && (0.0..0.25).contains(&v)) {
                return Err(ModelError::field(
                    field,
                    "must be a finite variance in [0, 0.25)",
                ));
            }
        }
        Ok(())
    }
}

/// The bulk path's BFV parameter set, as the numbers its compiler needs
/// ([`crate::packed`]). `hexray-bulk` builds the scheme from the same numbers and refuses a
/// circuit compiled for others.
///
/// BFV computes exactly modulo the plaintext modulus t, so the compiler proves that every
/// value stays inside the range decoded exactly ([`value_limit`](Self::value_limit)), and
/// estimates the noise in bits, as the BFV library measures it, against the budget the
/// ciphertext modulus leaves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkParameters {
    /// A name that keys, ciphertexts and specs carry, so that a mismatch is caught by name.
    pub name: String,
    /// Ring degree N: also the number of slots, so the most images one batch holds.
    pub degree: u32,
    /// Plaintext modulus t: a prime ≡ 1 mod 2N, below every ciphertext modulus.
    pub plaintext_modulus: u64,
    /// Bits of the ciphertext modulus q, the product of the RNS moduli.
    pub ciphertext_modulus_bits: u32,
    /// Bits of noise a fresh encryption carries, as measured on the scheme.
    pub fresh_noise_bits: f64,
}

/// Bits of noise budget the bulk compiler keeps unused, on top of its worst-case estimate.
pub const BULK_NOISE_HEADROOM_BITS: f64 = 10.0;

/// Bits by which the server's flooding noise exceeds the circuit's own before results go back
/// (`hexray-bulk`): the statistical distance between two circuits' result noise is then about
/// 2^-40, so a client holding the secret key learns nothing of the weights from it.
pub const BULK_FLOODING_BITS: f64 = 40.0;

impl BulkParameters {
    /// The largest magnitude a value may reach. Every value is computed modulo t and decoded
    /// centred: with k = (t−1)/2, residues below k are themselves and the others are negative,
    /// so the values decoded exactly are −(k+1)..=k−1.
    pub fn value_limit(&self) -> i128 {
        i128::from(self.plaintext_modulus / 2) - 1
    }

    /// The circuit noise, in bits, that the compiler allows. Decryption needs the total below
    /// log2(q/t) − 1; the results also carry flooding noise [`BULK_FLOODING_BITS`] above the
    /// circuit's (one more bit for the sum), and [`BULK_NOISE_HEADROOM_BITS`] stay unused.
    pub fn noise_budget_bits(&self) -> f64 {
        f64::from(self.ciphertext_modulus_bits)
            - (self.plaintext_modulus as f64).log2()
            - 1.0
            - (BULK_FLOODING_BITS + 1.0)
            - BULK_NOISE_HEADROOM_BITS
    }

    pub(crate) fn validate(&self) -> Result<(), ModelError> {
        let field =
            |name: &str, reason: &str| Err(ModelError::field(format!("bulk.{name}"), reason));
        if !self.degree.is_power_of_two() || !(1024..=32768).contains(&self.degree) {
            return field("degree", "must be a power of two between 1024 and 32768");
        }
        let t = self.plaintext_modulus;
        if !(3..1 << 62).contains(&t) || t % (2 * u64::from(self.degree)) != 1 {
            return field(
                "plaintext_modulus",
                "must be below 2^62 and ≡ 1 modulo twice the degree (for slots)",
            );
        }
        if f64::from(self.ciphertext_modulus_bits) <= (t as f64).log2() {
            return field(
                "ciphertext_modulus_bits",
                "must exceed the plaintext modulus's",
            );
        }
        if !(self.fresh_noise_bits.is_finite() && self.fresh_noise_bits >= 0.0) {
            return field("fresh_noise_bits", "must be a finite number of bits");
        }
        Ok(())
    }
}
