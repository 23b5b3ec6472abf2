//! The bulk compile step: network → packed circuit, with the range proof and the noise
//! estimate that make its result exact.
//!
//! **One activation layer.** A square costs log2 t + log2 N + 2 bits of noise, 69 of the
//! budget's 111 under the bulk parameters; a second would not fit, so the compiler takes
//! networks with at most one activation layer and refuses deeper ones in words.
//!
//! **Coefficients and the output unit.** A neuron's trained polynomial a·z² + b·z + c reads
//! z = acc·s, where s is its input scale, and the TFHE path would quantize its value in steps
//! of o. The packed circuit computes `A·acc² + B·acc + C` with `A = round(M·a·s²/o)`,
//! `B = round(M·b·s/o)` and `C = round(M·c/o)`: the same value in steps of o/M. The output
//! layer's biases are multiplied by M to stay in its units. M is `round(logit_scale · 2^41)`,
//! so that one output integer is 2^-41 logits ([`LOGIT_UNIT_LOG2`]) for every model: the unit
//! a client decodes with is public and says nothing of the weights. A network without an
//! activation has its output forms multiplied by the same factor. A finer unit would keep more
//! of the coefficients' precision and make every value larger; 2^-41 is the one at which every
//! bundled network fits, with its precision.
//!
//! **Range proof.** Interval arithmetic bounds, over every input in the pixel range, the
//! accumulators, the squares, each term of an activation, each activation and the outputs, and
//! each must lie inside the range decoded exactly ([`BulkParameters::value_limit`]). Only the
//! outputs are decoded, and arithmetic modulo t is exact, so this is more than correctness
//! needs. The quadratic's range over its accumulator's interval is exact (its ends and its
//! vertex). The interval arithmetic itself is checked: an overflow of i128 is a refusal.
//!
//! **Fidelity.** Where the TFHE path does not clip an activation, rounding its coefficients may
//! move it by at most [`MAX_ERROR_STEPS`] output steps, the TFHE path's own rounding.
//!
//! **Noise**, in bits, as the BFV library measures it: fresh inputs carry
//! `fresh_noise_bits`; a sum weighted by w adds log2 Σ|w|; a scalar product by A adds log2 |A|;
//! adding two terms adds one bit; a square (tensor product and relinearisation) adds
//! log2 t + log2 N + [`SQUARE_EXTRA_BITS`]. Decryption needs the total below log2(q/t) − 1; the
//! compiler keeps [`BULK_NOISE_HEADROOM_BITS`](crate::parameters::BULK_NOISE_HEADROOM_BITS)
//! more. `hexray-bulk`'s tests measure the real noise against this estimate.

use super::{PackedCircuit, PackedStage, Quadratic, LOGIT_UNIT_LOG2};
use crate::circuit::{linear, Affine};
use crate::error::{CompileError, ModelError};
use crate::network::{Activation, Function, Layer, Network, Quantizer, Shape};
use crate::parameters::BulkParameters;

/// Bits a square adds beyond log2 t + log2 N: the relinearisation's noise and the rounding of
/// the tensor product's rescale, with a bit to spare.
pub const SQUARE_EXTRA_BITS: f64 = 2.0;

/// Largest error, in the TFHE path's output steps, that rounding the coefficients may add to
/// an activation where the TFHE path does not clip it: the TFHE path's own rounding.
pub const MAX_ERROR_STEPS: f64 = 0.5;

/// Below this, every integer is exact in an f64: the bound on the scale and the coefficients,
/// so that their rounding errors are measured exactly.
const EXACT_F64: f64 = 9_007_199_254_740_992.0; // 2^53

/// Validates `network` and compiles it for the bulk path under `parameters`.
///
/// Refuses, with the value and stage at fault, a network with more than one activation layer
/// ([`CompileError::PackedDepth`]) or activations that are not polynomials of degree ≤ 2
/// ([`CompileError::NotQuadratic`]), whose values cannot fit the exact range at the public
/// output unit ([`CompileError::PlaintextRange`]), whose coefficients lose too much as integers
/// ([`CompileError::PackedPrecision`]) or whose noise exceeds the budget
/// ([`CompileError::PackedNoise`]).
pub fn compile(
    network: &Network,
    parameters: &BulkParameters,
) -> Result<PackedCircuit, ModelError> {
    let shapes = network.validate()?;
    parameters.validate()?;
    let plan = plan(network, &shapes)?;
    let factor = (network.output.logit_scale * 2f64.powi(LOGIT_UNIT_LOG2 as i32)).round();
    if !(1.0..EXACT_F64).contains(&factor) {
        return Err(CompileError::PlaintextRange {
            stage: 0,
            neuron: 0,
            what: "logit scale",
            bits: network.output.logit_scale.log2(),
            limit_bits: -f64::from(LOGIT_UNIT_LOG2),
        }
        .into());
    }
    Ok(build(network, &plan, factor, parameters)?)
}

