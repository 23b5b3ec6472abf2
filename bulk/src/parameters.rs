//! The one BFV parameter set the bulk path uses, and its numbers for the compiler.
//!
//! - **N = 8192**: 8192 slots, so one batch packs up to 8192 images.
//! - **q**: four NTT-friendly primes of 55, 54, 54 and 55 bits, 218 bits in all: the largest
//!   modulus the HomomorphicEncryption.org standard allows at N = 8192 for 128-bit security
//!   against classical attacks (secret and errors from the standard's error distribution; Table 1 of the standard).
//! - **t = 18014398507892737** (just under 2^54), the largest prime with t ≡ 1 mod 2N below the
//!   smallest ciphertext prime (18014398508138497): batching needs t ≡ 1 mod 2N, fhe.rs needs t
//!   below every ciphertext prime, and the bundled networks' values, at the public output unit,
//!   need 53 bits ([`hexray_model::packed`] proves the range).
//!
//! A fresh encryption's noise measures 4 bits; the compiler is told 5.

use std::sync::Arc;

use fhe::bfv::{BfvParameters, BfvParametersBuilder};
use hexray_model::BulkParameters;
use num_bigint::BigUint;

/// The parameter set's name, carried by keys, batches and specs.
pub const NAME: &str = "BFV_N8192_Q218_T54";
/// Ring degree, and slots per ciphertext.
pub const DEGREE: usize = 8192;
/// The plaintext modulus t.
pub const PLAINTEXT_MODULUS: u64 = 18_014_398_507_892_737;
/// Bit sizes of the ciphertext's RNS primes; fhe.rs picks the largest NTT-friendly primes of
/// these sizes, deterministically.
pub const MODULI_BITS: [usize; 4] = [55, 54, 54, 55];
/// Measured noise of a fresh encryption (4 bits), plus one.
const FRESH_NOISE_BITS: f64 = 5.0;

/// The scheme's parameters, built once per process.
pub fn bfv() -> Arc<BfvParameters> {
    static PARAMETERS: std::sync::OnceLock<Arc<BfvParameters>> = std::sync::OnceLock::new();
    PARAMETERS
        .get_or_init(|| {
            BfvParametersBuilder::new()
                .set_degree(DEGREE)
                .set_plaintext_modulus(PLAINTEXT_MODULUS)
                .set_moduli_sizes(&MODULI_BITS)
                .build_arc()
                .expect("the bulk parameter set is valid")
        })
        .clone()
}

/// q, the product of the ciphertext primes, computed once per process: every scalar product
/// by a negative weight reads it.
pub(crate) fn modulus() -> &'static BigUint {
    static MODULUS: std::sync::OnceLock<BigUint> = std::sync::OnceLock::new();
    MODULUS.get_or_init(|| {
        bfv()
            .moduli()
            .iter()
            .fold(BigUint::from(1u8), |q, &m| q * m)
    })
}

/// The same parameter set as the numbers `hexray_model::packed::compile` needs.
///
/// ```
/// let numbers = hexray_bulk::parameters::contract();
/// assert_eq!(numbers.degree, 8192);
/// // log2 q, rounded down: the product of the four primes is just under 2^218.
/// assert_eq!(numbers.ciphertext_modulus_bits, 217);
/// ```
pub fn contract() -> BulkParameters {
    let q_bits: f64 = bfv().moduli().iter().map(|&m| (m as f64).log2()).sum();
    BulkParameters {
        name: NAME.to_owned(),
        degree: DEGREE as u32,
        plaintext_modulus: PLAINTEXT_MODULUS,
        ciphertext_modulus_bits: q_bits.floor() as u32,
        fresh_noise_bits: FRESH_NOISE_BITS,
    }
}
