//! `hexray-trainer`: trains HE-friendly students and writes model files and reports.
//!
//! - `train`: one topology with the shipped recipe; writes the model file, a markdown and JSON
//!   report, training curves and ROC curves;
//! - `ablation`: the papers' ablation rows for several topologies, as `docs/ablation.md`;
//! - `pareto`: the shipped recipe over candidate topologies, accuracy against bootstraps;
//! - `transfer`: PneumoniaMNIST pre-training, then COVID-19 fine-tuning with patient-level
//!   cross-validation.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use hexray_crypto::params::DEFAULT_PARAMETER_SET;
use hexray_model::activation::Granularity;
use hexray_model::format::{InputSpec, Intensity, Shape};
use hexray_trainer::augment::full_resolution_copies;
use hexray_trainer::data::{
    folds, hold_out, load_folder, load_npz, read_npz, shared_patients, Dataset,
};
use hexray_trainer::encrypted;
use hexray_trainer::full_resolution;
use hexray_trainer::loss::Distillation;
use hexray_trainer::metrics::{roc_curve, Scores};
use hexray_trainer::net::{ActivationMode, Net};
use hexray_trainer::pipeline::{
    export_mismatches, score_circuit, score_float, strong_teacher, teacher, train_and_compile,
    Config,
};
use hexray_trainer::plots::{line_chart, pareto_chart, roc_chart, Series};
use hexray_trainer::report::{seed_table, table, Row, RunReport, SeedRow, StageSummary};
use hexray_trainer::topology::Topology;
use hexray_trainer::train::{EpochLog, QatRecipe, Recipe, Settings, Tensors};