/// The network split at its one activation, each run of linear layers composed as the TFHE
/// compiler composes them.
struct Plan<'a> {
    /// The forms before the activation, the activation and its shape; `None` for a network
    /// without one.
    hidden: Option<(Vec<Affine>, &'a Activation, Shape)>,
    /// The output layer's forms over the activation's outputs (or the pixels).
    output: Vec<Affine>,
}

/// Refuses a second activation layer and activations that are not quadratics.
fn plan<'a>(network: &'a Network, shapes: &[Shape]) -> Result<Plan<'a>, ModelError> {
    let activations = network
        .layers
        .iter()
        .filter(|l| matches!(l, Layer::Activation(_)))
        .count();
    if activations > 1 {
        return Err(CompileError::PackedDepth { activations }.into());
    }
    let mut hidden = None;
    let mut shape = network.input_shape();
    // The values the current run of linear layers reads: the pixels, then the activations.
    let mut stage_inputs = shape.len();
    let mut forms = Affine::identity(stage_inputs);
    for (i, layer) in network.layers.iter().enumerate() {
        match layer {
            Layer::Activation(act) => {
                for function in &act.functions {
                    check_quadratic(i, function)?;
                }
                stage_inputs = shape.len();
                let done = std::mem::replace(&mut forms, Affine::identity(stage_inputs));
                hidden = Some((done, act, shape));
            }
            linear_layer => {
                forms = linear::apply(i, linear_layer, (shape, shapes[i]), &forms, stage_inputs)?;
            }
        }
        shape = shapes[i];
    }
    Ok(Plan {
        hidden,
        output: forms,
    })
}

fn check_quadratic(layer: usize, function: &Function) -> Result<(), CompileError> {
    let found = match function {
        Function::Polynomial { coefficients } if coefficients.len() <= 3 => return Ok(()),
        Function::Polynomial { coefficients } => {
            format!("a polynomial of degree {}", coefficients.len() - 1)
        }
        Function::Relu => "ReLU".to_owned(),
    };
    Err(CompileError::NotQuadratic { layer, found })
}

/// A worst-case interval of integers.
type Range = (i128, i128);

/// A value's worst-case interval and the bits of noise its ciphertext carries.
struct Bounded {
    range: Range,
    noise: f64,
}

/// What an activation layer becomes: each neuron's quadratic and the range of its value, and
/// the worst noise over its outputs.
struct Activated {
    polynomials: Vec<Quadratic>,
    ranges: Vec<Range>,
    noise: f64,
}

/// Worst-case ranges and noise of one stage's values, checked against the exact range as they
/// are made.
struct Checker {
    stage: usize,
    limit: i128,
}

impl Checker {
    /// The range, if it fits; `None` stands for a range whose arithmetic overflowed i128.
    fn check(
        &self,
        neuron: usize,
        what: &'static str,
        range: Option<Range>,
    ) -> Result<Range, CompileError> {
        let reach = range.map_or(i128::MAX, |(lo, hi)| {
            lo.saturating_abs().max(hi.saturating_abs())
        });
        match range {
            Some(range) if reach <= self.limit => Ok(range),
            _ => Err(CompileError::PlaintextRange {
                stage: self.stage,
                neuron,
                what,
                bits: (reach as f64).log2(),
                limit_bits: (self.limit as f64).log2(),
            }),
        }
    }

    /// Each form's range over `inputs`, checked, and its noise given the inputs' `noise`.
    fn forms(
        &self,
        forms: &[Affine],
        inputs: &[Range],
        noise: f64,
    ) -> Result<Vec<Bounded>, CompileError> {
        forms
            .iter()
            .enumerate()
            .map(|(j, form)| {
                let l1: f64 = form.terms.iter().map(|&(_, w)| (w as f64).abs()).sum();
                Ok(Bounded {
                    range: self.check(j, "accumulator", affine_range(form, inputs))?,
                    noise: noise + l1.max(1.0).log2(),
                })
            })
            .collect()
    }
}

