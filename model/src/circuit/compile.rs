//! The compile step: network → circuit. Range analysis bounds every accumulator, and the
//! noise each phase carries sizes the margins and Δ that keep it in the half torus.

use super::linear::{self, Affine};
use super::stages::{output_unit_log2, Circuit, Neuron, Stage, StageActivation, INPUT_DELTA_LOG2};
use crate::error::{CompileError, ModelError};
use crate::network::{
    Activation, Layer, Network, OutputSpec, Shape, DEFAULT_LOGIT_BOUND_LOG2, MAX_LOGIT_BOUND_LOG2,
};
use crate::parameters::{FheParameters, TORUS};

/// Guard band in noise standard deviations. Gaussian tails put the chance of a phase leaving
/// the half torus below 2^-49 per neuron and bootstrap; far below everything else that can fail.
pub const NOISE_MARGIN_SIGMAS: f64 = 8.0;

const HALF_TORUS: i128 = 1 << 63;

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
                forms = linear::apply(
                    i,
                    linear_layer,
                    (shape, shapes[i]),
                    &forms,
                    input_ranges.len(),
                )?
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

/// Declares the smallest logit bound, from the default up, with which `network`
/// compiles for `fhe`, and returns the circuit: for exporters, which know the weights but
/// leave the worst case to the compiler.
pub fn fit_logit_bound(network: &mut Network, fhe: &FheParameters) -> Result<Circuit, ModelError> {
    for bound in DEFAULT_LOGIT_BOUND_LOG2..=MAX_LOGIT_BOUND_LOG2 {
        network.output.logit_bound_log2 = bound;
        match compile(network, fhe) {
            Err(ModelError::Compile(CompileError::LogitRange { .. })) => continue,
            result => return result,
        }
    }
    compile(network, fhe)
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