#[derive(Parser)]
#[command(
    name = "hexray-trainer",
    about = "Train HE-friendly networks for HEXray"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train one topology with the shipped recipe and export its model file.
    Train {
        #[command(flatten)]
        common: Common,
        /// A preset name or a spec such as c4k7s2p1x2,d16.
        #[arg(long, default_value = "c")]
        topology: String,
        /// Directory for the model file, reports and plots.
        #[arg(long, default_value = "runs/c")]
        out: PathBuf,
        /// Also copy the model file here.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Test images to run through real encrypted inference.
        #[arg(long, default_value_t = 8)]
        encrypted_sample: usize,
        /// Test images to encrypt `--stability-runs` times each, to see whether a decision
        /// survives re-encryption (0: skip). Every image the simulator calls borderline is
        /// among them.
        #[arg(long, default_value_t = 0)]
        stability_sample: usize,
        #[arg(long, default_value_t = 20, value_parser = at_least_one())]
        stability_runs: usize,
    },
    /// The ablation table of both papers for several topologies.
    Ablation {
        #[command(flatten)]
        common: Common,
        /// Presets or specs, separated by spaces (commas separate a spec's blocks).
        #[arg(long, num_args = 1.., default_values = ["a", "b", "c"])]
        topologies: Vec<String>,
        /// Seeds per row, from --seed upward; tables show mean ± standard deviation.
        #[arg(long, default_value_t = 3, value_parser = at_least_one())]
        seeds: usize,
        /// Linear blocks (each ending in `l`) to put before every topology that starts with a
        /// dense block, for one more row: the shipped recipe with a linear front. Not with
        /// `--strong-teacher none`, as that row learns from the strong teacher.
        #[arg(long)]
        linear_front: Option<String>,
        /// The markdown document to write (a JSON twin is written beside it).
        #[arg(long, default_value = "docs/ablation.md")]
        out: PathBuf,
    },
    /// The shipped recipe over candidate topologies: accuracy against bootstraps.
    Pareto {
        #[command(flatten)]
        common: Common,
        /// Presets or specs, separated by spaces (commas separate a spec's blocks).
        #[arg(
            long,
            num_args = 1..,
            default_values = [
                "a", "c", "c-wide", "c-narrow", "c-tiny", "c-deep", "pool4", "pool4-small",
                "mlp-16", "mlp-32", "mlp-64", "mlp-64-16", "front-64",
            ]
        )]
        topologies: Vec<String>,
        /// Seeds per row, from --seed upward; tables show mean ± standard deviation.
        #[arg(long, default_value_t = 3, value_parser = at_least_one())]
        seeds: usize,
        /// The PNG to write (a markdown table is written beside it).
        #[arg(long, default_value = "docs/pareto.png")]
        out: PathBuf,
    },
    /// Decision stability of compiled models on the test split: which images the simulator
    /// calls borderline, and whether real re-encryptions change any class.
    Stability {
        /// Compiled model files, one section each.
        #[arg(long, num_args = 1.., required = true)]
        models: Vec<PathBuf>,
        /// The MedMNIST .npz file.
        #[arg(long, default_value = "../shared/data/pneumoniamnist.npz")]
        data: PathBuf,
        /// Test images to encrypt `--runs` times each, every borderline one first (0: the
        /// simulator only): one count for every model, or one per model, in order.
        #[arg(long, num_args = 1.., default_values_t = [0])]
        sample: Vec<usize>,
        #[arg(long, default_value_t = 20, value_parser = at_least_one())]
        runs: usize,
        #[arg(long, default_value = "docs/stability.md")]
        out: PathBuf,
    },
    /// Compiled models on full-resolution X-rays they never saw: agreement with MedMNIST-style
    /// copies, and how a labelled folder is called.
    FullResolution {
        /// Compiled model files, compared side by side.
        #[arg(long, num_args = 1.., required = true)]
        models: Vec<PathBuf>,
        /// The folder dataset's labels.csv (path,label[,patient_id]).
        #[arg(long, default_value = "../shared/data/covid-cxr-actualmed/labels.csv")]
        folder: PathBuf,
        /// The folder's labels; the first is the one the models call `normal`.
        #[arg(long, default_value = "normal,covid", value_delimiter = ',')]
        classes: Vec<String>,
        #[arg(long, default_value = "docs/full-resolution.md")]
        out: PathBuf,
    },
    /// Pre-train on PneumoniaMNIST, fine-tune on a COVID-19 folder dataset, cross-validated by
    /// patient.
    Transfer {
        #[command(flatten)]
        common: Common,
        /// The folder dataset's labels.csv (path,label[,patient_id]).
        #[arg(long, default_value = "../shared/data/covid-cxr-actualmed/labels.csv")]
        folder: PathBuf,
        #[arg(long, default_value = "normal,covid", value_delimiter = ',')]
        classes: Vec<String>,
        #[arg(long, default_value = "c")]
        topology: String,
        #[arg(long, default_value_t = 4)]
        folds: usize,
        #[arg(long, default_value = "docs/transfer.md")]
        out: PathBuf,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// The MedMNIST .npz file.
    #[arg(long, default_value = "../shared/data/pneumoniamnist.npz")]
    data: PathBuf,
    #[arg(long, default_value_t = 2024)]
    seed: u64,
    #[arg(long, default_value_t = 30)]
    teacher_epochs: usize,
    /// A larger ReLU network to distil every student from (a preset or a spec), or `none` for
    /// a teacher of each student's own topology. The default, `cnn6`, is the shipped recipe's
    /// (docs/ablation.md compares the two).
    #[arg(long, default_value = "cnn6")]
    strong_teacher: String,
    #[arg(long, default_value_t = 5)]
    blend_epochs: usize,
    #[arg(long, default_value_t = 20)]
    student_epochs: usize,
    #[arg(long, default_value_t = 10)]
    quantized_epochs: usize,
    /// Bits of each weight (per-channel symmetric, so at least 2: one bit is the sign).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(2..=16))]
    weight_bits: u8,
    /// Bits of each activation, the values a bootstrap's table outputs. More bits cost no
    /// bootstraps: 6 beat 5 on every one of three seeds (see the training report).
    #[arg(long, default_value_t = 6)]
    activation_bits: u8,
    /// Distillation temperature T.
    #[arg(long, default_value_t = 4.0)]
    temperature: f64,
    /// Distillation weight α.
    #[arg(long, default_value_t = 0.7)]
    alpha: f64,
    /// Noisy simulation draws per test image.
    #[arg(long, default_value_t = 10, value_parser = at_least_one())]
    draws: usize,
    /// Per-image intensity normalisation, written into the model so the client applies it too:
    /// as-is, stretch or equalize.
    #[arg(long, default_value = "equalize", value_parser = parse_intensity)]
    intensity: Intensity,
    /// Full-resolution copies of each training image added to the training set (see
    /// `augment::full_resolution_copy`): each is re-rendered as a clinician's file and brought
    /// back through the client's preprocessing, so the model learns that gap.
    /// The shipped recipe uses one; 0 turns them off.
    #[arg(long, default_value_t = 1)]
    full_resolution_copies: usize,
    /// Hide progress bars.
    #[arg(long)]
    quiet: bool,
}

/// The network input: one 28×28 grayscale channel.
const INPUT_SHAPE: Shape = Shape::Image { c: 1, h: 28, w: 28 };

/// PneumoniaMNIST's classes, in label order.
const CLASSES: [&str; 2] = ["normal", "pneumonia"];

