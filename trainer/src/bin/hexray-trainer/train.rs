//! `train`: one topology with the shipped recipe; the model file, its report and curves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hexray_model::network::InputSpec;
use hexray_trainer::adults::AdultImages;
use hexray_trainer::crossval::{cross_validate, CrossValidated};
use hexray_trainer::data::{hold_out, Dataset};
use hexray_trainer::encrypted;
use hexray_trainer::metrics::{roc_curve, Scores};
use hexray_trainer::net::{ActivationMode, Net};
use hexray_trainer::pipeline::{
    export_mismatches, score_circuit, score_float, strong_teacher, teacher, train_and_compile,
    Config, Lesson, Student,
};
use hexray_trainer::plots::{line_chart, roc_chart, Series};
use hexray_trainer::report::{AdultFigures, Row, RunReport, StageSummary};
use hexray_trainer::train::{EpochLog, Settings, Tensors};

use crate::common::*;

/// `text` with its first letter capitalised: a description starts as a sentence does, even
/// when its first class name ("normal") is lower-case.
fn sentence_case(text: &str) -> String {
    let mut letters = text.chars();
    letters.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(letters).collect()
    })
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

/// Where a screen's teacher starts (`train --adult-pretraining`).
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub(crate) enum Pretraining {
    /// From scratch, on both populations at once (the shipped recipe).
    None,
    /// Pre-trained on PneumoniaMNIST alone, then trained whole on both populations.
    FineTune,
    /// Pre-trained on PneumoniaMNIST alone, then only its output layer trains on both (and, in
    /// the student, which keeps the freeze, its quadratics): the children's features, a head
    /// for both populations.
    FrozenFront,
}

impl Pretraining {
    /// The teacher to start from, trained with `config`'s seed on `train`, PneumoniaMNIST's
    /// training split, with checkpoints chosen on `val`, its validation split; `None` for a
    /// teacher from scratch.
    fn start(self, config: &Config, [train, val]: [&Dataset; 2]) -> Option<Net> {
        let scale = config.input.scale;
        let pretrained = || {
            let (tr, va) = (Tensors::new(train, scale), Tensors::new(val, scale));
            teacher(None, config, &tr, &va, &mut Vec::new())
        };
        match self {
            Pretraining::None => None,
            Pretraining::FineTune => Some(pretrained()),
            Pretraining::FrozenFront => Some(pretrained().with_frozen_front()),
        }
    }

    /// A copy of [`Pretraining::start`] for `config`'s seed, pre-trained the first time a seed
    /// is asked for and kept in `made`: pre-training depends on the seed alone, so the folds of
    /// one seed and the model file (whose seed is the first fold's) share it.
    fn start_for_seed(
        self,
        made: &mut BTreeMap<u64, Option<Net>>,
        config: &Config,
        pediatric: [&Dataset; 2],
    ) -> Option<Net> {
        made.entry(config.settings.seed)
            .or_insert_with(|| self.start(config, pediatric))
            .as_ref()
            .map(Net::independent_copy)
    }

    /// How a model file's description and report say it was trained, if it was pre-trained.
    fn phrase(self) -> Option<&'static str> {
        match self {
            Pretraining::None => None,
            Pretraining::FineTune => Some("after pre-training on PneumoniaMNIST alone"),
            Pretraining::FrozenFront => {
                Some("after pre-training on PneumoniaMNIST alone, with that front frozen")
            }
        }
    }
}

/// The adult X-rays a screen also learns from (`train --adults`), and how its figures on them
/// are cross-validated.
pub(crate) struct Adults {
    /// The folder dataset's labels.csv (path,label,patient_id).
    pub(crate) labels: PathBuf,
    /// The folder's labels, normal first: every other label is abnormal (class 1).
    pub(crate) classes: Vec<String>,
    /// Copies of each adult image in the training set, so that 44 images weigh beside
    /// thousands of children's.
    pub(crate) repeats: usize,
    /// Draw each adult class as often as the largest before repeating.
    pub(crate) balance: bool,
    /// Make each repeat a new full-resolution rendering of the image's file
    /// ([`AdultImages::repeated`]) rather than the same 28×28 image again.
    pub(crate) renderings: bool,
    /// Hold a quarter of the adult patients out of training to choose checkpoints on, beside
    /// PneumoniaMNIST's validation split, so that validation speaks for both populations.
    pub(crate) validate: bool,
    pub(crate) folds: usize,
    pub(crate) seeds: usize,
    pub(crate) pretraining: Pretraining,
}