/// The circuit whose outputs count 2^-[`LOGIT_UNIT_LOG2`] logits, `factor` being
/// `round(logit_scale · 2^LOGIT_UNIT_LOG2)`, or the first value, coefficient or noise that does
/// not fit.
fn build(
    network: &Network,
    plan: &Plan,
    factor: f64,
    parameters: &BulkParameters,
) -> Result<PackedCircuit, CompileError> {
    let limit = parameters.value_limit();
    let pixels: Vec<Range> =
        vec![(0, i128::from(network.input.max_value())); network.input_shape().len()];
    let mut stages = Vec::with_capacity(2);
    let mut output_forms = plan.output.clone();
    let (inputs, input_noise) = match &plan.hidden {
        Some((forms, activation, shape)) => {
            let checker = Checker { stage: 0, limit };
            let accumulators = checker.forms(forms, &pixels, parameters.fresh_noise_bits)?;
            let activated = activate(
                &checker,
                activation,
                *shape,
                &accumulators,
                factor,
                parameters,
            )?;
            stages.push(PackedStage {
                forms: forms.clone(),
                activation: Some(activated.polynomials),
            });
            // The activations count o/M: the output layer's biases follow.
            scale_forms(&mut output_forms, 1, factor as i64, 1)?;
            (activated.ranges, activated.noise)
        }
        None => {
            scale_forms(&mut output_forms, factor as i64, factor as i64, 0)?;
            (pixels, parameters.fresh_noise_bits)
        }
    };
    let checker = Checker {
        stage: stages.len(),
        limit,
    };
    let outputs = checker.forms(&output_forms, &inputs, input_noise)?;
    let noise_bits = outputs.iter().map(|o| o.noise).fold(f64::MIN, f64::max);
    if noise_bits > parameters.noise_budget_bits() {
        return Err(CompileError::PackedNoise {
            bits: noise_bits,
            budget: parameters.noise_budget_bits(),
        });
    }
    stages.push(PackedStage {
        forms: output_forms,
        activation: None,
    });
    Ok(PackedCircuit {
        input: network.input.clone(),
        classes: network.output.classes.clone(),
        parameters: parameters.clone(),
        stages,
        noise_bits,
    })
}

/// Multiplies every form's weights by `weight_factor` and bias by `bias_factor`, refusing what
/// would overflow.
fn scale_forms(
    forms: &mut [Affine],
    weight_factor: i64,
    bias_factor: i64,
    stage: usize,
) -> Result<(), CompileError> {
    for (j, form) in forms.iter_mut().enumerate() {
        let overflow = || CompileError::PlaintextRange {
            stage,
            neuron: j,
            what: "scaled weight or bias",
            bits: 63.0,
            limit_bits: 63.0,
        };
        form.bias = form.bias.checked_mul(bias_factor).ok_or_else(overflow)?;
        for (_, w) in &mut form.terms {
            *w = w.checked_mul(weight_factor).ok_or_else(overflow)?;
        }
    }
    Ok(())
}

/// Each neuron's integer quadratic at scale `m`, with the range of its value and the noise
/// of the layer's outputs: the worst over its neurons.
fn activate(
    checker: &Checker,
    activation: &Activation,
    shape: Shape,
    accumulators: &[Bounded],
    m: f64,
    parameters: &BulkParameters,
) -> Result<Activated, CompileError> {
    let square_bits = (parameters.plaintext_modulus as f64).log2()
        + f64::from(parameters.degree).log2()
        + SQUARE_EXTRA_BITS;
    let o = activation.output.scale;
    let mut polynomials = Vec::with_capacity(accumulators.len());
    let mut ranges = Vec::with_capacity(accumulators.len());
    let mut worst_noise = f64::MIN;
    for (j, accumulator) in accumulators.iter().enumerate() {
        let ((lo, hi), noise) = (accumulator.range, accumulator.noise);
        let entry = activation.granularity.index(shape, j);
        let s = activation.input_scales[entry];
        let Function::Polynomial { coefficients } = &activation.functions[entry] else {
            unreachable!("plan refuses every other function");
        };
        let mut rounding = [0.0f64; 3];
        let mut coefficient = |degree: usize, factor: f64| -> Result<i64, CompileError> {
            let real = coefficients.get(degree).copied().unwrap_or(0.0) * m * factor / o;
            let rounded = real.round();
            rounding[degree] = (real - rounded).abs();
            if !rounded.is_finite() || rounded.abs() >= EXACT_F64 {
                return Err(CompileError::PlaintextRange {
                    stage: checker.stage,
                    neuron: j,
                    what: "coefficient",
                    bits: rounded.abs().log2(),
                    limit_bits: 53.0,
                });
            }
            Ok(rounded as i64)
        };
        let p = Quadratic {
            a: coefficient(2, s * s)?,
            b: coefficient(1, s)?,
            c: coefficient(0, 1.0)?,
        };
        let reach = unclipped_reach(coefficients, activation.output, s)
            .min(lo.unsigned_abs().max(hi.unsigned_abs()) as f64);
        let steps = (rounding[2] * reach * reach + rounding[1] * reach + rounding[0]) / m;
        if steps > MAX_ERROR_STEPS {
            return Err(CompileError::PackedPrecision {
                stage: checker.stage,
                neuron: j,
                steps,
                allowed: MAX_ERROR_STEPS,
            });
        }
        let (a, b) = (i128::from(p.a), i128::from(p.b));
        if a != 0 {
            let square = checker.check(j, "square", square_range(lo, hi))?;
            checker.check(j, "quadratic term", scaled(a, square))?;
        }
        checker.check(j, "linear term", scaled(b, (lo, hi)))?;
        ranges.push(checker.check(j, "activation", Some(quadratic_range(&p, lo, hi)))?);
        let linear_noise = noise + (b.unsigned_abs().max(1) as f64).log2();
        let neuron_noise = if p.a == 0 {
            linear_noise
        } else {
            let quadratic_noise = noise + square_bits + (a.unsigned_abs() as f64).log2();
            quadratic_noise.max(linear_noise) + 1.0
        };
        worst_noise = worst_noise.max(neuron_noise);
        polynomials.push(p);
    }
    Ok(Activated {
        polynomials,
        ranges,
        noise: worst_noise,
    })
}