/// A count that must be positive: a table over no seeds, or a noisy score over no draws, would
/// report numbers that mean nothing.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// Parses an `--intensity` value: the kebab-case names of [`Intensity`].
fn parse_intensity(name: &str) -> Result<Intensity, String> {
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
    fn input_spec(&self) -> InputSpec {
        InputSpec::square_8bit(28, self.intensity)
    }

    fn distillation(&self) -> Distillation {
        Distillation {
            temperature: self.temperature,
            alpha: self.alpha,
        }
    }

    /// The shipped recipe: per-element quadratics from the teacher, distilled, quantized and
    /// noise-aware.
    fn shipped(&self) -> Recipe {
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

    fn config(&self, topology: &str, recipe: Recipe, classes: &[String]) -> Result<Config> {
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
                seed: self.seed,
                progress: !self.quiet,
            },
            input,
            classes: classes.to_vec(),
            fhe: DEFAULT_PARAMETER_SET.fhe_parameters(),
        })
    }

    /// The train, validation and test splits, and the same as tensors for the float network.
    fn splits_and_tensors(&self) -> Result<([Dataset; 3], [Tensors; 3])> {
        let splits = self.splits()?;
        let scale = self.input_spec().scale;
        let tensors = [0, 1, 2].map(|i| Tensors::new(&splits[i], scale));
        Ok((splits, tensors))
    }

    fn splits(&self) -> Result<[Dataset; 3]> {
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

fn classes() -> Vec<String> {
    CLASSES.iter().map(|c| c.to_string()).collect()
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Train {
            common,
            topology,
            out,
            model,
            encrypted_sample,
            stability_sample,
            stability_runs,
        } => train(
            &common,
            &topology,
            &out,
            model.as_deref(),
            encrypted_sample,
            (stability_sample, stability_runs),
        ),
        Command::Ablation {
            common,
            topologies,
            seeds,
            linear_front,
            out,
        } => ablation(&common, &topologies, linear_front.as_deref(), seeds, &out),
        Command::Pareto {
            common,
            topologies,
            seeds,
            out,
        } => pareto(&common, &topologies, seeds, &out),
        Command::Transfer {
            common,
            folder,
            classes,
            topology,
            folds,
            out,
        } => transfer(&common, &folder, &classes, &topology, folds, &out),
        Command::Stability {
            models,
            data,
            sample,
            runs,
            out,
        } => stability(&models, &data, &sample, runs, &out),
        Command::FullResolution {
            models,
            folder,
            classes,
            out,
        } => full_resolution(&models, &folder, &classes, &out),
    }
}

fn stability(
    models: &[PathBuf],
    data: &Path,
    samples: &[usize],
    runs: usize,
    out: &Path,
) -> Result<()> {
    if samples.len() != 1 && samples.len() != models.len() {
        bail!(
            "--sample takes one count for every model or one per model: {} for {} models",
            samples.len(),
            models.len()
        );
    }
    let mut doc = String::from(
        "# Decision stability\n\nGenerated by `cargo run --release -p hexray-trainer -- \
         stability` (see the README): the PneumoniaMNIST test split through each model, the \
         same image encrypted again and again.\n",
    );
    for (k, path) in models.iter().enumerate() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (model, circuit) = hexray_model::CompiledModel::from_bytes(&bytes)
            .with_context(|| format!("loading {}", path.display()))?;
        let test = load_npz(data, "test", &model.network.input)?;
        let sample = samples[k.min(samples.len() - 1)];
        let report = encrypted::stability(&model, &test, runs, sample, true)?;
        doc += &format!(
            "\n## `{}` ({} PBS per image)\n\n{}",
            model.name,
            circuit.bootstrap_count(),
            report.markdown()
        );
    }
    write(out, &doc)?;
    println!("{doc}");
    Ok(())
}