impl Adults {
    /// Reads the adult folder: every label but the first is abnormal, class 1 of a two-class
    /// screen.
    fn load(&self, spec: &InputSpec) -> Result<AdultImages> {
        let labels: Vec<&str> = self.classes.iter().map(String::as_str).collect();
        let adults = AdultImages::load(&self.labels, &labels, spec, self.renderings)
            .with_context(|| format!("loading {}", self.labels.display()))?;
        Ok(adults.abnormal_as_one())
    }

    /// `train` with the adults at `indices` added as the recipe weighs them: class-balanced or
    /// not, then [`Adults::repeats`] times, as the same images or as new renderings (drawn
    /// with `seed`).
    fn with_adults(
        &self,
        train: &Dataset,
        adults: &AdultImages,
        indices: &[usize],
        (seed, spec): (u64, &InputSpec),
    ) -> Result<Dataset> {
        let fit_on = adults.set().subset(indices);
        let order = match self.balance {
            true => fit_on.class_balanced_indices(),
            false => (0..fit_on.len()).collect(),
        };
        let picks: Vec<usize> = order.into_iter().map(|i| indices[i]).collect();
        Ok(train.joined(&adults.repeated(&picks, self.repeats, (seed, spec))?, 1))
    }

    /// One run's training and validation sets: PneumoniaMNIST's, with the adults at `indices`.
    /// With [`Adults::validate`], a quarter of those patients validate instead of training,
    /// repeated to count as much as PneumoniaMNIST's validation split.
    fn sets(
        &self,
        [train, val]: [&Dataset; 2],
        adults: &AdultImages,
        indices: &[usize],
        (seed, spec): (u64, &InputSpec),
    ) -> Result<[Dataset; 2]> {
        if !self.validate {
            return Ok([
                self.with_adults(train, adults, indices, (seed, spec))?,
                val.clone(),
            ]);
        }
        let (fit_on, choose_on) = hold_out(adults.set(), indices, 4, seed)?;
        let chosen = adults.set().subset(&choose_on);
        Ok([
            self.with_adults(train, adults, &fit_on, (seed, spec))?,
            val.joined(&chosen, val.len().div_ceil(chosen.len().max(1))),
        ])
    }
}

/// A model trained by [`fit`]: its teacher, strong teacher and student.
struct Fitted {
    teacher: Net,
    strong: Option<Net>,
    student: Student,
}

/// The shipped recipe on one training set, validated (checkpoints chosen) on `val`, its
/// teacher trained from `start` when given.
fn fit(
    config: &Config,
    (start, train_set): (Option<Net>, &Dataset),
    val: &Dataset,
    (name, description): (&str, &str),
    log: &mut Vec<EpochLog>,
) -> Result<Fitted> {
    let scale = config.input.scale;
    let (tr, va) = (Tensors::new(train_set, scale), Tensors::new(val, scale));
    let teacher_net = teacher(start, config, &tr, &va, log);
    let strong = strong_teacher(config, &tr, &va, log);
    let lesson = Lesson {
        teacher: &teacher_net,
        strong: strong.as_ref(),
        train: &tr,
        val: &va,
        val_images: val,
    };
    let student = train_and_compile(config, &lesson, log, name, description)?;
    Ok(Fitted {
        teacher: teacher_net,
        strong,
        student,
    })
}

