//! The plaintext simulator: the circuit evaluated on clear integers.
//!
//! - **exact**: integer arithmetic and table lookups with no noise; what the encrypted engine
//!   computes when the noise happens to be zero;
//! - **noisy**: one draw of TFHE's noise where it arises: on every input ciphertext of a stage
//!   (carried through each neuron's weights, so neurons reading the same ciphertexts err
//!   together, as they do encrypted) and, before each bootstrap, the keyswitch and modulus
//!   switch's own. It predicts the spread of encrypted results.
//!
//! It touches no ciphertext, so it scores a whole test set in well under a second per thousand
//! images; the trainer uses it to predict encrypted accuracy.

use ndarray::{Array1, ArrayView3};
use rand::{Rng, RngCore};
use rand_distr::{Distribution, StandardNormal};

use crate::circuit::{Circuit, Stage};
use crate::error::ModelError;
use crate::parameters::TORUS;

/// Class scores decoded from output accumulators.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// Real output accumulators, as decrypted.
    pub accumulators: Vec<f64>,
    /// One logit per class: accumulator × the circuit's `logit_scale`, unrounded.
    pub logits: Vec<f64>,
    /// Softmax of the logits, summing to 1.
    pub probabilities: Vec<f64>,
}

impl Prediction {
    /// Decodes output accumulators into logits and softmax probabilities.
    pub fn from_accumulators(circuit: &Circuit, accumulators: Vec<f64>) -> Self {
        let logits: Vec<f64> = accumulators
            .iter()
            .map(|a| a * circuit.logit_scale)
            .collect();
        Prediction {
            accumulators,
            probabilities: softmax(&logits),
            logits,
        }
    }

    /// Index of the most probable class.
    pub fn class(&self) -> usize {
        argmax(&self.logits)
    }
}

/// Softmax probabilities of `logits`, computed stably.
pub fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

