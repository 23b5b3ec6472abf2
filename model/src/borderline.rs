//! The borderline margin: the shown decision margin at or below which another encryption of
//! the same image could name another class.
//!
//! TFHE's noise moves a result's logits from one encryption to the next, mostly through hidden
//! neurons whose bootstrap reads a neighbouring table entry, so a result near the decision
//! boundary can change class. A client sees one encryption's shown logits (rounded to
//! [`LOGIT_STEP`]) and nothing else, so its rule is on their margin
//! ([`Diagnosis::margin`]).
//! [`measure`] calibrates it with the noisy simulator: for each calibration image it draws
//! [`DRAWS`] encryptions, and for every ordered pair of draws asks whether the second names
//! another class than the first. Grouped by the first's shown margin, that gives the chance of
//! a class change at each margin. The borderline margin is the largest margin whose chance is
//! at least [`FLIP_RATE`]: above it, another encryption changes the class less than once in a
//! hundred times.
//!
//! It is the model owner's measurement: it needs the circuit and images. The one number it gives
//! goes into the model file and, from there, the client spec. `docs/stability.md` reports how
//! well it predicts which results change class between real encryptions.

use std::collections::BTreeMap;

use ndarray::Array3;
use rand::Rng;

use crate::circuit::Circuit;
use crate::client_spec::{Diagnosis, LOGIT_STEP};
use crate::error::ModelError;
use crate::simulate;

/// Noisy simulations per calibration image.
pub const DRAWS: usize = 100;
/// The chance of a class change, between two encryptions, that makes a result borderline.
pub const FLIP_RATE: f64 = 0.01;

/// The borderline margin of `circuit`, in shown logits, measured on `images` (the model's
/// validation split: the measurement chooses nothing, but it should see the images the model
/// will).
///
/// ```
/// use hexray_model::borderline;
/// use rand::SeedableRng;
/// # let (_, circuit) = hexray_model::testing::tiny_model();
/// let images: Vec<_> = (0..8)
///     .map(|k| ndarray::Array3::<i64>::from_elem((1, 4, 4), 30 * k))
///     .collect();
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
/// let margin = borderline::measure(&circuit, &images, &mut rng).unwrap();
/// // A margin of shown logits, which lie on the 0.25 grid.
/// assert!(margin >= 0.0 && (margin / 0.25).fract() == 0.0);
/// // There is nothing to measure on no images.
/// assert!(borderline::measure(&circuit, &[], &mut rng).is_err());
/// ```
pub fn measure(
    circuit: &Circuit,
    images: &[Array3<i64>],
    rng: &mut impl Rng,
) -> Result<f64, ModelError> {
    if images.is_empty() {
        return Err(ModelError::field(
            "images",
            "the borderline margin is measured on at least one image",
        ));
    }
    // Per shown margin, in logit steps: ordered pairs of draws, and those that changed class.
    let mut by_margin: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for image in images {
        let draws = (0..DRAWS)
            .map(|_| {
                let prediction = simulate::noisy(circuit, image.view(), rng)?;
                Ok(Diagnosis::of_prediction(circuit, &prediction))
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        for (i, first) in draws.iter().enumerate() {
            let level = (first.margin() / LOGIT_STEP).round() as u64;
            let (pairs, changes) = by_margin.entry(level).or_default();
            for (_, second) in draws.iter().enumerate().filter(|&(j, _)| j != i) {
                *pairs += 1;
                *changes += u64::from(second.class != first.class);
            }
        }
    }
    let level = by_margin
        .iter()
        .filter(|(_, &(pairs, changes))| changes as f64 >= FLIP_RATE * pairs as f64)
        .map(|(&level, _)| level)
        .max()
        .unwrap_or(0);
    Ok(level as f64 * LOGIT_STEP)
}
