//! The compiled circuit's types, with every method on them: its figures, its encoding, and
//! the phases, bootstrap positions and lookup tables that the encrypted engine and the
//! simulator must share exactly (see the [module overview](super)).

use ndarray::ArrayView3;
use serde::{Deserialize, Serialize};

use super::linear::Affine;
use crate::error::ModelError;
use crate::network::{Function, Granularity, InputSpec, Quantizer, Shape};
use crate::parameters::TORUS;

/// The client encrypts every input integer q as `q·2^INPUT_DELTA_LOG2`, whatever the model, so
/// that the public client spec reveals nothing about the weights. Stage 0's Δ is a multiple of
/// it, and the server multiplies the first dot product's weights by the quotient
/// ([`Stage::input_gain`]). The inputs' encryption noise grows by that gain too, which stays
/// far below the noise the keyswitch and modulus switch add before the first bootstrap.
pub const INPUT_DELTA_LOG2: u32 = 32;

/// The output stage's phases decode into logits with a public unit: `logit = phase / 2^u`,
/// the phase read as a signed integer, where `u = 63 − b` for the bound `±2^b` the model
/// declares on its logits ([`crate::network::OutputSpec::logit_bound_log2`]). The output Δ is
/// `logit_scale · 2^u`, and the server centres the outputs on a common origin
/// ([`Stage::origin`]); a common shift of every logit changes neither the softmax nor the
/// class. The worst-case logits, noise included, must stay within the bound. A tighter bound
/// gives finer output precision, so exporters declare the smallest that fits
/// ([`fit_logit_bound`](super::fit_logit_bound)).
pub fn output_unit_log2(logit_bound_log2: u32) -> u32 {
    63 - logit_bound_log2
}

/// A compiled network, ready to evaluate encrypted or simulated.
#[derive(Clone, Debug, PartialEq)]
pub struct Circuit {
    /// The stages in evaluation order; the last is the output stage, with no bootstrap.
    pub stages: Vec<Stage>,
    /// Bootstraps read `2·polynomial_size` positions of the torus.
    pub polynomial_size: u32,
    /// What the client encrypts: the preprocessed image's size and bits.
    pub input: InputSpec,
    /// Class names, one per output accumulator.
    pub classes: Vec<String>,
    /// Real logit of one output accumulator step, as in [`OutputSpec::logit_scale`](crate::network::OutputSpec::logit_scale).
    pub logit_scale: f64,
}

/// One linear map and, for hidden stages, one bootstrap per neuron.
#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    /// Inclusive range of each integer this stage reads: the input bits for stage 0, the
    /// extremes of each previous neuron's table afterwards.
    pub input_ranges: Vec<(i64, i64)>,
    /// The stage's neurons: one bootstrap each in a hidden stage, one class each in the output
    /// stage.
    pub neurons: Vec<Neuron>,
    /// Torus value of one unit of this stage's input.
    pub delta: u64,
    /// Guard band kept free below and above every accumulator's range, in 2^64 torus units:
    /// [`NOISE_MARGIN_SIGMAS`](super::compile::NOISE_MARGIN_SIGMAS) standard deviations of the stage's noisiest neuron.
    pub margin: u64,
    /// What the server multiplies this stage's weights by: `Δ / 2^INPUT_DELTA_LOG2` for stage 0,
    /// whose inputs the client encrypts in the public unit, and 1 after, where each table
    /// already writes its outputs in the next stage's Δ.
    pub input_gain: u64,
    /// The output stage's common origin: its phases encode `(acc − origin)·Δ`, signed. 0 for
    /// hidden stages, whose phases encode `(acc − acc_min)·Δ + margin`.
    pub origin: i64,
    /// Standard deviation of the noise each input ciphertext carries, as a fraction of the
    /// torus: fresh encryption noise for stage 0, bootstrap output noise after.
    pub input_sigma: f64,
    /// Standard deviation the keyswitch and modulus switch add before each bootstrap, as a
    /// fraction of the torus; for the output stage, what the output compression adds
    /// ([`FheParameters::output_compression_variance`](crate::FheParameters::output_compression_variance)).
    pub switch_sigma: f64,
    /// The activation applied by each neuron's bootstrap; `None` for the output stage.
    pub activation: Option<StageActivation>,
}

/// A hidden stage's activation, with the shape its granularity refers to.
#[derive(Clone, Debug, PartialEq)]
pub struct StageActivation {
    /// Shape of the tensor the activation applies to, which `granularity` indexes.
    pub shape: Shape,
    /// Which neurons share an entry of `functions` and `input_scales`.
    pub granularity: Granularity,
    /// The trained function of each entry.
    pub functions: Vec<Function>,
    /// Real value of one accumulator step, per entry.
    pub input_scales: Vec<f64>,
    /// How the function's real output becomes the next stage's integers.
    pub output: Quantizer,
}