/// Cross-validates the recipe on the adult set by patient: each fold trains on PneumoniaMNIST
/// and the other folds' adults, and is scored on its own adults (float teacher, and the
/// compiled student under TFHE's predicted noise).
fn cross_validate_adults(
    common: &Common,
    config: &Config,
    (adults, images): (&Adults, &AdultImages),
    [train, val]: [&Dataset; 2],
    pretrained: &mut BTreeMap<u64, Option<Net>>,
) -> Result<Vec<CrossValidated>> {
    let seeds: Vec<u64> = with_seeds(common, adults.seeds).map(|c| c.seed).collect();
    let adult_set = images.set();
    let models = cross_validate(adult_set, adults.folds, &seeds, |seed, fit_on, held_out| {
        eprintln!(
            "adult cross-validation: seed {seed}, {} held out",
            held_out.len()
        );
        let config = Config {
            settings: Settings {
                seed,
                ..config.settings.clone()
            },
            ..config.clone()
        };
        let [fold_train, fold_val] =
            adults.sets([train, val], images, fit_on, (seed, &config.input))?;
        let start = adults
            .pretraining
            .start_for_seed(pretrained, &config, [train, val]);
        let fitted = fit(
            &config,
            (start, &fold_train),
            &fold_val,
            ("fold", "fold"),
            &mut Vec::new(),
        )?;
        let held = adult_set.subset(held_out);
        let (_, _, circuit) = fitted
            .student
            .quantized
            .expect("the shipped recipe quantizes");
        let [teacher, noisy] = held_out_calls(&fitted.teacher, &circuit, &held, common, seed)?;
        anyhow::Ok(vec![
            ("ReLU teacher (float)".to_owned(), teacher),
            ("quantized student (noisy simulation)".to_owned(), noisy),
        ])
    })?;
    Ok(models)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn train(
    common: &Common,
    topology: &str,
    (name, class_names): (Option<&str>, &[String]),
    adults: Option<&Adults>,
    out: &Path,
    model_copy: Option<&Path>,
    sample: usize,
    (stability_sample, stability_runs): (usize, usize),
) -> Result<()> {
    let config = common.config(topology, common.shipped(), class_names)?;
    // The small adult folder first: a wrong path fails before PneumoniaMNIST is read.
    let adult_set = match adults {
        None => None,
        Some(a) => Some((a, a.load(&config.input)?)),
    };
    let [train, val, test] = common.splits()?;
    let te = Tensors::new(&test, config.input.scale);
    let distilled_from = match &config.strong_teacher {
        Some(strong) => format!("a larger ReLU CNN ({})", strong.spec()),
        None => "a ReLU teacher of its own topology".to_owned(),
    };
    let trained_on = match &adult_set {
        None => "PneumoniaMNIST (children aged 1-5; CC BY 4.0)".to_owned(),
        Some((a, images)) => format!(
            "PneumoniaMNIST (children aged 1-5; CC BY 4.0) and {} adult X-rays of one site \
             (Actualmed COVID-19 set: {}), each counted {} times{}{}",
            images.set().len(),
            a.classes.join(", "),
            a.repeats,
            match a.renderings {
                true => " as new full-resolution renderings of its file",
                false => "",
            },
            a.pretraining
                .phrase()
                .map_or_else(String::new, |p| format!(", {p}"))
        ),
    };
    let description = format!(
        "{} on 28×28 chest X-rays. Topology {} ({}); per-element quadratic student distilled \
         from {distilled_from}, quantization- and noise-aware. Trained on {trained_on} by \
         `hexray-trainer train`.",
        sentence_case(&class_names.join(" vs ")),
        config.topology.name,
        config.topology.spec()
    );
    let name = name.map_or_else(
        || format!("pneumonia-{}", config.topology.name),
        str::to_owned,
    );
    // Teachers pre-trained on PneumoniaMNIST, by seed (`--adult-pretraining`).
    let mut pretrained = BTreeMap::new();
    let adult_figures = match &adult_set {
        None => None,
        Some((a, images)) => {
            let start = Instant::now();
            let models = cross_validate_adults(
                common,
                &config,
                (a, images),
                [&train, &val],
                &mut pretrained,
            )?;
            Some(AdultFigures {
                labels: a.labels.display().to_string(),
                repeats: a.repeats,
                balanced: a.balance,
                renderings: a.renderings,
                pretraining: a.pretraining.phrase(),
                models,
                seconds: start.elapsed().as_secs_f64(),
            })
        }
    };
    let start = Instant::now();
    let (start_from, [train_set, chosen_on]) = match &adult_set {
        None => (None, [train, val.clone()]),
        Some((a, images)) => {
            let all: Vec<usize> = (0..images.set().len()).collect();
            (
                a.pretraining
                    .start_for_seed(&mut pretrained, &config, [&train, &val]),
                a.sets([&train, &val], images, &all, (common.seed, &config.input))?,
            )
        }
    };
    let mut log = Vec::new();
    let Fitted {
        teacher: teacher_net,
        strong,
        student,
    } = fit(
        &config,
        (start_from, &train_set),
        &chosen_on,
        (&name, &description),
        &mut log,
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
        adults: adult_figures,
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
