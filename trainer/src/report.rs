//! What a person reads after a run: a JSON document for tools and a markdown page for people.

use serde::Serialize;

use crate::crossval::{self, CrossValidated};
use crate::encrypted::{EncryptedRun, Stability};
use crate::metrics::Scores;
use crate::pipeline::Config;
use crate::train::EpochLog;

/// One evaluated model on the test set.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub scores: Scores,
    pub bootstraps: usize,
}

/// A stage of the compiled circuit, for people.
#[derive(Clone, Debug, Serialize)]
pub struct StageSummary {
    pub bootstraps: usize,
    pub accumulator_bits: u32,
    pub max_fan_in: usize,
    pub max_sigma_positions: f64,
}

/// One `train` run.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub config: Config,
    pub bootstraps: usize,
    pub stages: Vec<StageSummary>,
    pub rows: Vec<Row>,
    /// Test images whose trainer integer outputs differ from the simulator's (must be 0).
    pub export_mismatches: usize,
    pub test_images: usize,
    pub encrypted: Option<EncryptedRun>,
    pub stability: Option<Stability>,
    /// The adult X-rays trained on too (`train --adults`), with the recipe's figures on them.
    pub adults: Option<AdultFigures>,
    /// The noisy simulation's accuracy on the validation split, by which runs are compared.
    pub validation_noisy_accuracy: f64,
    /// Bootstraps × measured single-core seconds per bootstrap ÷ threads.
    pub predicted_latency_seconds: Option<f64>,
    pub training_seconds: f64,
    pub epochs: Vec<EpochLog>,
}

/// The adult X-rays a screen also learned from, and the recipe's figures on them by
/// patient-level cross-validation (the shipped model itself trained on all of them).
#[derive(Clone, Debug, Serialize)]
pub struct AdultFigures {
    /// The folder's labels.csv.
    pub labels: String,
    /// Copies of each adult image in the training set.
    pub repeats: usize,
    /// Whether each adult class was drawn as often as the largest before repeating.
    pub balanced: bool,
    /// Whether each repeat was a new full-resolution rendering of the image's file rather
    /// than the same image.
    pub renderings: bool,
    /// How the teacher was pre-trained on PneumoniaMNIST alone first, if it was
    /// (`--adult-pretraining`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pretraining: Option<&'static str>,
    /// The float teacher's figures, then the compiled student's under TFHE's predicted noise.
    pub models: Vec<CrossValidated>,
    pub seconds: f64,
}

impl AdultFigures {
    /// The section's paragraphs, without a heading.
    pub fn markdown(&self) -> String {
        let Some(first) = self.models.first() else {
            return String::new();
        };
        format!(
            "{} adult X-rays of {} patients ({} normal, {} abnormal) from `{}`, in {} folds by \
             patient over {} seeds: each fold's model trains on PneumoniaMNIST and the other \
             folds' adults ({}, counted {} times{}{}) and calls its own fold. Each cell is \
             the mean ± standard deviation over seeds, then the Wilson 95% interval over the \
             images: with this few images the intervals are wide. Cross-validation took \
             {:.0} s.\n\n{}\n",
            first.images,
            first.patients,
            first.normal_images,
            first.abnormal_images,
            self.labels,
            first.folds,
            first.seeds.len(),
            match self.balanced {
                true => "each class drawn as often as the largest",
                false => "each image",
            },
            self.repeats,
            match self.renderings {
                true => ", each time as a new full-resolution rendering of its file",
                false => "",
            },
            self.pretraining
                .map_or_else(String::new, |p| format!("; {p}")),
            self.seconds,
            crossval::table(&self.models)
        )
    }
}

impl Stability {
    /// The section's paragraphs, without a heading.
    pub fn markdown(&self) -> String {
        let s = self;
        let mut out = format!(
            "The simulator calls an image *borderline* when any of \
                 {} noisy draws changes its class: {} of the {} test images are. Over {} draws, \
                 {} test images change class at least once; the probability shown for the \
                 exact simulation's class spreads (max − min) by {:.3} on average and {:.3} at \
                 most.\n",
            s.borderline_draws,
            s.borderline,
            s.test_images,
            s.runs,
            s.simulated_flipping,
            s.simulated_spread.0,
            s.simulated_spread.1,
        );
        if s.encrypted_images > 0 {
            out += &format!(
                "\nEncrypted {} times each, with one key: {} test images ({} of them \
                 borderline, the others spread over the split). **{} changed class between \
                 encryptions, {} of them not called borderline.** The shown probability spread \
                 by {:.3} on average and {:.3} at most.\n",
                s.runs,
                s.encrypted_images,
                s.encrypted_borderline,
                s.encrypted_flipping,
                s.encrypted_flipping_unflagged,
                s.encrypted_spread.0,
                s.encrypted_spread.1,
            );
        }
        let share = |(part, all): (usize, usize)| 100.0 * part as f64 / all.max(1) as f64;
        out += &format!(
            "\n**The borderline mark.** A client marks a result *borderline* when its shown \
             margin (top logit minus the next, as decoded) is at most the model's published \
             borderline margin, **{:.2} logits** (measured on the validation split, see \
             `hexray_model::borderline`). Over {} draws of every test image it marks {:.1}% of \
             results; of the results of images whose class changed between draws, {} of {} \
             ({:.1}%) were not marked.",
            s.borderline_margin,
            s.runs,
            share(s.simulated_marked),
            s.simulated_flipping_unmarked.0,
            s.simulated_flipping_unmarked.1,
            share(s.simulated_flipping_unmarked),
        );
        if s.encrypted_images > 0 {
            out += &format!(
                " Encrypted, it marked {:.1}% of results; of the results of images whose class \
                 changed between encryptions, {} of {} ({:.1}%) were not marked.",
                share(s.encrypted_marked),
                s.encrypted_flipping_unmarked.0,
                s.encrypted_flipping_unmarked.1,
                share(s.encrypted_flipping_unmarked),
            );
        }
        out += "\n";
        out
    }
}

