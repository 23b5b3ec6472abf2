//! What every subcommand shares: the common options, the dataset, seeds and strong teachers,
//! and writing reports.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use hexray_crypto::params::DEFAULT_PARAMETER_SET;
use hexray_model::network::Granularity;
use hexray_model::network::{InputSpec, Intensity, Shape};
use hexray_model::Circuit;
use hexray_trainer::augment::full_resolution_copies;
use hexray_trainer::data::{load_npz, read_npz, Dataset};
use hexray_trainer::loss::Distillation;
use hexray_trainer::metrics::Scores;
use hexray_trainer::net::ActivationMode;
use hexray_trainer::net::Net;
use hexray_trainer::pipeline::{score_circuit, score_float, strong_teacher, Config};
use hexray_trainer::report::SeedRow;
use hexray_trainer::topology::Topology;
use hexray_trainer::train::{QatRecipe, Recipe, Settings, Tensors};

#[derive(Args, Clone)]
pub(crate) struct Common {
    /// The MedMNIST .npz file.
    #[arg(long, default_value = "../shared/data/pneumoniamnist.npz")]
    pub(crate) data: PathBuf,
    #[arg(long, default_value_t = 2024)]
    pub(crate) seed: u64,
    #[arg(long, default_value_t = 30)]
    pub(crate) teacher_epochs: usize,
    /// A larger ReLU network to distil every student from (a preset or a spec), or `none` for
    /// a teacher of each student's own topology. The default, `cnn6`, is the shipped recipe's
    /// (docs/ablation.md compares the two).
    #[arg(long, default_value = "cnn6")]
    pub(crate) strong_teacher: String,
    #[arg(long, default_value_t = 5)]
    pub(crate) blend_epochs: usize,
    #[arg(long, default_value_t = 20)]
    pub(crate) student_epochs: usize,
    #[arg(long, default_value_t = 10)]
    pub(crate) quantized_epochs: usize,
    /// Bits of each weight (per-channel symmetric, so at least 2: one bit is the sign).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(2..=16))]
    pub(crate) weight_bits: u8,
    /// Bits of each activation, the values a bootstrap's table outputs. More bits cost no
    /// bootstraps: 6 beat 5 on every one of three seeds (see the training report).
    #[arg(long, default_value_t = 6)]
    pub(crate) activation_bits: u8,
    /// Distillation temperature T.
    #[arg(long, default_value_t = 4.0)]
    pub(crate) temperature: f64,
    /// Distillation weight α.
    #[arg(long, default_value_t = 0.7)]
    pub(crate) alpha: f64,
    /// L2 penalty λ in every phase (Adam's coupled weight decay): the gradient of every
    /// trainable parameter (weights, biases, batch norm, the quadratics' coefficients) gains
    /// λ·θ. None by default, as every bundled model was trained.
    #[arg(long, value_parser = non_negative)]
    pub(crate) weight_decay: Option<f64>,
    /// Noisy simulation draws per test image.
    #[arg(long, default_value_t = 10, value_parser = at_least_one())]
    pub(crate) draws: usize,
    /// Per-image intensity normalisation, written into the model so the client applies it too:
    /// as-is, stretch or equalize.
    #[arg(long, default_value = "equalize", value_parser = parse_intensity)]
    pub(crate) intensity: Intensity,
    /// Full-resolution copies of each training image added to the training set (see
    /// `augment::full_resolution_copy`): each is re-rendered as a clinician's file and brought
    /// back through the client's preprocessing, so the model learns that gap.
    /// The shipped recipe uses one; 0 turns them off.
    #[arg(long, default_value_t = 1)]
    pub(crate) full_resolution_copies: usize,
    /// Hide progress bars.
    #[arg(long)]
    pub(crate) quiet: bool,
}

/// The network input: one 28×28 grayscale channel.
pub(crate) const INPUT_SHAPE: Shape = Shape::Image { c: 1, h: 28, w: 28 };

/// PneumoniaMNIST's classes, in label order.
pub(crate) const CLASSES: [&str; 2] = ["normal", "pneumonia"];

/// A count that must be positive: a table over no seeds, or a noisy score over no draws, would
/// report numbers that mean nothing.
pub(crate) fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// Parses a finite number ≥ 0, such as `--weight-decay`'s λ.
pub(crate) fn non_negative(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value >= 0.0 => Ok(value),
        _ => Err(format!("expected a finite number ≥ 0, got {text:?}")),
    }
}

/// Parses an `--intensity` value: the kebab-case names of [`Intensity`].
pub(crate) fn parse_intensity(name: &str) -> Result<Intensity, String> {
    match name {
        "as-is" => Ok(Intensity::AsIs),
        "stretch" => Ok(Intensity::Stretch),
        "equalize" => Ok(Intensity::Equalize),
        _ => Err(format!(
            "unknown intensity normalisation `{name}`; use as-is, stretch or equalize"
        )),
    }
}

impl Common {
    /// PneumoniaMNIST's 28×28 input, with this run's intensity normalisation.
    pub(crate) fn input_spec(&self) -> InputSpec {
        InputSpec::square_8bit(28, self.intensity)
    }

    pub(crate) fn distillation(&self) -> Distillation {
        Distillation {
            temperature: self.temperature,
            alpha: self.alpha,
        }
    }