/// The largest accumulator magnitude at which the trained polynomial's value is still inside
/// the TFHE path's output range (beyond it that path clips, and the packed path's values only
/// need to stay large): the largest real root of f(z) = ±reach, in accumulator steps of size
/// `s`. Infinite for a constant, zero when the value never fits.
fn unclipped_reach(coefficients: &[f64], output: Quantizer, s: f64) -> f64 {
    let [c, b, a] = [0, 1, 2].map(|d| coefficients.get(d).copied().unwrap_or(0.0));
    let reach = output.scale * output.max().max(-output.min()) as f64;
    let roots = [reach, -reach].into_iter().flat_map(|y| {
        // a·z² + b·z + (c − y) = 0
        if a == 0.0 {
            return if b == 0.0 {
                vec![f64::INFINITY]
            } else {
                vec![(y - c) / b]
            };
        }
        let discriminant = b * b - 4.0 * a * (c - y);
        if discriminant < 0.0 {
            return vec![];
        }
        let root = discriminant.sqrt();
        vec![(-b + root) / (2.0 * a), (-b - root) / (2.0 * a)]
    });
    roots.map(f64::abs).fold(0.0, f64::max) / s
}

/// Worst-case range of `bias + Σ w·x` over inputs in their ranges; `None` if it overflows.
fn affine_range(form: &Affine, inputs: &[Range]) -> Option<Range> {
    let bias = i128::from(form.bias);
    form.terms
        .iter()
        .try_fold((bias, bias), |(lo, hi), &(i, w)| {
            let (a, b) = scaled(i128::from(w), inputs[i as usize])?;
            Some((lo.checked_add(a)?, hi.checked_add(b)?))
        })
}

/// The range of `w·x` for x in `(lo, hi)`; `None` if it overflows.
fn scaled(w: i128, (lo, hi): Range) -> Option<Range> {
    let (a, b) = (w.checked_mul(lo)?, w.checked_mul(hi)?);
    Some((a.min(b), a.max(b)))
}

/// The range of x² for x in `lo..=hi`; `None` if it overflows.
fn square_range(lo: i128, hi: i128) -> Option<Range> {
    let ends = (lo.checked_mul(lo)?, hi.checked_mul(hi)?);
    let top = ends.0.max(ends.1);
    if lo <= 0 && hi >= 0 {
        Some((0, top))
    } else {
        Some((ends.0.min(ends.1), top))
    }
}

/// The exact range of the quadratic over the integers `lo..=hi`: its ends, and the integers
/// either side of its vertex when they lie inside. Called once the square and both terms are
/// known to fit, so it cannot overflow.
fn quadratic_range(p: &Quadratic, lo: i128, hi: i128) -> Range {
    let mut candidates = vec![lo, hi];
    if p.a != 0 {
        let vertex = -(p.b as f64) / (2.0 * p.a as f64);
        for x in [vertex.floor(), vertex.ceil()] {
            let x = x as i128;
            if (lo..=hi).contains(&x) {
                candidates.push(x);
            }
        }
    }
    let values = candidates.into_iter().map(|x| p.at(x));
    let (mut min, mut max) = (i128::MAX, i128::MIN);
    for v in values {
        min = min.min(v);
        max = max.max(v);
    }
    (min, max)
}
