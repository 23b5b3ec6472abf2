//! Patient-level cross-validation on a small labelled set, such as the 44 adult X-rays: each
//! seed deals the patients into folds, every fold is held out once from a model trained
//! without it, and the held-out calls are counted as a screen's figures. *Sensitivity* is the
//! share of abnormal images (every class but the first) not called normal; *specificity* the
//! share of normal images (class 0) called normal.
//!
//! A small set makes wide intervals, so every figure comes with its Wilson 95% interval, taken
//! over the set's images (not over seeds × draws, which are not independent of each other), and
//! the per-seed figures give the mean ± standard deviation that shows how far the seed alone
//! moves it.

use std::collections::BTreeSet;

use hexray_model::simulate::argmax;
use serde::Serialize;

use crate::data::{folds, shared_patients, DataError, Dataset};
use crate::metrics::mean_sd;

/// How one model called the held-out images of one seed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SeedCalls {
    pub seed: u64,
    /// Calls of abnormal images that were not "normal", and all calls of abnormal images.
    pub abnormal_flagged: (usize, usize),
    /// Calls of normal images that were "normal", and all calls of normal images.
    pub normal_cleared: (usize, usize),
}

impl SeedCalls {
    pub fn sensitivity(&self) -> f64 {
        share(self.abnormal_flagged)
    }

    pub fn specificity(&self) -> f64 {
        share(self.normal_cleared)
    }

    /// The share of all calls that were right.
    pub fn accuracy(&self) -> f64 {
        share((
            self.abnormal_flagged.0 + self.normal_cleared.0,
            self.abnormal_flagged.1 + self.normal_cleared.1,
        ))
    }
}

/// One model's cross-validated figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CrossValidated {
    pub model: String,
    pub folds: usize,
    pub images: usize,
    pub patients: usize,
    pub normal_images: usize,
    pub abnormal_images: usize,
    pub seeds: Vec<SeedCalls>,
}

impl CrossValidated {
    /// Mean and sample standard deviation over seeds.
    pub fn sensitivity(&self) -> (f64, f64) {
        self.over_seeds(SeedCalls::sensitivity)
    }

    /// Mean and sample standard deviation over seeds.
    pub fn specificity(&self) -> (f64, f64) {
        self.over_seeds(SeedCalls::specificity)
    }

    /// Mean and sample standard deviation over seeds.
    pub fn accuracy(&self) -> (f64, f64) {
        self.over_seeds(SeedCalls::accuracy)
    }

    /// Wilson 95% interval of the mean sensitivity, over the abnormal images.
    pub fn sensitivity_interval(&self) -> (f64, f64) {
        wilson(self.sensitivity().0, self.abnormal_images)
    }

    /// Wilson 95% interval of the mean specificity, over the normal images.
    pub fn specificity_interval(&self) -> (f64, f64) {
        wilson(self.specificity().0, self.normal_images)
    }

    fn over_seeds(&self, figure: fn(&SeedCalls) -> f64) -> (f64, f64) {
        let values: Vec<f64> = self.seeds.iter().map(figure).collect();
        mean_sd(&values, 1)
    }

    /// A markdown cell: `mean ± sd [low, high]`.
    pub fn sensitivity_cell(&self) -> String {
        cell(self.sensitivity(), self.sensitivity_interval())
    }

    /// A markdown cell: `mean ± sd [low, high]`.
    pub fn specificity_cell(&self) -> String {
        cell(self.specificity(), self.specificity_interval())
    }
}

fn cell((mean, sd): (f64, f64), (low, high): (f64, f64)) -> String {
    format!("{mean:.3} ± {sd:.3} [{low:.2}, {high:.2}]")
}

fn share((part, all): (usize, usize)) -> f64 {
    part as f64 / all.max(1) as f64
}

/// The Wilson score 95% interval of a proportion `p` observed on `n` items; (0, 1) for none.
///
/// ```
/// let (low, high) = hexray_trainer::crossval::wilson(24.0 / 26.0, 26);
/// assert!((low - 0.759).abs() < 1e-3 && (high - 0.979).abs() < 1e-3);
/// ```
pub fn wilson(p: f64, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (n, z) = (n as f64, 1.959_963_984_540_054);
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// What one fold's training returns for each model it made: the model's name and, for every
/// held-out image in order, one or more calls' class probabilities (several for noisy draws).
pub type FoldCalls = Vec<(String, Vec<Vec<Vec<f64>>>)>;

/// Cross-validates by patient: for each seed, `k` patient folds of `data`; `train` gets the
/// seed, the training indices and the held-out indices, and returns its models' calls on the
/// held-out images. Models are reported in the order the first fold returned them.
pub fn cross_validate<E: From<DataError>>(
    data: &Dataset,
    k: usize,
    seeds: &[u64],
    mut train: impl FnMut(u64, &[usize], &[usize]) -> Result<FoldCalls, E>,
) -> Result<Vec<CrossValidated>, E> {
    let patients = data
        .patients
        .as_ref()
        .map_or(data.len(), |p| p.iter().collect::<BTreeSet<_>>().len());
    let mut models: Vec<CrossValidated> = Vec::new();
    for &seed in seeds {
        let split = folds(data, k, seed)?;
        let shared = shared_patients(data, &split);
        if !shared.is_empty() {
            return Err(DataError::Split(format!("patients in two folds: {shared:?}")).into());
        }
        for held_out in &split {
            let fit_on: Vec<usize> = (0..data.len()).filter(|i| !held_out.contains(i)).collect();
            for (name, calls) in train(seed, &fit_on, held_out)? {
                let model = match models.iter().position(|m| m.model == name) {
                    Some(m) => &mut models[m],
                    None => {
                        models.push(CrossValidated {
                            model: name,
                            folds: k,
                            images: data.len(),
                            patients,
                            normal_images: data.labels.iter().filter(|&&l| l == 0).count(),
                            abnormal_images: data.labels.iter().filter(|&&l| l != 0).count(),
                            seeds: Vec::new(),
                        });
                        models.last_mut().expect("just pushed")
                    }
                };
                if model.seeds.last().is_none_or(|s| s.seed != seed) {
                    model.seeds.push(SeedCalls {
                        seed,
                        abnormal_flagged: (0, 0),
                        normal_cleared: (0, 0),
                    });
                }
                let tally = model.seeds.last_mut().expect("just pushed");
                for (&i, image_calls) in held_out.iter().zip(&calls) {
                    for p in image_calls {
                        let called_normal = argmax(p) == 0;
                        let (hit, all) = match data.labels[i] {
                            0 => (called_normal, &mut tally.normal_cleared),
                            _ => (!called_normal, &mut tally.abnormal_flagged),
                        };
                        all.0 += usize::from(hit);
                        all.1 += 1;
                    }
                }
            }
        }
    }
    Ok(models)
}

/// The markdown table of cross-validated models.
pub fn table(models: &[CrossValidated]) -> String {
    let mut out = String::from(
        "| model | abnormal not called normal (sensitivity) | normal called normal (specificity) |\n|---|---|---|\n",
    );
    for m in models {
        out += &format!(
            "| {} | {} | {} |\n",
            m.model,
            m.sensitivity_cell(),
            m.specificity_cell()
        );
    }
    out
}
