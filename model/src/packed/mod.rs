//! The bulk path's circuit: a network compiled for element-wise packing (Zhang et al.), where
//! slot k of every ciphertext belongs to image k, and its exact evaluation.
//!
//! Under BFV a ciphertext holds N integers modulo the plaintext modulus t, and additions and
//! multiplications act on every slot at once. Packing one pixel of N images per ciphertext
//! turns the network into the same arithmetic the clear integers would see:
//! - a linear layer is a sum of ciphertexts times clear integer weights;
//! - each hidden neuron's trained polynomial a·z² + b·z + c, with z = acc·s its real input, is
//!   evaluated on the integer accumulator with integer coefficients,
//!   `A·acc² + B·acc + C ≈ M·(a·z² + b·z + c)/o`, where o is the TFHE path's output step and M a
//!   power of two the compiler picks ([`compile`]). There is no rounding or clipping in between:
//!   a bootstrap table could do it, a polynomial cannot.
//!
//! Nothing wraps modulo t: [`compile`] proves every output's worst case inside the range
//! decoded exactly, so the decrypted output equals [`PackedCircuit::evaluate`] bit for bit.

mod compile;

pub use compile::{compile, MAX_ERROR_STEPS, SQUARE_EXTRA_BITS};

use crate::circuit::Affine;
use crate::network::InputSpec;
use crate::parameters::BulkParameters;

/// Every bulk circuit's outputs count logits in units of 2^-this, whatever the model: the
/// compiler scales the activations to it, so the unit a client decodes with is public.
pub const LOGIT_UNIT_LOG2: u32 = 41;

/// The logits that output integers encode, in the public unit.
pub fn logits(outputs: &[i64]) -> Vec<f64> {
    let unit = 2f64.powi(-(LOGIT_UNIT_LOG2 as i32));
    outputs.iter().map(|&v| v as f64 * unit).collect()
}

/// A network compiled for the bulk path.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedCircuit {
    /// What the client turns an image into before packing it: the network's own input spec.
    pub input: InputSpec,
    /// Class names, one per output.
    pub classes: Vec<String>,
    /// The parameter set the range proof and the noise estimate hold for.
    pub parameters: BulkParameters,
    /// The stages in evaluation order: one with the activation, if the network has one, then
    /// the output stage.
    pub stages: Vec<PackedStage>,
    /// Worst-case noise at decryption, in bits, as estimated by [`compile`].
    pub noise_bits: f64,
}

/// One stage: a composed linear map over the previous stage's values (the pixels, for stage 0),
/// then, except in the output stage, one quadratic per neuron.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedStage {
    /// One affine form per neuron.
    pub forms: Vec<Affine>,
    /// Each neuron's integer polynomial; `None` in the output stage.
    pub activation: Option<Vec<Quadratic>>,
}

/// `a·acc² + b·acc + c` on an integer accumulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quadratic {
    /// Coefficient of acc².
    pub a: i64,
    /// Coefficient of acc.
    pub b: i64,
    /// The constant.
    pub c: i64,
}

impl Quadratic {
    /// The polynomial at `x`, exactly.
    pub fn at(&self, x: i128) -> i128 {
        i128::from(self.a) * x * x + i128::from(self.b) * x + i128::from(self.c)
    }
}

impl PackedCircuit {
    /// Pixels per image: one ciphertext each.
    pub fn input_len(&self) -> usize {
        self.input.shape().len()
    }

    /// The output integers for one image's quantized pixels (the exact simulation): what the
    /// packed evaluation decrypts to, slot for slot. The pixels must be the circuit's input
    /// (`input_len` values in the pixel range), which the range proof covers.
    ///
    /// ```
    /// # let network = hexray_model::testing::tiny_quadratic_network();
    /// # let parameters = hexray_model::testing::test_bulk();
    /// let circuit = hexray_model::packed::compile(&network, &parameters).unwrap();
    /// let pixels = vec![3; circuit.input_len()];
    /// let outputs = circuit.evaluate(&pixels);
    /// assert_eq!(outputs.len(), circuit.classes.len());
    /// let limit = parameters.value_limit() as i64;
    /// assert!(outputs.iter().all(|v| v.abs() <= limit));
    /// ```
    pub fn evaluate(&self, pixels: &[i64]) -> Vec<i64> {
        assert_eq!(pixels.len(), self.input_len(), "one value per input pixel");
        let mut values: Vec<i128> = pixels.iter().map(|&v| i128::from(v)).collect();
        for stage in &self.stages {
            let accumulators = stage.forms.iter().map(|form| affine(form, &values));
            values = match &stage.activation {
                Some(polynomials) => accumulators
                    .zip(polynomials)
                    .map(|(acc, p)| p.at(acc))
                    .collect(),
                None => accumulators.collect(),
            };
        }
        // The range proof bounds every output by t/2 < 2^63.
        values.into_iter().map(|v| v as i64).collect()
    }

    /// The real logits of output integers.
    pub fn logits(&self, outputs: &[i64]) -> Vec<f64> {
        logits(outputs)
    }
}

/// `bias + Σ w·values[i]`, exactly.
fn affine(form: &Affine, values: &[i128]) -> i128 {
    form.terms
        .iter()
        .fold(i128::from(form.bias), |acc, &(i, w)| {
            acc + i128::from(w) * values[i as usize]
        })
}