/// One neuron: its affine form over the stage input, its range and its noise.
#[derive(Clone, Debug, PartialEq)]
pub struct Neuron {
    /// The accumulator as one affine form over the stage's input integers: every linear layer
    /// since the previous activation, composed.
    pub form: Affine,
    /// Smallest accumulator any reachable input gives (range analysis).
    pub acc_min: i64,
    /// Largest accumulator any reachable input gives (range analysis).
    pub acc_max: i64,
    /// Standard deviation of the phase noise where it is read, as a fraction of the torus:
    /// `√(‖w‖²·input_sigma² + switch_sigma²)`.
    pub sigma: f64,
}

/// Per-stage figures for people: what the circuit costs and how noisy it is.
#[derive(Clone, Debug, PartialEq)]
pub struct StageReport {
    /// Neurons in the stage.
    pub neurons: usize,
    /// Bootstraps the stage costs per image: one per neuron, none in the output stage.
    pub bootstraps: usize,
    /// Bits needed for the widest worst-case accumulator range.
    pub accumulator_bits: u32,
    /// Largest fan-in of a neuron's composed dot product.
    pub max_fan_in: usize,
    /// Largest ‖w‖₂ over the stage's neurons.
    pub max_weight_norm: f64,
    /// Worst noise standard deviation in accumulator units.
    pub max_sigma_acc: f64,
    /// Worst noise standard deviation in bootstrap positions (1/2N of the torus).
    pub max_sigma_positions: f64,
}

/// The circuit encoding the compiler chose: one entry per stage (a linear map, then a bootstrap
/// per neuron, except in the output stage).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encoding {
    /// One per circuit stage, the output stage last.
    pub stages: Vec<StageEncoding>,
}

/// Encoding of one stage's accumulators: phase = (acc − acc_min)·delta + margin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageEncoding {
    /// Torus value of one unit of this stage's input integers.
    pub delta: u64,
    /// Guard band, in torus units, kept free below and above every accumulator's range.
    pub margin: u64,
    /// Worst-case accumulator bounds per neuron, from range analysis.
    pub acc_min: Vec<i64>,
    /// Upper worst-case accumulator bound per neuron, as `acc_min`.
    pub acc_max: Vec<i64>,
    /// Standard deviation of each neuron's phase noise where it is read (before its bootstrap,
    /// or at decryption for the output stage), as a fraction of the torus.
    pub sigma: Vec<f64>,
}

impl Circuit {
    /// Total bootstraps per image: the cost model.
    pub fn bootstrap_count(&self) -> usize {
        self.stages
            .iter()
            .filter(|s| s.activation.is_some())
            .map(|s| s.neurons.len())
            .sum()
    }

    /// Number of input integers the client encrypts.
    pub fn input_len(&self) -> usize {
        self.input.shape().len()
    }

    /// Number of output accumulators the client decrypts.
    pub fn output_len(&self) -> usize {
        self.stages.last().map_or(0, |s| s.neurons.len())
    }

    /// The serialisable encoding, as stored in the model file.
    pub fn encoding(&self) -> Encoding {
        Encoding {
            stages: self
                .stages
                .iter()
                .map(|s| StageEncoding {
                    delta: s.delta,
                    margin: s.margin,
                    acc_min: s.neurons.iter().map(|n| n.acc_min).collect(),
                    acc_max: s.neurons.iter().map(|n| n.acc_max).collect(),
                    sigma: s.neurons.iter().map(|n| n.sigma).collect(),
                })
                .collect(),
        }
    }

    /// Cost and noise figures for each stage, in order, for people to read.
    pub fn report(&self) -> Vec<StageReport> {
        let positions = 2.0 * self.polynomial_size as f64;
        self.stages
            .iter()
            .map(|s| {
                let range = s
                    .neurons
                    .iter()
                    .map(|n| n.acc_max as i128 - n.acc_min as i128 + 1);
                let max_sigma = s.neurons.iter().map(|n| n.sigma).fold(0.0, f64::max);
                StageReport {
                    neurons: s.neurons.len(),
                    bootstraps: if s.activation.is_some() {
                        s.neurons.len()
                    } else {
                        0
                    },
                    accumulator_bits: range.max().map_or(0, |r| 128 - (r - 1).leading_zeros()),
                    max_fan_in: s
                        .neurons
                        .iter()
                        .map(|n| n.form.terms.len())
                        .max()
                        .unwrap_or(0),
                    max_weight_norm: s
                        .neurons
                        .iter()
                        .map(|n| n.form.squared_norm().sqrt())
                        .fold(0.0, f64::max),
                    max_sigma_acc: max_sigma * TORUS / s.delta as f64,
                    max_sigma_positions: max_sigma * positions,
                }
            })
            .collect()
    }

    /// Checks that `input` is the `[channels][height][width]` tensor this circuit reads and
    /// that every value lies in the input range.
    pub fn check_input(&self, input: ArrayView3<i64>) -> Result<(), ModelError> {
        self.input.check(input)
    }

    /// Bits of the phase below the bootstrap position ([`position_shift`]).
    pub fn position_shift(&self) -> u32 {
        position_shift(self.polynomial_size)
    }
}

