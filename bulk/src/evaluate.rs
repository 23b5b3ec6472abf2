//! The server's side: the packed circuit evaluated on a batch, every image at once.
//!
//! A stage's accumulator is a sum of ciphertexts times clear integer weights. Terms with the
//! same weight are added first and multiplied once, so a neuron costs one addition per input
//! and one scalar product per distinct weight (15 for 4-bit weights), not one product per
//! input. An activation is one square (tensor product and relinearisation) and two scalar
//! products. No rotations are needed: slots never mix.

use std::collections::BTreeMap;

use fhe::bfv::{Ciphertext, Encoding, Multiplicator, Plaintext};
use fhe_traits::FheEncoder;
use hexray_model::circuit::Affine;
use hexray_model::packed::{PackedCircuit, Quadratic};
use num_bigint::BigUint;
use rayon::prelude::*;

use crate::batch::{EncryptedBatch, EncryptedOutputs};
use crate::error::BulkError;
use crate::keys::EvaluationKey;
use crate::parameters::{bfv, NAME};

/// Evaluates `circuit` on `batch`; `progress` is told each neuron as it finishes, out of
/// [`neurons`] in all.
///
/// Refuses a circuit compiled for another parameter set, and a batch that is not one
/// ciphertext per input pixel.
pub fn evaluate(
    circuit: &PackedCircuit,
    key: &EvaluationKey,
    batch: &EncryptedBatch,
    progress: &(dyn Fn() + Sync),
) -> Result<EncryptedOutputs, BulkError> {
    if circuit.parameters.name != NAME {
        return Err(BulkError::ParameterMismatch {
            what: "the model's bulk circuit",
            expected: NAME.to_owned(),
            found: circuit.parameters.name.clone(),
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
    let multiplicator = Multiplicator::default(&key.relinearization)?;
    let mut values: Vec<Ciphertext> = batch.ciphertexts().to_vec();
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
    Ok(EncryptedOutputs::new(batch.images(), values))
}

/// The neurons [`evaluate`] reports progress on.
pub fn neurons(circuit: &PackedCircuit) -> usize {
    circuit.stages.iter().map(|s| s.forms.len()).sum()
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
    let mut sums = by_weight.into_iter().map(|(w, sum)| times(sum, w));
    // A form without terms is a constant: zero times any input, plus its bias.
    let mut acc = match sums.next() {
        Some(first) => first,
        None => times(values[0].clone(), 0),
    };
    for sum in sums {
        acc += &sum;
    }
    add_constant(acc, form.bias)
}

/// `a·acc² + b·acc + c`.
fn quadratic(
    p: &Quadratic,
    acc: &Ciphertext,
    multiplicator: &Multiplicator,
) -> Result<Ciphertext, BulkError> {
    let mut out = times(acc.clone(), p.b);
    if p.a != 0 {
        let square = multiplicator.multiply(acc, acc)?;
        out += &times(square, p.a);
    }
    add_constant(out, p.c)
}

/// The ciphertext times a clear integer, in every slot: each polynomial is multiplied by the
/// integer modulo q, which multiplies the plaintext modulo t.
fn times(mut ct: Ciphertext, w: i64) -> Ciphertext {
    let q = bfv()
        .moduli()
        .iter()
        .fold(BigUint::from(1u8), |q, &m| q * m);
    let magnitude = BigUint::from(w.unsigned_abs());
    let scalar = if w < 0 { q - magnitude } else { magnitude };
    for poly in ct.iter_mut() {
        *poly *= &scalar;
    }
    ct
}

/// The ciphertext plus a clear constant in every slot.
fn add_constant(ct: Ciphertext, c: i64) -> Result<Ciphertext, BulkError> {
    if c == 0 {
        return Ok(ct);
    }
    let slots = vec![c; bfv().degree()];
    let plaintext = Plaintext::try_encode(&slots, Encoding::simd(), &bfv())?;
    Ok(&ct + &plaintext)
}
