//! The server's side: the packed circuit evaluated on a batch, every image at once.
//!
//! A stage's accumulator is a sum of ciphertexts times clear integer weights. Terms with the
//! same weight are added first and multiplied once, so a neuron costs one addition per input
//! and one scalar product per distinct weight (15 for 4-bit weights), not one product per
//! input. An activation is one square (tensor product and relinearisation) and two scalar
//! products. No rotations are needed: slots never mix.
//!
//! **Circuit privacy.** A result straight out of the circuit would tell a client holding the
//! secret key more than its logits. Its noise is a function of the weights and of the
//! inputs' noise, which the client knows. Its second part is a function of the weights and of
//! the inputs' second parts, which the client chose. So before it goes back, every result is
//! re-randomised: a fresh encryption of zero under the client's public key is added, which
//! makes the second part uniform. It is also flooded: noise drawn uniformly from
//! ±2^(estimate + 40) bits is added, which hides the circuit's own noise to a statistical
//! distance of about 2^-40 ([`BULK_FLOODING_BITS`]). The compiler's noise budget leaves room
//! for it.

use std::collections::BTreeMap;

use fhe::bfv::{Ciphertext, Encoding, Multiplicator, Plaintext};
use fhe_math::rq::traits::TryConvertFrom;
use fhe_math::rq::{Poly, Representation};
use fhe_traits::{FheEncoder, FheEncrypter};
use hexray_model::circuit::Affine;
use hexray_model::packed::{PackedCircuit, Quadratic};
use hexray_model::parameters::BULK_FLOODING_BITS;
use num_bigint::BigUint;
use rand::RngCore;
use rayon::prelude::*;

use crate::batch::{EncryptedBatch, EncryptedOutputs};
use crate::error::BulkError;
use crate::keys::EvaluationKey;
use crate::parameters::{bfv, contract, modulus, DEGREE};

/// Evaluates `circuit` on `batch` and re-randomises the results for the client;
/// `progress` is told each neuron as it finishes, out of [`neurons`] in all.
///
/// Refuses a circuit compiled for other parameters, and a batch that is not one ciphertext per
/// input pixel. A key or batch that fhe.rs cannot compute on fails the evaluation with an
/// error, never with a panic.
pub fn evaluate(
    circuit: &PackedCircuit,
    key: &EvaluationKey,
    batch: EncryptedBatch,
    progress: &(dyn Fn() + Sync),
) -> Result<EncryptedOutputs, BulkError> {
    let flooding = (circuit.noise_bits + BULK_FLOODING_BITS).ceil() as u32;
    evaluate_with(circuit, key, batch, progress, Some(flooding))
}

/// [`evaluate`] without the re-randomisation: the circuit's own noise, for the tests that hold
/// the compiler's estimate to it. Never for results a client gets.
#[doc(hidden)]
pub fn unflooded(
    circuit: &PackedCircuit,
    key: &EvaluationKey,
    batch: EncryptedBatch,
) -> Result<EncryptedOutputs, BulkError> {
    evaluate_with(circuit, key, batch, &|| {}, None)
}

fn evaluate_with(
    circuit: &PackedCircuit,
    key: &EvaluationKey,
    batch: EncryptedBatch,
    progress: &(dyn Fn() + Sync),
    flooding: Option<u32>,
) -> Result<EncryptedOutputs, BulkError> {
    let expected = contract();
    if circuit.parameters != expected {
        return Err(BulkError::ParameterMismatch {
            what: "the model's bulk circuit",
            expected: expected.name,
            found: format!("{:?}", circuit.parameters)
                .chars()
                .take(160)
                .collect(),
        });
    }
    if batch.ciphertexts().len() != circuit.input_len() {
        return Err(BulkError::Count {
            what: "the encrypted batch",
            unit: "ciphertexts",
            expected: circuit.input_len(),
            found: batch.ciphertexts().len(),
        });
    }
    let (images, inputs) = batch.into_parts();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let outputs = run(circuit, key, inputs, progress)?;
        let outputs = match flooding {
            Some(bits) => outputs
                .into_par_iter()
                .map(|ct| rerandomize(ct, key, bits))
                .collect::<Result<_, _>>()?,
            None => outputs,
        };
        Ok(EncryptedOutputs::new(images, outputs))
    }))
    .unwrap_or_else(|_| {
        Err(BulkError::Scheme(
            "the evaluation failed on a key or batch the BFV library cannot compute on".into(),
        ))
    })
}

/// The neurons [`evaluate`] reports progress on.
pub fn neurons(circuit: &PackedCircuit) -> usize {
    circuit.stages.iter().map(|s| s.forms.len()).sum()
}

