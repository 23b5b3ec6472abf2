//! The compile step: network → circuit.
//!
//! A circuit is a list of stages. Each stage is a composed linear map over the previous stage's
//! integers, then (except in the last, the output stage) one bootstrap per neuron.
//!
//! **Encoding.** Stage inputs are encrypted as `q·Δ` on the 64-bit torus. A neuron's phase after
//! its dot product plus a clear constant is
//!
//! ```text
//! phase = (acc − acc_min)·Δ + margin,        acc ∈ [acc_min, acc_max]
//! ```
//!
//! where `[acc_min, acc_max]` is the worst case over every input the previous stage can produce
//! (range analysis: each input lies between the smallest and largest entry of the table that
//! produced it, or in the pixel range for stage 0), and `margin` is [`NOISE_MARGIN_SIGMAS`] standard deviations of the noise the
//! phase carries. Δ is the largest integer with `margin + R·Δ + margin ≤ 2^63` for the stage's
//! widest range R, so every reachable phase, noise included, stays in the half torus and the
//! padding bit can never be set. A network for which no Δ ≥ 1 exists is refused.
//!
//! **Noise.** Inputs to stage 0 carry fresh-encryption noise, later inputs carry bootstrap output
//! noise; a dot product multiplies their variance by ‖w‖². Before a bootstrap the keyswitch and
//! the modulus switch add their own, and so does the output compression to the output stage.
//! All variances come from [`FheParameters`].
//!
//! A stage keeps the two sources apart ([`Stage::input_sigma`], [`Stage::switch_sigma`])
//! because they are not alike: the inputs' noise is shared by every neuron that reads the same
//! ciphertexts, so two neurons' (and two logits') errors are correlated, while the switches'
//! noise is fresh for every bootstrap. Each neuron's [`Neuron::sigma`] is the sum of both, the
//! figure the margins are sized from.

use crate::activation::{Function, Granularity, Quantizer};
use crate::error::{CompileError, ModelError};
use crate::format::{
    Activation, Encoding, FheParameters, InputSpec, Layer, Network, OutputSpec, Shape,
    StageEncoding,
};
use crate::linear::{self, Affine};

/// Guard band in noise standard deviations. Gaussian tails put the chance of a phase leaving
/// the half torus below 2^-49 per neuron and bootstrap; far below everything else that can fail.
pub const NOISE_MARGIN_SIGMAS: f64 = 8.0;

const HALF_TORUS: i128 = 1 << 63;
/// The 64-bit torus's size, 2^64: torus fractions times this are phases.
pub const TORUS: f64 = 18_446_744_073_709_551_616.0;

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
    /// Real logit of one output accumulator step, as in [`OutputSpec::logit_scale`].
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
    /// [`NOISE_MARGIN_SIGMAS`] standard deviations of the stage's noisiest neuron.
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
    /// ([`FheParameters::output_compression_variance`]).
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
}