    /// The shipped recipe: per-element quadratics from the teacher, distilled, quantized and
    /// noise-aware.
    pub(crate) fn shipped(&self) -> Recipe {
        Recipe {
            square: false,
            granularity: Granularity::Element,
            from_teacher: true,
            distillation: Some(self.distillation()),
            blend_epochs: self.blend_epochs,
            epochs: self.student_epochs,
            quantization: Some(QatRecipe {
                weight_bits: self.weight_bits,
                activation_bits: self.activation_bits,
                epochs: self.quantized_epochs,
                noise: true,
            }),
        }
    }

    pub(crate) fn config(
        &self,
        topology: &str,
        recipe: Recipe,
        classes: &[String],
    ) -> Result<Config> {
        let input = self.input_spec();
        let topology = Topology::parse(topology)?;
        topology.check(INPUT_SHAPE)?;
        let strong_teacher = match self.strong_teacher.as_str() {
            "none" => None,
            spec => {
                let strong = Topology::parse(spec)?;
                strong.check(INPUT_SHAPE)?;
                Some(strong)
            }
        };
        Ok(Config {
            topology,
            strong_teacher,
            recipe,
            teacher_epochs: self.teacher_epochs,
            settings: Settings {
                batch_size: 64,
                learning_rate: 2e-3,
                weight_decay: self.weight_decay,
                seed: self.seed,
                progress: !self.quiet,
            },
            input,
            classes: classes.to_vec(),
            fhe: DEFAULT_PARAMETER_SET.fhe_parameters(),
        })
    }

    /// The train, validation and test splits, and the same as tensors for the float network.
    pub(crate) fn splits_and_tensors(&self) -> Result<([Dataset; 3], [Tensors; 3])> {
        let splits = self.splits()?;
        let scale = self.input_spec().scale;
        let tensors = [0, 1, 2].map(|i| Tensors::new(&splits[i], scale));
        Ok((splits, tensors))
    }

    pub(crate) fn splits(&self) -> Result<[Dataset; 3]> {
        let spec = self.input_spec();
        let load = |split| {
            load_npz(&self.data, split, &spec).with_context(|| format!("loading {split} split"))
        };
        let mut train = load("train")?;
        if self.full_resolution_copies > 0 {
            let (images, labels) = read_npz(&self.data, "train")?;
            let copies = full_resolution_copies(
                &images,
                &labels,
                &spec,
                self.full_resolution_copies,
                self.seed,
            )?;
            train.images.extend(copies.images);
            train.labels.extend(copies.labels);
        }
        Ok([train, load("val")?, load("test")?])
    }
}

/// The calls of a float ReLU teacher and a compiled student on held-out images, as
/// [`hexray_trainer::crossval::cross_validate`] counts them: one per image for the teacher,
/// `--draws` noisy simulations per image for the student.
pub(crate) fn held_out_calls(
    teacher: &Net,
    student: &Circuit,
    held: &Dataset,
    common: &Common,
    seed: u64,
) -> Result<[Vec<Vec<Vec<f64>>>; 2]> {
    let tensors = Tensors::new(held, common.input_spec().scale);
    let (_, teacher) = score_float(teacher, ActivationMode::Relu, &tensors);
    let (_, noisy) = score_circuit(student, held, common.draws, seed)?;
    Ok([
        teacher.into_iter().map(|p| vec![p]).collect(),
        noisy.chunks(common.draws).map(<[_]>::to_vec).collect(),
    ])
}

pub(crate) fn classes() -> Vec<String> {
    CLASSES.iter().map(|c| c.to_string()).collect()
}

pub(crate) fn write(path: &Path, contents: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Parses and checks every topology before any data is loaded, so that a typo in the last of
/// several fails at once rather than after the others have trained.
pub(crate) fn check_topologies(topologies: &[String]) -> Result<()> {
    for name in topologies {
        Topology::parse(name)?.check(INPUT_SHAPE)?;
    }
    Ok(())
}

/// `common` once per seed: --seed, --seed + 1, …
pub(crate) fn with_seeds(common: &Common, seeds: usize) -> impl Iterator<Item = Common> + '_ {
    (0..seeds as u64).map(move |k| Common {
        seed: common.seed + k,
        ..common.clone()
    })
}

/// Each seed's strong teacher, when `--strong-teacher` names one: it depends on the seed and
/// not on the student, so every topology of a study shares it.
pub(crate) fn strong_teachers(
    common: &Common,
    seeds: usize,
    train: &Tensors,
    val: &Tensors,
) -> Result<Vec<Option<Net>>> {
    with_seeds(common, seeds)
        .map(|run| {
            // The student topology is irrelevant to the teacher; any valid one will do.
            let config = run.config("mlp-16", run.shipped(), &classes())?;
            Ok(strong_teacher(&config, train, val, &mut Vec::new()))
        })
        .collect()
}

/// Appends one seed's scores to `rows`, which hold one row per name in the order first seen.
pub(crate) fn add_seed(
    rows: &mut Vec<SeedRow>,
    seed: u64,
    bootstraps: usize,
    scores: Vec<(&str, Scores)>,
) {
    for (name, score) in scores {
        match rows.iter_mut().find(|r| r.name == name) {
            Some(row) => {
                row.seeds.push(seed);
                row.scores.push(score);
            }
            None => rows.push(SeedRow {
                name: name.into(),
                bootstraps,
                seeds: vec![seed],
                scores: vec![score],
            }),
        }
    }
}