/// The circuit's stages, one neuron per task.
fn run(
    circuit: &PackedCircuit,
    key: &EvaluationKey,
    mut values: Vec<Ciphertext>,
    progress: &(dyn Fn() + Sync),
) -> Result<Vec<Ciphertext>, BulkError> {
    let multiplicator = Multiplicator::default(&key.relinearization)?;
    for stage in &circuit.stages {
        values = match &stage.activation {
            Some(polynomials) => stage
                .forms
                .par_iter()
                .zip(polynomials)
                .map(|(form, p)| {
                    let acc = affine(form, &values)?;
                    let out = quadratic(p, &acc, &multiplicator)?;
                    progress();
                    Ok(out)
                })
                .collect::<Result<_, BulkError>>()?,
            None => stage
                .forms
                .par_iter()
                .map(|form| {
                    let out = affine(form, &values)?;
                    progress();
                    Ok(out)
                })
                .collect::<Result<_, BulkError>>()?,
        };
    }
    Ok(values)
}

/// `bias + Σ w·values[i]`, adding the inputs that share a weight before multiplying.
fn affine(form: &Affine, values: &[Ciphertext]) -> Result<Ciphertext, BulkError> {
    let mut by_weight: BTreeMap<i64, Ciphertext> = BTreeMap::new();
    for &(i, w) in &form.terms {
        let value = &values[i as usize];
        match by_weight.get_mut(&w) {
            Some(sum) => *sum += value,
            None => {
                by_weight.insert(w, value.clone());
            }
        }
    }
    // A form without terms is a constant: zero times any input, plus its bias.
    let mut sums = by_weight.into_iter();
    let (w, first) = sums.next().unwrap_or((0, values[0].clone()));
    let mut acc = times(&first, w)?;
    for (w, sum) in sums {
        acc += &times(&sum, w)?;
    }
    add_constant(acc, form.bias)
}

/// `a·acc² + b·acc + c`.
fn quadratic(
    p: &Quadratic,
    acc: &Ciphertext,
    multiplicator: &Multiplicator,
) -> Result<Ciphertext, BulkError> {
    let mut out = times(acc, p.b)?;
    if p.a != 0 {
        let square = multiplicator.multiply(acc, acc)?;
        out += &times(&square, p.a)?;
    }
    add_constant(out, p.c)
}

/// The ciphertext times a clear integer, in every slot: each polynomial is multiplied by the
/// integer modulo q, which multiplies the plaintext modulo t. Built anew, so that a fresh
/// input's seed (which stands for its original second part) is not carried over.
fn times(ct: &Ciphertext, w: i64) -> Result<Ciphertext, BulkError> {
    let parameters = bfv();
    let magnitude = BigUint::from(w.unsigned_abs());
    let scalar = if w < 0 {
        modulus() - magnitude
    } else {
        magnitude
    };
    Ok(Ciphertext::new(
        ct.iter().map(|poly| poly * &scalar).collect(),
        &parameters,
    )?)
}

/// The ciphertext plus a clear constant in every slot.
fn add_constant(ct: Ciphertext, c: i64) -> Result<Ciphertext, BulkError> {
    if c == 0 {
        return Ok(ct);
    }
    let slots = vec![c; DEGREE];
    let plaintext = Plaintext::try_encode(&slots, Encoding::simd(), &bfv())?;
    Ok(&ct + &plaintext)
}

/// The result plus a fresh public-key encryption of zero, with noise drawn uniformly from
/// ±2^`bits` added to its first part.
fn rerandomize(ct: Ciphertext, key: &EvaluationKey, bits: u32) -> Result<Ciphertext, BulkError> {
    let parameters = bfv();
    let zero = Plaintext::zero(Encoding::simd(), &parameters)?;
    let fresh: Ciphertext = key.public.try_encrypt(&zero, &mut rand::rng())?;
    let mut parts: Vec<Poly> = ct.iter().zip(fresh.iter()).map(|(a, b)| a + b).collect();
    parts[0] += &flooding(bits)?;
    Ok(Ciphertext::new(parts, &parameters)?)
}

/// A polynomial whose coefficients are uniform in [−2^bits, 2^bits), in the NTT form.
fn flooding(bits: u32) -> Result<Poly, BulkError> {
    let parameters = bfv();
    let q = modulus();
    let half = BigUint::from(1u8) << bits;
    let mask = (BigUint::from(1u8) << (bits + 1)) - 1u8;
    let mut rng = rand::rng();
    let mut buffer = vec![0u8; (bits as usize + 1).div_ceil(8)];
    let coefficients: Vec<BigUint> = (0..DEGREE)
        .map(|_| {
            rng.fill_bytes(&mut buffer);
            let v = BigUint::from_bytes_le(&buffer) & &mask;
            // v − 2^bits, as a residue modulo q.
            if v >= half {
                v - &half
            } else {
                q - (&half - v)
            }
        })
        .collect();
    let context = parameters.context_at_level(0)?;
    let mut poly = Poly::try_convert_from(
        coefficients.as_slice(),
        context,
        false,
        Representation::PowerBasis,
    )
    .map_err(fhe::Error::from)?;
    poly.change_representation(Representation::Ntt);
    Ok(poly)
}