fn full_resolution(
    models: &[PathBuf],
    folder: &Path,
    classes: &[String],
    out: &Path,
) -> Result<()> {
    let names: Vec<&str> = classes.iter().map(String::as_str).collect();
    let mut doc = format!(
        "# Full-resolution X-rays\n\nGenerated by `cargo run --release -p hexray-trainer -- \
         full-resolution` (see the README). Each of the {folder} images is read two ways and \
         classified by the compiled circuit's exact simulation: by HEXray's own preprocessing of \
         the full-resolution file, as the browser does, and from a MedMNIST-style copy (centred \
         square, bicubic to the input size), the pipeline the training images went through. \
         `agreement` is the share of images both ways call alike; the last two columns are on the \
         full-resolution path. None of these images was used in training.\n\n\
         | model | PBS | images | agreement | `{normal}` called normal | others not called normal | \
         mean abs(Δp) |\n|---|---|---|---|---|---|---|\n",
        folder = folder.display(),
        normal = names[0],
    );
    for path in models {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (model, circuit) = hexray_model::CompiledModel::from_bytes(&bytes)
            .with_context(|| format!("loading {}", path.display()))?;
        let normal = model
            .network
            .output
            .classes
            .iter()
            .position(|c| c == "normal")
            .with_context(|| format!("{} has no class named normal", path.display()))?;
        let checks = full_resolution::check_folder(folder, &names, &circuit, &model.network.input)?;
        let share =
            |hits: usize, of: usize| format!("{:.3} ({hits}/{of})", hits as f64 / of as f64);
        let count = |f: &dyn Fn(&full_resolution::FileCheck) -> bool| {
            checks.iter().filter(|c| f(c)).count()
        };
        let normals = count(&|c| c.entry.class == 0);
        let delta = checks
            .iter()
            .map(|c| (c.full.probabilities[normal] - c.copy.probabilities[normal]).abs())
            .sum::<f64>()
            / checks.len() as f64;
        doc += &format!(
            "| {} | {} | {} | {} | {} | {} | {delta:.3} |\n",
            model.name,
            circuit.bootstrap_count(),
            checks.len(),
            share(count(&|c| c.agrees()), checks.len()),
            share(
                count(&|c| c.entry.class == 0 && c.full.class() == normal),
                normals
            ),
            share(
                count(&|c| c.entry.class != 0 && c.full.class() != normal),
                checks.len() - normals
            ),
        );
    }
    write(out, &doc)?;
    println!("{doc}");
    Ok(())
}