impl Stage {
    /// The smallest and largest integer each neuron's table can output, over every position.
    fn output_ranges(&self, polynomial_size: u32) -> Vec<(i64, i64)> {
        let shift = 63 - polynomial_size.trailing_zeros();
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

/// Validates and compiles a network for the given parameters.
pub fn compile(network: &Network, fhe: &FheParameters) -> Result<Circuit, ModelError> {
    let shapes = network.validate()?;
    fhe.validate()?;

    // Split the layers into stages at activations, composing each run of linear layers.
    let mut stages: Vec<Stage> = Vec::new();
    let mut shape = network.input_shape();
    let mut input_ranges = vec![(0, (1i64 << network.input.bits) - 1); shape.len()];
    let mut forms = Affine::identity(shape.len());
    for (i, layer) in network.layers.iter().enumerate() {
        match layer {
            Layer::Activation(act) => {
                let activation = stage_activation(act, shape);
                let stage = analyse(
                    stages.len(),
                    input_ranges,
                    forms,
                    Some(activation),
                    fhe,
                    &network.output,
                )?;
                input_ranges = stage.output_ranges(fhe.polynomial_size);
                forms = Affine::identity(shape.len());
                stages.push(stage);
            }
            linear_layer => {
                forms = linear::apply(i, linear_layer, shape, &forms, input_ranges.len())?
            }
        }
        shape = shapes[i];
    }
    stages.push(analyse(
        stages.len(),
        input_ranges,
        forms,
        None,
        fhe,
        &network.output,
    )?);

    Ok(Circuit {
        stages,
        polynomial_size: fhe.polynomial_size,
        input: network.input.clone(),
        classes: network.output.classes.clone(),
        logit_scale: network.output.logit_scale,
    })
}

fn stage_activation(act: &Activation, shape: Shape) -> StageActivation {
    StageActivation {
        shape,
        granularity: act.granularity,
        functions: act.functions.clone(),
        input_scales: act.input_scales.clone(),
        output: act.output,
    }
}

/// The client encrypts every input integer q as `q·2^INPUT_DELTA_LOG2`, whatever the model, so
/// that the public client spec reveals nothing about the weights. Stage 0's Δ is a multiple of
/// it, and the server multiplies the first dot product's weights by the quotient
/// ([`Stage::input_gain`]). The inputs' encryption noise grows by that gain too, which stays
/// far below the noise the keyswitch and modulus switch add before the first bootstrap.
pub const INPUT_DELTA_LOG2: u32 = 32;

/// The output stage's phases decode into logits with a public unit: `logit = phase / 2^u`,
/// the phase read as a signed integer, where `u = 63 − b` for the bound `±2^b` the model
/// declares on its logits ([`crate::format::OutputSpec::logit_bound_log2`]). The output Δ is
/// `logit_scale · 2^u`, and the server centres the outputs on a common origin
/// ([`Stage::origin`]); a common shift of every logit changes neither the softmax nor the
/// class. The worst-case logits, noise included, must stay within the bound. A tighter bound
/// gives finer output precision, so exporters declare the smallest that fits
/// ([`Network::fit_logit_bound`]).
pub fn output_unit_log2(logit_bound_log2: u32) -> u32 {
    63 - logit_bound_log2
}

/// The logit bound a model declares unless it says otherwise: ±32, which the bundled models
/// fit.
pub const DEFAULT_LOGIT_BOUND_LOG2: u32 = 5;
/// The widest logit bound a model may declare: ±2^20.
pub const MAX_LOGIT_BOUND_LOG2: u32 = 20;

impl Network {
    /// Declares the smallest logit bound, from the default up, with which this network
    /// compiles for `fhe`, and returns the circuit: for exporters, which know the weights but
    /// leave the worst case to the compiler.
    pub fn fit_logit_bound(&mut self, fhe: &FheParameters) -> Result<Circuit, ModelError> {
        for bound in DEFAULT_LOGIT_BOUND_LOG2..=MAX_LOGIT_BOUND_LOG2 {
            self.output.logit_bound_log2 = bound;
            match compile(self, fhe) {
                Err(ModelError::Compile(CompileError::LogitRange { .. })) => continue,
                result => return result,
            }
        }
        compile(self, fhe)
    }
}

/// Range analysis, noise and encoding for one stage.
///
/// A hidden stage takes the largest Δ with which every accumulator range, plus its noise
/// margins, fits the half torus (the padding bit stays clear). The output stage takes the
/// public logit unit instead ([`output_unit_log2`]) and needs its centred range to fit the
/// signed torus. Stage 0's Δ is a whole multiple of the public input unit
/// ([`INPUT_DELTA_LOG2`]).
fn analyse(
    index: usize,
    input_ranges: Vec<(i64, i64)>,
    forms: Vec<Affine>,
    activation: Option<StageActivation>,
    fhe: &FheParameters,
    output: &OutputSpec,
) -> Result<Stage, CompileError> {
    let logit_scale = output.logit_scale;
    let (base_variance, unit) = if index == 0 {
        (fhe.fresh_variance, 1i128 << INPUT_DELTA_LOG2)
    } else {
        (fhe.bootstrap_variance, 1)
    };
    // Hidden stages are switched before their bootstrap, the output stage before it travels
    // back compressed.
    let switch_variance = if activation.is_some() {
        fhe.keyswitch_variance + fhe.modulus_switch_variance
    } else {
        fhe.output_compression_variance()
    };
    let limit = HALF_TORUS / 2;
    let mut ranges = Vec::with_capacity(forms.len());
    for (j, form) in forms.iter().enumerate() {
        let (mut min, mut max) = (form.bias as i128, form.bias as i128);
        for &(i, w) in &form.terms {
            let (lo, hi) = input_ranges[i as usize];
            let (a, b) = (w as i128 * lo as i128, w as i128 * hi as i128);
            min += a.min(b);
            max += a.max(b);
        }
        if min < -limit || max > limit {
            return Err(CompileError::RangeOverflow {
                stage: index,
                neuron: j,
                range: max - min,
            });
        }
        ranges.push((min, max));
    }
    let widest = ranges
        .iter()
        .enumerate()
        .map(|(j, (min, max))| (max - min, j))
        .max()
        .unwrap_or((0, 0));
    let max_norm = forms.iter().map(Affine::squared_norm).fold(0.0, f64::max);
    // The noise margin for a given input gain (how much the server scales stage 0's inputs).
    let margin_for = |gain: f64| -> Result<i128, CompileError> {
        let gain = if index == 0 { gain } else { 1.0 };
        let sigma = (max_norm * base_variance * gain * gain + switch_variance).sqrt();
        let margin = (NOISE_MARGIN_SIGMAS * sigma * TORUS).ceil();
        // Written so that a NaN σ also lands here.
        if margin.is_nan() || margin >= (HALF_TORUS / 2) as f64 {
            return Err(CompileError::NoiseOverflow {
                stage: index,
                sigma,
            });
        }
        Ok(margin as i128)
    };
    let overflow = CompileError::RangeOverflow {
        stage: index,
        neuron: widest.1,
        range: widest.0,
    };
    let (delta, margin, origin) = if activation.is_some() {
        // The margin is sized for the largest gain the range allows; the Δ it leaves can only
        // be smaller, and so is the gain actually used.
        let fit = |margin: i128| (HALF_TORUS - 2 * margin) / widest.0.max(1);
        let gain_bound = (fit(margin_for(1.0)?) / unit).max(1);
        let margin = margin_for(gain_bound as f64)?;
        let delta = fit(margin) / unit * unit;
        (delta, margin, 0)
    } else {
        let delta = (logit_scale * (1u64 << output_unit_log2(output.logit_bound_log2)) as f64
            / unit as f64)
            .round() as i128
            * unit;
        let margin = margin_for((delta / unit) as f64)?;
        let lo = ranges.iter().map(|r| r.0).min().unwrap_or(0);
        let hi = ranges.iter().map(|r| r.1).max().unwrap_or(0);
        let origin = lo + (hi - lo) / 2;
        let reach = (hi - origin).max(origin - lo);
        if delta >= 1 && reach.saturating_mul(delta).saturating_add(margin) > HALF_TORUS {
            return Err(CompileError::LogitRange {
                half_width: reach as f64 * logit_scale,
                limit: (1u64 << output.logit_bound_log2) as f64,
            });
        }
        (delta, margin, origin as i64)
    };
    if delta < 1 {
        return Err(overflow);
    }
    // Only stage 0's inputs arrive in the public unit; later ones already carry this Δ.
    let input_gain = if index == 0 { (delta / unit) as u64 } else { 1 };
    let input_variance = base_variance * (input_gain as f64).powi(2);
    let neurons = forms
        .into_iter()
        .zip(ranges)
        .map(|(form, (min, max))| Neuron {
            sigma: (form.squared_norm() * input_variance + switch_variance).sqrt(),
            form,
            acc_min: min as i64,
            acc_max: max as i64,
        })
        .collect();
    Ok(Stage {
        input_ranges,
        neurons,
        delta: delta as u64,
        margin: margin as u64,
        input_gain,
        origin,
        input_sigma: input_variance.sqrt(),
        switch_sigma: switch_variance.sqrt(),
        activation,
    })
}
