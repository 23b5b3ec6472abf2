//! The bulk compile step: network → packed circuit, with the range proof and the noise
//! estimate that make its result exact.
//!
//! **Coefficients.** A neuron's trained polynomial a·z² + b·z + c reads z = acc·s, where s is
//! its input scale, and the TFHE path would quantize its value in steps of o. The packed
//! circuit computes `A·acc² + B·acc + C` with `A = round(M·a·s²/o)`, `B = round(M·b·s/o)` and
//! `C = round(M·c/o)`: the same value in steps of o/M. The next layer's biases are multiplied by
//! M to stay in its units, and the logits' unit is divided by it.
//!
//! A larger M keeps more of the coefficients' precision and makes every later value larger.
//! Each activation layer takes the largest power of two M ≤ 2^62 with which every value of the
//! circuit still fits; later layers are tried at M = 1 while an earlier one is chosen.
//!
//! **Range proof.** Interval arithmetic bounds every value the server computes (accumulators,
//! squares, each product and sum, outputs) over every input in the pixel range, and each must
//! lie inside ±(t−1)/2, where decoding is exact. The quadratic's range over its accumulator's
//! interval is exact (its ends and its vertex).
//!
//! **Noise**, in bits, as the BFV library measures it: fresh inputs carry
//! `fresh_noise_bits`; a sum weighted by w adds log2 Σ|w|; a scalar product by A adds log2 |A|;
//! adding two terms adds one bit; a square (tensor product and relinearisation) adds
//! log2 t + log2 N + [`SQUARE_EXTRA_BITS`]. Decryption needs the total below log2(q/t) − 1; the
//! compiler keeps [`BULK_NOISE_HEADROOM_BITS`](crate::parameters::BULK_NOISE_HEADROOM_BITS)
//! more. `hexray-bulk`'s tests measure the real noise against this estimate.

use super::{PackedCircuit, PackedStage, Quadratic};
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

/// Largest power of two tried for an activation's coefficient scale M.
const MAX_SCALE_LOG2: u32 = 62;

/// Validates `network` and compiles it for the bulk path under `parameters`.
///
/// Refuses, with the value and stage at fault, a network whose activations are not
/// polynomials of degree ≤ 2 ([`CompileError::NotQuadratic`]), whose values cannot fit ±t/2
/// even at M = 1 ([`CompileError::PlaintextRange`]), or whose noise exceeds the budget
/// ([`CompileError::PackedNoise`]).
pub fn compile(
    network: &Network,
    parameters: &BulkParameters,
) -> Result<PackedCircuit, ModelError> {
    let shapes = network.validate()?;
    parameters.validate()?;
    let plan = plan(network, &shapes)?;
    let activations = plan.iter().filter(|s| s.activation.is_some()).count();
    let mut scales = vec![0u32; activations];
    for layer in 0..activations {
        // Layers after this one wait at M = 1, and their precision is not judged yet.
        for k in (0..=MAX_SCALE_LOG2).rev() {
            scales[layer] = k;
            match build(network, &plan, &scales, layer + 1, parameters) {
                Ok(_) => break,
                // A smaller M only loses more precision.
                Err(e @ CompileError::PackedPrecision { .. }) => return Err(e.into()),
                Err(e) if k == 0 => return Err(e.into()),
                Err(_) => {}
            }
        }
    }
    Ok(build(network, &plan, &scales, activations, parameters)?)
}

/// A stage before its coefficients are scaled: the composed forms, and the activation that
/// follows them with its shape.
struct PlannedStage<'a> {
    forms: Vec<Affine>,
    activation: Option<(&'a Activation, Shape, usize)>,
}