fn write(path: &Path, contents: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// The training curves of one run: loss and validation accuracy per epoch.
fn curves(path: &Path, epochs: &[EpochLog]) -> Result<()> {
    let series = |name: &str, f: fn(&EpochLog) -> f64| Series {
        name: name.into(),
        points: epochs.iter().map(|e| (e.epoch as f64, f(e))).collect(),
    };
    line_chart(
        path,
        "Training: teacher, replacement, student, quantized",
        "epoch (all phases)",
        "loss / accuracy",
        &[
            series("training loss", |e| e.loss),
            series("validation accuracy", |e| e.validation_accuracy),
        ],
    )?;
    Ok(())
}

fn train(
    common: &Common,
    topology: &str,
    out: &Path,
    model_copy: Option<&Path>,
    sample: usize,
    (stability_sample, stability_runs): (usize, usize),
) -> Result<()> {
    let config = common.config(topology, common.shipped(), &classes())?;
    let ([_, val, test], [tr, va, te]) = common.splits_and_tensors()?;
    let start = Instant::now();
    let mut log = Vec::new();
    let teacher_net = teacher(None, &config, &tr, &va, &mut log);
    let strong = strong_teacher(&config, &tr, &va, &mut log);
    let distilled_from = match &config.strong_teacher {
        Some(strong) => format!("a larger ReLU CNN ({})", strong.spec()),
        None => "a ReLU teacher of its own topology".to_owned(),
    };
    let description = format!(
        "Pneumonia vs normal on 28×28 chest X-rays. Topology {} ({}); per-element quadratic \
         student distilled from {distilled_from}, quantization- and noise-aware. Trained on \
         PneumoniaMNIST (CC BY 4.0) by `hexray-trainer train`.",
        config.topology.name,
        config.topology.spec()
    );
    let name = format!("pneumonia-{}", config.topology.name);
    let student = train_and_compile(
        &config,
        &teacher_net,
        strong.as_ref(),
        &tr,
        &va,
        &mut log,
        &name,
        &description,
    )?;
    let training_seconds = start.elapsed().as_secs_f64();
    let (quantized, model, circuit) = student.quantized.expect("the shipped recipe quantizes");
    let bootstraps = circuit.bootstrap_count();

    let (teacher_scores, teacher_p) = score_float(&teacher_net, ActivationMode::Relu, &te);
    let (student_scores, student_p) = score_float(&student.float, ActivationMode::Quadratic, &te);
    let (exact, _) = score_circuit(&circuit, &test, 0, common.seed)?;
    let (noisy, noisy_p) = score_circuit(&circuit, &test, common.draws, common.seed)?;
    let mismatches =
        export_mismatches(&quantized, &config.input, &config.classes, &circuit, &test)?;
    if mismatches > 0 {
        bail!("export check failed: {mismatches} test images differ between the trainer and the simulator");
    }
    let row = |name: &str, scores: Scores| Row {
        name: name.into(),
        scores,
        bootstraps,
    };
    let aucs = [teacher_scores.auc, student_scores.auc, noisy.auc];
    let mut rows = vec![row("ReLU teacher (float)", teacher_scores)];
    if let Some(strong) = &strong {
        rows.push(Row {
            name: "strong ReLU teacher, distilled from (float)".into(),
            scores: score_float(strong, ActivationMode::Relu, &te).0,
            bootstraps: strong.topology.bootstraps(INPUT_SHAPE),
        });
    }
    rows.extend([
        row("quadratic student (float)", student_scores),
        row("quantized student (exact simulation)", exact),
        row(
            &format!(
                "quantized student (noisy simulation, {} draws)",
                common.draws
            ),
            noisy,
        ),
    ]);
    let encrypted = match sample {
        0 => None,
        n => {
            let run = encrypted::run(&model, &test, n, !common.quiet)?;
            rows.push(row(
                &format!("encrypted ({} test images)", run.labels.len()),
                Scores::new(&run.probabilities, &run.labels),
            ));
            Some(run)
        }
    };
    let report = RunReport {
        predicted_latency_seconds: encrypted
            .as_ref()
            .map(|e| bootstraps as f64 * e.seconds_per_bootstrap / e.threads as f64),
        config,
        bootstraps,
        stages: circuit
            .report()
            .iter()
            .map(|s| StageSummary {
                bootstraps: s.bootstraps,
                accumulator_bits: s.accumulator_bits,
                max_fan_in: s.max_fan_in,
                max_sigma_positions: s.max_sigma_positions,
            })
            .collect(),
        rows,
        export_mismatches: mismatches,
        test_images: test.len(),
        encrypted,
        stability: match stability_sample {
            0 => None,
            n => Some(encrypted::stability(
                &model,
                &test,
                stability_runs,
                n,
                !common.quiet,
            )?),
        },
        validation_noisy_accuracy: score_circuit(&circuit, &val, common.draws, common.seed)?
            .0
            .accuracy,
        training_seconds,
        epochs: log,
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let model_path = out.join("model.hexray");
    std::fs::write(&model_path, model.to_bytes())
        .with_context(|| format!("writing {}", model_path.display()))?;
    if let Some(copy) = model_copy {
        std::fs::write(copy, model.to_bytes())
            .with_context(|| format!("writing {}", copy.display()))?;
    }
    write(&out.join("report.md"), &report.markdown())?;
    write(
        &out.join("report.json"),
        &serde_json::to_string_pretty(&report)?,
    )?;
    curves(&out.join("curves.png"), &report.epochs)?;
    let positive = |p: &[Vec<f64>]| p.iter().map(|p| p[1]).collect::<Vec<_>>();
    let truth = |labels: &[usize], repeat: usize| {
        labels
            .iter()
            .flat_map(|&l| std::iter::repeat_n(l == 1, repeat))
            .collect::<Vec<_>>()
    };
    let curve = |name: &str, p: &[Vec<f64>], repeat: usize, auc: f64| {
        (
            name.to_owned(),
            auc,
            roc_curve(&positive(p), &truth(&test.labels, repeat)),
        )
    };
    roc_chart(
        &out.join("roc.png"),
        "ROC on the PneumoniaMNIST test split",
        &[
            curve("ReLU teacher", &teacher_p, 1, aucs[0]),
            curve("float student", &student_p, 1, aucs[1]),
            curve("noisy simulation", &noisy_p, common.draws, aucs[2]),
        ],
    )?;
    println!("{}", report.markdown());
    println!("wrote {}", out.display());
    Ok(())
}

/// The ablation rows, each one switch away from the previous.
fn ablation_recipes(common: &Common) -> Vec<(&'static str, Recipe)> {
    let kd = Some(common.distillation());
    let base = Recipe {
        square: false,
        granularity: Granularity::Layer,
        from_teacher: true,
        distillation: None,
        blend_epochs: common.blend_epochs,
        epochs: common.student_epochs,
        quantization: None,
    };
    vec![
        (
            "x², no training tricks",
            Recipe {
                square: true,
                from_teacher: false,
                blend_epochs: 0,
                epochs: common.blend_epochs + common.student_epochs,
                ..base.clone()
            },
        ),
        ("quadratic per layer, no KD", base.clone()),
        (
            "quadratic per layer, KD",
            Recipe {
                distillation: kd,
                ..base.clone()
            },
        ),
        (
            "quadratic per channel, KD",
            Recipe {
                distillation: kd,
                granularity: Granularity::Channel,
                ..base.clone()
            },
        ),
        (
            "quadratic per element, KD",
            Recipe {
                distillation: kd,
                granularity: Granularity::Element,
                ..base.clone()
            },
        ),
        (
            "per element, KD, quantized + noise-aware (shipped; noisy simulation)",
            common.shipped(),
        ),
    ]
}

/// Parses and checks every topology before any data is loaded, so that a typo in the last of
/// several fails at once rather than after the others have trained.
fn check_topologies(topologies: &[String]) -> Result<()> {
    for name in topologies {
        Topology::parse(name)?.check(INPUT_SHAPE)?;
    }
    Ok(())
}

/// `topology` with `front` (linear blocks) before it, when both are given and the topology
/// starts with a dense block, which a front must end in.
fn fronted(front: Option<&str>, topology: &str) -> Option<String> {
    let spec = Topology::parse(topology).ok()?.spec();
    spec.starts_with('d')
        .then(|| front.map(|front| format!("{front},{spec}")))
        .flatten()
}

fn ablation(
    common: &Common,
    topologies: &[String],
    linear_front: Option<&str>,
    seeds: usize,
    out: &Path,
) -> Result<()> {
    check_topologies(topologies)?;
    for name in topologies {
        if let Some(front) = fronted(linear_front, name) {
            check_topologies(&[front])?;
        }
    }
    let ([_, _, test], [tr, va, te]) = common.splits_and_tensors()?;
    let mut doc = format!(
        "# Ablation on the PneumoniaMNIST test split\n\n\
         Generated by `cargo run --release -p hexray-trainer -- ablation` (see the README); do not \
         edit by hand. Each row changes one switch of the method. Float rows are plaintext; rows \
         marked `noisy` are the compiled integer circuit under TFHE's predicted noise (noisy \
         simulation, averaged over draws), which is what encrypted inference gives. The papers' \
         rows learn from a ReLU teacher of the student's own topology. Unless \
         `--strong-teacher none`, the rows after them add the levers beyond the papers: the shipped recipe distilled \
         from a larger CNN, and (with `--linear-front`, for topologies that start with a dense \
         block) the same with linear layers before the first activation, which cost no \
         bootstrap. Every cell is the mean ± standard deviation over {seeds} seeds (teacher and student both \
         retrained), because PneumoniaMNIST's test split is shifted from its validation split \
         and single runs move by several points.\n\n",
    );
    let mut json = Vec::new();
    let strong = strong_teachers(common, seeds, &tr, &va)?;
    for name in topologies {
        let start = Instant::now();
        let mut rows: Vec<SeedRow> = Vec::new();
        for (run, strong) in with_seeds(common, seeds).zip(&strong) {
            let shipped = run.config(name, run.shipped(), &classes())?;
            let mut log = Vec::new();
            let teacher_net = teacher(None, &shipped, &tr, &va, &mut log);
            let noisy = |circuit: &hexray_model::Circuit| {
                Ok::<_, anyhow::Error>(score_circuit(circuit, &test, run.draws, run.seed)?.0)
            };
            let mut scores = vec![(
                "ReLU teacher".to_owned(),
                score_float(&teacher_net, ActivationMode::Relu, &te).0,
            )];
            // Every row of the papers' method learns from the teacher of its own topology.
            for (label, recipe) in ablation_recipes(&run) {
                let config = Config {
                    recipe,
                    ..shipped.clone()
                };
                let student = train_and_compile(
                    &config,
                    &teacher_net,
                    None,
                    &tr,
                    &va,
                    &mut log,
                    name,
                    "ablation",
                )?;
                scores.push((
                    label.to_owned(),
                    match &student.quantized {
                        Some((_, _, circuit)) => noisy(circuit)?,
                        None => score_float(&student.float, ActivationMode::Quadratic, &te).0,
                    },
                ));
            }
            // Then the levers beyond the papers: a stronger teacher, and a linear front.
            if let (Some(strong), Some(spec)) = (strong, &shipped.strong_teacher) {
                scores.push((
                    format!("strong ReLU teacher ({})", spec.name),
                    score_float(strong, ActivationMode::Relu, &te).0,
                ));
                // The shipped recipe from `own` (the student's starting point), distilled from
                // the strong teacher, scored under noise.
                let distilled = |config: &Config, own: &Net, log: &mut Vec<EpochLog>| {
                    let student = train_and_compile(
                        config,
                        own,
                        Some(strong),
                        &tr,
                        &va,
                        log,
                        name,
                        "ablation",
                    )?;
                    noisy(&student.quantized.expect("the shipped recipe quantizes").2)
                };
                scores.push((
                    format!(
                        "shipped, distilled from the strong teacher ({}; noisy)",
                        spec.name
                    ),
                    distilled(&shipped, &teacher_net, &mut log)?,
                ));
                if let Some(front) = fronted(linear_front, name) {
                    let config = run.config(&front, run.shipped(), &classes())?;
                    let own = teacher(None, &config, &tr, &va, &mut log);
                    scores.push((
                        format!(
                            "shipped, strong teacher, linear front `{}` (noisy)",
                            linear_front.unwrap_or_default()
                        ),
                        distilled(&config, &own, &mut log)?,
                    ));
                }
            }
            let scores = scores
                .iter()
                .map(|(l, s)| (l.as_str(), s.clone()))
                .collect();
            add_seed(
                &mut rows,
                run.seed,
                shipped.topology.bootstraps(INPUT_SHAPE),
                scores,
            );
        }
        let spec = Topology::parse(name)?.spec();
        doc += &format!(
            "## Topology `{name}` ({spec}), {} PBS per image\n\n{}\nTrained in {:.0} s.\n\n",
            rows[0].bootstraps,
            seed_table(&rows),
            start.elapsed().as_secs_f64()
        );
        json.push(serde_json::json!({"topology": name, "spec": spec, "rows": rows}));
    }
    write(out, &doc)?;
    write(
        &out.with_extension("json"),
        &serde_json::to_string_pretty(&json)?,
    )?;
    println!("{doc}");
    Ok(())
}

/// `common` once per seed: --seed, --seed + 1, …
fn with_seeds(common: &Common, seeds: usize) -> impl Iterator<Item = Common> + '_ {
    (0..seeds as u64).map(move |k| Common {
        seed: common.seed + k,
        ..common.clone()
    })
}

/// Each seed's strong teacher, when `--strong-teacher` names one: it depends on the seed and
/// not on the student, so every topology of a study shares it.
fn strong_teachers(
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
fn add_seed(rows: &mut Vec<SeedRow>, seed: u64, bootstraps: usize, scores: Vec<(&str, Scores)>) {
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

fn pareto(common: &Common, topologies: &[String], seeds: usize, out: &Path) -> Result<()> {
    check_topologies(topologies)?;
    let ([_, val, test], [tr, va, te]) = common.splits_and_tensors()?;
    let mut points = Vec::new();
    let strong = strong_teachers(common, seeds, &tr, &va)?;
    let mut doc = format!(
        "# Accuracy against bootstraps\n\nGenerated by `cargo run --release -p hexray-trainer -- \
         pareto` (see the README). Every topology is trained with the shipped recipe on {seeds} \
         seeds; each cell is the mean ± standard deviation over them, on the PneumoniaMNIST test \
         split. `noisy` is the compiled circuit under TFHE's predicted noise, what encrypted \
         inference gives; the plot shows its mean. `val` is the same on the validation split, \
         by which a model is chosen; `teacher` is the network each student was distilled from \
         (a trailing `l` in a spec marks a linear block, with no activation).\n\n\
         | topology | spec | PBS | teacher | val (noisy) | exact | noisy |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for name in topologies {
        let mut rows = Vec::new();
        for (run, strong) in with_seeds(common, seeds).zip(&strong) {
            let config = run.config(name, run.shipped(), &classes())?;
            let mut log = Vec::new();
            let teacher_net = teacher(None, &config, &tr, &va, &mut log);
            let teacher_scores = score_float(
                strong.as_ref().unwrap_or(&teacher_net),
                ActivationMode::Relu,
                &te,
            )
            .0;
            let student = train_and_compile(
                &config,
                &teacher_net,
                strong.as_ref(),
                &tr,
                &va,
                &mut log,
                name,
                "pareto",
            )?;
            let (_, _, circuit) = student.quantized.expect("the shipped recipe quantizes");
            let scores = vec![
                ("teacher", teacher_scores),
                ("val", score_circuit(&circuit, &val, run.draws, run.seed)?.0),
                ("exact", score_circuit(&circuit, &test, 0, run.seed)?.0),
                (
                    "noisy",
                    score_circuit(&circuit, &test, run.draws, run.seed)?.0,
                ),
            ];
            add_seed(&mut rows, run.seed, circuit.bootstrap_count(), scores);
        }
        let accuracy = |row: &SeedRow| {
            let (mean, sd) = row.mean_sd(|s| s.accuracy);
            format!("{mean:.3} ± {sd:.3}")
        };
        let pbs = rows[0].bootstraps;
        doc += &format!(
            "| {name} | {} | {pbs} | {} | {} | {} | {} |\n",
            Topology::parse(name)?.spec(),
            accuracy(&rows[0]),
            accuracy(&rows[1]),
            accuracy(&rows[2]),
            accuracy(&rows[3]),
        );
        points.push((name.clone(), pbs as f64, rows[3].mean_sd(|s| s.accuracy).0));
        // Written after every topology, so that a long study shows its rows as they come.
        write(&out.with_extension("md"), &doc)?;
    }
    pareto_chart(
        out,
        "Noisy-simulation accuracy (mean over seeds) against bootstraps per image",
        &points,
        Some(0.87),
    )?;
    println!("{doc}");
    Ok(())
}

fn transfer(
    common: &Common,
    folder: &Path,
    class_names: &[String],
    topology: &str,
    k: usize,
    out: &Path,
) -> Result<()> {
    let names: Vec<&str> = class_names.iter().map(String::as_str).collect();
    let covid = load_folder(folder, &names, &common.input_spec())
        .with_context(|| format!("loading {}", folder.display()))?;
    let splits = folds(&covid, k, common.seed)?;
    if !shared_patients(&covid, &splits).is_empty() {
        bail!("a patient appears in two folds");
    }
    let [train, val, _] = common.splits()?;
    let scale = common.input_spec().scale;
    let config = common.config(topology, common.shipped(), class_names)?;
    let mut log = Vec::new();
    eprintln!("pre-training the teacher on PneumoniaMNIST...");
    let pretrained = teacher(
        None,
        &config,
        &Tensors::new(&train, scale),
        &Tensors::new(&val, scale),
        &mut log,
    );

    let mut pooled: [(Vec<Vec<f64>>, Vec<usize>); 2] = Default::default();
    let mut doc = format!(
        "# Transfer to COVID-19 chest X-rays\n\nGenerated by `cargo run --release -p \
         hexray-trainer -- transfer`. {} images of {} patients, {k} folds split by patient. \
         Each fold fine-tunes the PneumoniaMNIST teacher on the other folds (choosing checkpoints \
         on a held-out part of their patients), distils the shipped \
         student from it and scores the compiled circuit (noisy simulation) on the held-out \
         fold; a baseline trains the same recipe without pre-training.\n\n\
         | fold | test images | pre-trained accuracy | from scratch accuracy |\n|---|---|---|---|\n",
        covid.len(),
        covid.patients.as_ref().map_or(covid.len(), |p| p.iter().collect::<std::collections::BTreeSet<_>>().len()),
    );
    for (f, held_out) in splits.iter().enumerate() {
        let rest: Vec<usize> = (0..covid.len()).filter(|i| !held_out.contains(i)).collect();
        // Checkpoints are chosen on patients held out of the training folds, never on the
        // images trained on (nor on the test fold).
        let (fit_on, choose_on) = hold_out(&covid, &rest, (k - 1).max(2), common.seed)?;
        let fold_train = Tensors::new(&covid.subset(&fit_on), scale);
        let fold_val = Tensors::new(&covid.subset(&choose_on), scale);
        let fold_test = covid.subset(held_out);
        let mut accuracies = Vec::new();
        for (slot, start) in [Some(&pretrained), None].into_iter().enumerate() {
            let fine_tuned = teacher(
                start.map(Net::independent_copy),
                &config,
                &fold_train,
                &fold_val,
                &mut log,
            );
            let student = train_and_compile(
                &config,
                &fine_tuned,
                None,
                &fold_train,
                &fold_val,
                &mut log,
                "covid",
                "transfer",
            )?;
            let (_, _, circuit) = student.quantized.expect("the shipped recipe quantizes");
            let (scores, p) = score_circuit(&circuit, &fold_test, common.draws, common.seed)?;
            accuracies.push(scores.accuracy);
            pooled[slot].0.extend(p);
            pooled[slot].1.extend(
                fold_test
                    .labels
                    .iter()
                    .flat_map(|&l| std::iter::repeat_n(l, common.draws)),
            );
        }
        doc += &format!(
            "| {f} | {} | {:.3} | {:.3} |\n",
            held_out.len(),
            accuracies[0],
            accuracies[1]
        );
    }
    let rows: Vec<Row> = ["pre-trained on PneumoniaMNIST", "from scratch"]
        .iter()
        .zip(&pooled)
        .map(|(name, (p, labels))| Row {
            name: (*name).into(),
            scores: Scores::new(p, labels),
            bootstraps: config.topology.bootstraps(INPUT_SHAPE),
        })
        .collect();
    doc += &format!("\nPooled over the held-out folds:\n\n{}", table(&rows));
    write(out, &doc)?;
    println!("{doc}");
    Ok(())
}