/// The markdown table of `rows`.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| model | accuracy | F1 | AUC | PBS / image | confusion [true][pred] |\n|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let s = &row.scores;
        out += &format!(
            "| {} | {:.3} | {:.3} | {:.3} | {} | {:?} |\n",
            row.name, s.accuracy, s.f1, s.auc, row.bootstraps, s.confusion
        );
    }
    out
}

/// One model trained and evaluated once per seed: how far a figure moves with the seed alone.
#[derive(Clone, Debug, Serialize)]
pub struct SeedRow {
    pub name: String,
    pub bootstraps: usize,
    pub seeds: Vec<u64>,
    /// One entry per seed, in the order of `seeds`.
    pub scores: Vec<Scores>,
}

impl SeedRow {
    /// Mean and sample standard deviation (0 for a single seed) of one figure over the seeds.
    pub fn mean_sd(&self, figure: impl Fn(&Scores) -> f64) -> (f64, f64) {
        let values: Vec<f64> = self.scores.iter().map(figure).collect();
        crate::metrics::mean_sd(&values, 1)
    }

    fn cell(&self, figure: impl Fn(&Scores) -> f64) -> String {
        let (mean, sd) = self.mean_sd(figure);
        if self.scores.len() > 1 {
            format!("{mean:.3} ± {sd:.3}")
        } else {
            format!("{mean:.3}")
        }
    }
}

/// The markdown table of `rows`: mean ± standard deviation over seeds.
pub fn seed_table(rows: &[SeedRow]) -> String {
    let mut out =
        String::from("| model | accuracy | F1 | AUC | PBS / image |\n|---|---|---|---|---|\n");
    for row in rows {
        out += &format!(
            "| {} | {} | {} | {} | {} |\n",
            row.name,
            row.cell(|s| s.accuracy),
            row.cell(|s| s.f1),
            row.cell(|s| s.auc),
            row.bootstraps
        );
    }
    out
}

impl RunReport {
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "# Training report: topology `{}` ({})\n\n",
            self.config.topology.name,
            self.config.topology.spec()
        );
        out += &format!(
            "Bootstraps per image: **{}**. Training took {:.1} s. Test images: {}.\n\n",
            self.bootstraps, self.training_seconds, self.test_images
        );
        out += &table(&self.rows);
        out += &format!(
            "\nValidation accuracy of the noisy simulation (what runs are chosen by): {:.3}.\n",
            self.validation_noisy_accuracy
        );
        out += &format!(
            "\nExport check: the trainer's integer forward pass and the circuit simulator differ \
             on **{}** of {} test images.\n",
            self.export_mismatches, self.test_images
        );
        if let Some(e) = &self.encrypted {
            out += &format!(
                "\nEncrypted inference on {} test images: the decrypted class equals the exact \
                 simulation's on {}; {:.2} s per image with {} threads, {:.1} ms per bootstrap on \
                 one core.\n",
                e.labels.len(),
                e.agree_with_simulator,
                e.seconds_per_image,
                e.threads,
                e.seconds_per_bootstrap * 1e3
            );
            let c = &e.calibration;
            out += &format!(
                "The noisy simulator expected {:.1} ± {:.1} correct, and encryption gave {}. \
                 Decrypted decision margins against the simulator's {} draws per image: z-scores \
                 of mean {:.2} and standard deviation {:.2} (1.00 when the simulated noise is \
                 TFHE's).\n",
                c.expected_correct, c.expected_correct_sd, c.correct, c.draws, c.z_mean, c.z_sd
            );
        }
        if let Some(a) = &self.adults {
            out += "\n## Adults, cross-validated by patient\n\n";
            out += &a.markdown();
        }
        if let Some(s) = &self.stability {
            out += "\n## Decision stability\n\n";
            out += &s.markdown();
        }
        if let Some(latency) = self.predicted_latency_seconds {
            out += &format!("Predicted latency per image: {latency:.2} s.\n");
        }
        out += "\n## Circuit\n\n| stage | PBS | accumulator bits | max fan-in | max σ (positions) |\n|---|---|---|---|---|\n";
        for (i, s) in self.stages.iter().enumerate() {
            out += &format!(
                "| {i} | {} | {} | {} | {:.2} |\n",
                s.bootstraps, s.accumulator_bits, s.max_fan_in, s.max_sigma_positions
            );
        }
        out += "\nPlots: `curves.png` (training curves), `roc.png` (ROC curves).\n";
        out
    }
}