/// Bits of the phase below the bootstrap position for polynomial size N: 64 − log2(2N).
pub fn position_shift(polynomial_size: u32) -> u32 {
    63 - polynomial_size.trailing_zeros()
}

impl Stage {
    /// The clear constant added after the dot product: `(bias − acc_min)·Δ + margin` before a
    /// bootstrap, `(bias − origin)·Δ` in the output stage.
    pub fn constant(&self, j: usize) -> u64 {
        let n = &self.neurons[j];
        if self.activation.is_some() {
            (n.form.bias.wrapping_sub(n.acc_min) as u64)
                .wrapping_mul(self.delta)
                .wrapping_add(self.margin)
        } else {
            (n.form.bias.wrapping_sub(self.origin) as u64).wrapping_mul(self.delta)
        }
    }

    /// Noise-free phase of neuron `j` for stage inputs `x`: what the server's dot product
    /// encrypts.
    pub fn phase(&self, j: usize, x: &[i64]) -> u64 {
        self.neurons[j]
            .form
            .terms
            .iter()
            .fold(self.constant(j), |acc, &(i, w)| {
                acc.wrapping_add((w.wrapping_mul(x[i as usize]) as u64).wrapping_mul(self.delta))
            })
    }

    /// The accumulator that position `p` (0 ≤ p < N) of neuron `j`'s table stands for.
    ///
    /// Accumulators are integers, so the position's centre is decoded and rounded to the
    /// nearest one, then clamped to the proven range (noise at the edges reads the edge value).
    /// When Δ spans at least one position, every integer reads back as itself; a wider range
    /// shares each position between several integers, which all read its centre.
    pub fn position_accumulator(&self, j: usize, p: usize, shift: u32) -> i64 {
        let n = &self.neurons[j];
        let centre = (p as f64 + 0.5) * (1u64 << shift) as f64;
        let acc = n.acc_min as f64 + (centre - self.margin as f64) / self.delta as f64;
        (acc.round() as i64).clamp(n.acc_min, n.acc_max)
    }

    /// The accumulator neuron `j`'s table reads when its exact (noise-free) accumulator is
    /// `acc`: the representative of the position `acc`'s phase falls in. The trainer's integer
    /// forward pass applies the activation here, so that it matches the circuit bit for bit.
    pub fn read_accumulator(&self, j: usize, acc: i64, shift: u32) -> i64 {
        let n = &self.neurons[j];
        let phase = (acc.wrapping_sub(n.acc_min) as u64)
            .wrapping_mul(self.delta)
            .wrapping_add(self.margin);
        self.position_accumulator(j, (phase >> shift) as usize, shift)
    }

    /// The output integer of neuron `j`'s table at position `p` (0 ≤ p < N): the trained
    /// function of the position's accumulator, scaled to the pre-activation and requantized
    /// with clipping.
    pub fn table_entry(&self, j: usize, p: usize, shift: u32) -> i64 {
        let activation = self.activation.as_ref().expect("hidden stage");
        let (function, scale) = activation.of(j);
        let acc = self.position_accumulator(j, p, shift);
        activation
            .output
            .quantize(function.eval(acc as f64 * scale))
    }

    /// Neuron `j`'s lookup table for a bootstrap over `polynomial_size` positions, its outputs
    /// encoded for the next stage as `q·next_delta`.
    pub fn lookup_table(&self, j: usize, polynomial_size: u32, next_delta: u64) -> Vec<u64> {
        let shift = position_shift(polynomial_size);
        (0..polynomial_size as usize)
            .map(|p| (self.table_entry(j, p, shift) as u64).wrapping_mul(next_delta))
            .collect()
    }

    /// What neuron `j`'s bootstrap outputs for `phase`: the table entry of its position, negated
    /// in the upper half torus (TFHE's negacyclic rotation), which the margins make unreachable.
    pub fn bootstrap(&self, j: usize, phase: u64, shift: u32) -> i64 {
        let half = 1usize << (63 - shift);
        let p = (phase >> shift) as usize;
        if p < half {
            self.table_entry(j, p, shift)
        } else {
            -self.table_entry(j, p - half, shift)
        }
    }

    /// The real accumulator an output-stage phase encodes.
    pub fn decode(&self, phase: u64) -> f64 {
        self.origin as f64 + phase as i64 as f64 / self.delta as f64
    }

    /// The smallest and largest integer each neuron's table can output, over every position.
    pub(super) fn output_ranges(&self, polynomial_size: u32) -> Vec<(i64, i64)> {
        let shift = position_shift(polynomial_size);
        (0..self.neurons.len())
            .map(|j| {
                (0..polynomial_size as usize)
                    .map(|p| self.table_entry(j, p, shift))
                    .fold((i64::MAX, i64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)))
            })
            .collect()
    }
}

impl StageActivation {
    /// The function and input scale that neuron `j` applies.
    pub fn of(&self, j: usize) -> (&Function, f64) {
        let k = self.granularity.index(self.shape, j);
        (&self.functions[k], self.input_scales[k])
    }
}