/// The index of the largest value; the first one on a tie. The one rule every part of HEXray
/// uses to name a class.
pub fn argmax(values: &[f64]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

/// Exact evaluation: no noise. What the encrypted evaluation computes, noise aside.
///
/// ```
/// use hexray_model::simulate;
/// # let (_, circuit) = hexray_model::testing::tiny_model();
/// let input = ndarray::Array3::<i64>::from_elem((1, 4, 4), 100);
/// let prediction = simulate::exact(&circuit, input.view()).unwrap();
/// assert_eq!(prediction.accumulators.len(), 2);
/// assert!(prediction.class() < 2);
/// // The same input gives the same answer: no randomness without noise.
/// assert_eq!(simulate::exact(&circuit, input.view()).unwrap(), prediction);
/// // An input of the wrong shape is refused.
/// let wrong = ndarray::Array3::<i64>::zeros((1, 3, 4));
/// assert!(simulate::exact(&circuit, wrong.view()).is_err());
/// ```
pub fn exact(circuit: &Circuit, input: ArrayView3<i64>) -> Result<Prediction, ModelError> {
    run(circuit, input, None)
}

/// Noisy evaluation: one draw of TFHE's noise at every phase.
pub fn noisy(
    circuit: &Circuit,
    input: ArrayView3<i64>,
    rng: &mut impl Rng,
) -> Result<Prediction, ModelError> {
    run(circuit, input, Some(rng))
}

fn run(
    circuit: &Circuit,
    input: ArrayView3<i64>,
    mut rng: Option<&mut dyn RngCore>,
) -> Result<Prediction, ModelError> {
    circuit.check_input(input)?;
    let shift = circuit.position_shift();
    let mut phases = |stage: &Stage, x: &[i64]| -> Vec<u64> {
        let exact = (0..stage.neurons.len()).map(|j| stage.phase(j, x));
        match rng.as_deref_mut() {
            Some(rng) => exact
                .zip(phase_noise(stage, rng))
                .map(|(phase, noise)| phase.wrapping_add(noise as i64 as u64))
                .collect(),
            None => exact.collect(),
        }
    };
    let mut x: Array1<i64> = input.iter().copied().collect();
    let (output, hidden) = circuit
        .stages
        .split_last()
        .expect("a circuit has an output stage");
    for stage in hidden {
        let xs = x.as_slice().expect("contiguous");
        x = phases(stage, xs)
            .into_iter()
            .enumerate()
            .map(|(j, phase)| stage.bootstrap(j, phase, shift))
            .collect();
    }
    let xs = x.as_slice().expect("contiguous");
    let accumulators = phases(output, xs)
        .into_iter()
        .map(|phase| output.decode(phase))
        .collect();
    Ok(Prediction::from_accumulators(circuit, accumulators))
}

/// One draw of every neuron's phase noise in `stage`, in torus units (2^64 a turn): each input
/// ciphertext's noise carried through the neuron's weights, plus the switches' own.
fn phase_noise(stage: &Stage, rng: &mut dyn RngCore) -> Vec<f64> {
    let mut gaussian = |sigma: f64| -> f64 {
        let z: f64 = StandardNormal.sample(&mut *rng);
        z * sigma * TORUS
    };
    let inputs: Vec<f64> = (0..stage.input_ranges.len())
        .map(|_| gaussian(stage.input_sigma))
        .collect();
    stage
        .neurons
        .iter()
        .map(|n| {
            let carried: f64 = n
                .form
                .terms
                .iter()
                .map(|&(i, w)| w as f64 * inputs[i as usize])
                .sum();
            carried + gaussian(stage.switch_sigma)
        })
        .collect()
}

/// The spread of the noisy simulator's outputs over many draws for one input.
#[derive(Clone, Debug, PartialEq)]
pub struct NoisySpread {
    /// Number of noisy draws simulated.
    pub runs: usize,
    /// Per output: smallest decoded accumulator seen.
    pub min: Vec<f64>,
    /// Per output: largest decoded accumulator seen.
    pub max: Vec<f64>,
    /// Draws whose predicted class differed from the exact simulation's.
    pub class_changes: usize,
}

impl NoisySpread {
    /// Whether every accumulator of `prediction` lies in its spread widened on each side by
    /// `slack` times the spread's width. An encrypted output is one more draw of the same
    /// noise, so with no slack it falls outside the range of 200 draws about once in a hundred
    /// per output; a quarter of the width on each side (about 4 standard deviations from the
    /// mean for Gaussian noise) makes that about once in 10,000, while an output of the wrong
    /// key, weights or encoding still lands far outside.
    ///
    /// ```
    /// use hexray_model::simulate::{NoisySpread, Prediction};
    ///
    /// let spread = NoisySpread { runs: 200, min: vec![-10.0], max: vec![30.0], class_changes: 0 };
    /// let at = |a: f64| Prediction { accumulators: vec![a], logits: vec![a], probabilities: vec![1.0] };
    /// assert!(spread.contains(&at(39.0), 0.25)); // 30 + 0.25 × 40 = 40
    /// assert!(!spread.contains(&at(41.0), 0.25));
    /// assert!(!spread.contains(&at(31.0), 0.0));
    /// ```
    pub fn contains(&self, prediction: &Prediction, slack: f64) -> bool {
        prediction
            .accumulators
            .iter()
            .zip(self.min.iter().zip(&self.max))
            .all(|(a, (lo, hi))| {
                let margin = slack * (hi - lo);
                *a >= lo - margin && *a <= hi + margin
            })
    }
}

/// Runs the noisy simulator `runs` times on one input and records the spread of its outputs.
pub fn spread(
    circuit: &Circuit,
    input: ArrayView3<i64>,
    runs: usize,
    rng: &mut impl Rng,
) -> Result<NoisySpread, ModelError> {
    let exact_class = exact(circuit, input)?.class();
    let n = circuit.output_len();
    let mut spread = NoisySpread {
        runs,
        min: vec![f64::INFINITY; n],
        max: vec![f64::NEG_INFINITY; n],
        class_changes: 0,
    };
    for _ in 0..runs {
        let p = noisy(circuit, input, rng)?;
        for (j, a) in p.accumulators.iter().enumerate() {
            spread.min[j] = spread.min[j].min(*a);
            spread.max[j] = spread.max[j].max(*a);
        }
        spread.class_changes += usize::from(p.class() != exact_class);
    }
    Ok(spread)
}