/// Splits the network at its activations and composes each run of linear layers, as the TFHE
/// compiler does; refuses activations that are not quadratics.
fn plan<'a>(network: &'a Network, shapes: &[Shape]) -> Result<Vec<PlannedStage<'a>>, ModelError> {
    let mut stages = Vec::new();
    let mut shape = network.input_shape();
    let mut stage_inputs = shape.len();
    let mut forms = Affine::identity(stage_inputs);
    for (i, layer) in network.layers.iter().enumerate() {
        match layer {
            Layer::Activation(act) => {
                for function in &act.functions {
                    check_quadratic(i, function)?;
                }
                stages.push(PlannedStage {
                    forms,
                    activation: Some((act, shape, i)),
                });
                stage_inputs = shape.len();
                forms = Affine::identity(stage_inputs);
            }
            linear_layer => {
                forms = linear::apply(i, linear_layer, (shape, shapes[i]), &forms, stage_inputs)?;
            }
        }
        shape = shapes[i];
    }
    stages.push(PlannedStage {
        forms,
        activation: None,
    });
    Ok(stages)
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

/// The circuit with the given coefficient scales (log2 M per activation layer), or the first
/// value or noise that does not fit, or, among the first `judged` activation layers, the first
/// neuron whose integer polynomial strays from the trained one.
fn build(
    network: &Network,
    plan: &[PlannedStage],
    scales: &[u32],
    judged: usize,
    parameters: &BulkParameters,
) -> Result<PackedCircuit, CompileError> {
    let limit = parameters.value_limit();
    let square_bits = (parameters.plaintext_modulus as f64).log2()
        + f64::from(parameters.degree).log2()
        + SQUARE_EXTRA_BITS;
    let mut input_ranges =
        vec![(0i128, i128::from(network.input.max_value())); network.input_shape().len()];
    let mut input_noise = parameters.fresh_noise_bits;
    // Real value of one step of the stage's inputs, relative to the TFHE path's: M of the
    // activation that produced them.
    let mut gain = 1.0f64;
    let mut bias_factor = 1i64;
    let mut stages = Vec::with_capacity(plan.len());
    for (index, planned) in plan.iter().enumerate() {
        let check = |neuron: usize, what: &'static str, (lo, hi): (i128, i128)| {
            let reach = lo.abs().max(hi.abs());
            if reach > limit {
                return Err(CompileError::PlaintextRange {
                    stage: index,
                    neuron,
                    what,
                    bits: (reach as f64).log2(),
                    limit_bits: (limit as f64).log2(),
                });
            }
            Ok((lo, hi))
        };
        let mut forms = planned.forms.clone();
        for form in &mut forms {
            form.bias = form
                .bias
                .checked_mul(bias_factor)
                .ok_or(CompileError::PlaintextRange {
                    stage: index,
                    neuron: 0,
                    what: "bias",
                    bits: 63.0,
                    limit_bits: (limit as f64).log2(),
                })?;
        }
        let mut ranges = Vec::with_capacity(forms.len());
        let mut noise = Vec::with_capacity(forms.len());
        for (j, form) in forms.iter().enumerate() {
            ranges.push(check(j, "accumulator", affine_range(form, &input_ranges))?);
            let l1: f64 = form.terms.iter().map(|&(_, w)| (w as f64).abs()).sum();
            noise.push(input_noise + l1.max(1.0).log2());
        }
        let Some((activation, shape, _)) = planned.activation else {
            let noise_bits = noise.iter().copied().fold(f64::MIN, f64::max);
            if noise_bits > parameters.noise_budget_bits() {
                return Err(CompileError::PackedNoise {
                    bits: noise_bits,
                    budget: parameters.noise_budget_bits(),
                });
            }
            stages.push(PackedStage {
                forms,
                activation: None,
            });
            return Ok(PackedCircuit {
                input: network.input.clone(),
                classes: network.output.classes.clone(),
                parameters: parameters.clone(),
                stages,
                logit_unit: network.output.logit_scale / gain,
                noise_bits,
            });
        };
        let m = 2f64.powi(scales[index] as i32);
        let mut polynomials = Vec::with_capacity(forms.len());
        let mut output_ranges = Vec::with_capacity(forms.len());
        let mut output_noise = f64::MIN;
        for (j, &(lo, hi)) in ranges.iter().enumerate() {
            let entry = activation.granularity.index(shape, j);
            let s = activation.input_scales[entry] / gain;
            let o = activation.output.scale;
            let Function::Polynomial { coefficients } = &activation.functions[entry] else {
                unreachable!("plan refuses every other function");
            };
            let mut rounding = [0.0f64; 3];
            let mut coefficient = |degree: usize, factor: f64| -> Result<i64, CompileError> {
                let real = coefficients.get(degree).copied().unwrap_or(0.0) * m * factor / o;
                let rounded = real.round();
                rounding[degree] = (real - rounded).abs();
                if !rounded.is_finite() || rounded.abs() >= 2f64.powi(62) {
                    return Err(CompileError::PlaintextRange {
                        stage: index,
                        neuron: j,
                        what: "coefficient",
                        bits: rounded.abs().log2(),
                        limit_bits: 62.0,
                    });
                }
                Ok(rounded as i64)
            };
            let p = Quadratic {
                a: coefficient(2, s * s)?,
                b: coefficient(1, s)?,
                c: coefficient(0, 1.0)?,
            };
            if index < judged {
                let reach = unclipped_reach(coefficients, activation.output, s)
                    .min(lo.unsigned_abs().max(hi.unsigned_abs()) as f64);
                let steps = (rounding[2] * reach * reach + rounding[1] * reach + rounding[0]) / m;
                if steps > MAX_ERROR_STEPS {
                    return Err(CompileError::PackedPrecision {
                        stage: index,
                        neuron: j,
                        steps,
                        allowed: MAX_ERROR_STEPS,
                    });
                }
            }
            let (a, b) = (i128::from(p.a), i128::from(p.b));
            if a != 0 {
                let square = check(j, "square", square_range(lo, hi))?;
                check(j, "quadratic term", scaled(a, square))?;
            }
            check(j, "linear term", scaled(b, (lo, hi)))?;
            output_ranges.push(check(j, "activation", quadratic_range(&p, lo, hi))?);
            let linear_noise = noise[j] + (b.unsigned_abs().max(1) as f64).log2();
            let neuron_noise = if p.a == 0 {
                linear_noise
            } else {
                let quadratic_noise = noise[j] + square_bits + (a.unsigned_abs() as f64).log2();
                quadratic_noise.max(linear_noise) + 1.0
            };
            output_noise = output_noise.max(neuron_noise);
            polynomials.push(p);
        }
        stages.push(PackedStage {
            forms,
            activation: Some(polynomials),
        });
        input_ranges = output_ranges;
        input_noise = output_noise;
        gain = m;
        bias_factor = m as i64;
    }
    unreachable!("a plan ends with the output stage")
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

/// Worst-case range of `bias + Σ w·x` over inputs in their ranges.
fn affine_range(form: &Affine, inputs: &[(i128, i128)]) -> (i128, i128) {
    let bias = i128::from(form.bias);
    form.terms.iter().fold((bias, bias), |(lo, hi), &(i, w)| {
        let (a, b) = scaled(i128::from(w), inputs[i as usize]);
        (lo + a, hi + b)
    })
}

/// The range of `w·x` for x in `(lo, hi)`.
fn scaled(w: i128, (lo, hi): (i128, i128)) -> (i128, i128) {
    let (a, b) = (w * lo, w * hi);
    (a.min(b), a.max(b))
}

/// The range of x² for x in `lo..=hi`.
fn square_range(lo: i128, hi: i128) -> (i128, i128) {
    let ends = (lo * lo, hi * hi);
    let top = ends.0.max(ends.1);
    if lo <= 0 && hi >= 0 {
        (0, top)
    } else {
        (ends.0.min(ends.1), top)
    }
}

/// The exact range of the quadratic over the integers `lo..=hi`: its ends, and the integers
/// either side of its vertex when they lie inside.
fn quadratic_range(p: &Quadratic, lo: i128, hi: i128) -> (i128, i128) {
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
