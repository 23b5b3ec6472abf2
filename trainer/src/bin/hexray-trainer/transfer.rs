//! `transfer`: the COVID-19 model by transfer learning, as Baruch et al. ("A methodology for
//! training HE-friendly neural networks") do it: a ReLU teacher pre-trained on PneumoniaMNIST,
//! fine-tuned on the adult COVID-19 set, and a quadratic student distilled from it. Four
//! settings are cross-validated by patient over seeds, each as ReLU teacher vs quadratic
//! student, so that the paper's teacher–student gap can be read off; then the last setting is
//! trained on every image and written as a model file.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hexray_model::network::InputSpec;
use hexray_trainer::adults::AdultImages;
use hexray_trainer::crossval::{self, cross_validate, CrossValidated, FoldCalls};
use hexray_trainer::data::{hold_out, Dataset};
use hexray_trainer::metrics::{mean_sd, Scores};
use hexray_trainer::net::Net;
use hexray_trainer::pipeline::{
    export_mismatches, score_circuit, strong_teacher, teacher, train_and_compile, Config, Lesson,
    Student,
};
use hexray_trainer::train::{Recipe, Settings, Tensors};
use serde::Serialize;

use crate::common::*;

/// Training images per epoch of a fold: the few adult images are repeated up to about this
/// many, so that an epoch is several optimiser steps rather than one.
const IMAGES_PER_EPOCH: usize = 400;

/// The transfer settings compared, each one switch from the next: training on the adult set
/// alone, pre-trained with the front frozen, pre-trained and fine-tuned, and (the shipped one)
/// pre-trained, fine-tuned and distilled.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Setting {
    AdultsAlone,
    FrozenFront,
    FineTuned,
    Distilled,
}

impl Setting {
    const ALL: [Setting; 4] = [
        Setting::AdultsAlone,
        Setting::FrozenFront,
        Setting::FineTuned,
        Setting::Distilled,
    ];

    fn name(self) -> &'static str {
        match self {
            Setting::AdultsAlone => "trained on the adult set alone",
            Setting::FrozenFront => "pre-trained, frozen front",
            Setting::FineTuned => "pre-trained and fine-tuned",
            Setting::Distilled => "pre-trained, fine-tuned and distilled",
        }
    }
}

/// The ReLU networks pre-trained on PneumoniaMNIST: one of the student's shape, and the larger
/// one to distil from when the config names one.
struct Pretrained {
    own: Net,
    strong: Option<Net>,
}

/// The teacher the student learned from and the student, one setting makes from one fold's
/// adults.
fn train_setting(
    setting: Setting,
    pretrained: &Pretrained,
    config: &Config,
    fold: &Fold,
    name: &str,
) -> Result<(Net, Student)> {
    let pretrained_own = &pretrained.own;
    let start = match setting {
        Setting::AdultsAlone => None,
        Setting::FrozenFront => Some(pretrained_own.independent_copy().with_frozen_front()),
        Setting::FineTuned | Setting::Distilled => Some(pretrained_own.independent_copy()),
    };
    let fine_tuned = teacher(start, config, &fold.train, &fold.val, &mut Vec::new());
    // The distilled setting fine-tunes the strong teacher too, and learns from it.
    let strong = match (setting, &pretrained.strong) {
        (Setting::Distilled, Some(strong)) => Some(teacher(
            Some(strong.independent_copy()),
            config,
            &fold.train,
            &fold.val,
            &mut Vec::new(),
        )),
        _ => None,
    };
    // Only the last setting distils; the others learn from the labels, so that each row
    // differs from the next by one switch.
    let config = match setting {
        Setting::Distilled => config.clone(),
        _ => Config {
            recipe: Recipe {
                distillation: None,
                ..config.recipe.clone()
            },
            ..config.clone()
        },
    };
    let lesson = Lesson {
        teacher: &fine_tuned,
        strong: strong.as_ref(),
        train: &fold.train,
        val: &fold.val,
        val_images: &fold.margin_images,
    };
    let teachers = match &config.strong_teacher {
        Some(strong) => format!(
            "ReLU teachers (its own shape and a larger CNN, {})",
            strong.spec()
        ),
        None => "a ReLU teacher".to_owned(),
    };
    let description = format!(
        "COVID-19 vs normal on adult chest X-rays (28×28). Topology {} ({}); {teachers} \
         pre-trained on PneumoniaMNIST (children aged 1-5; CC BY 4.0) and fine-tuned on {} adult \
         X-rays of one site (the Actualmed COVID-19 set){}, then a per-element quadratic student \
         distilled from them, quantization- and noise-aware. Trained by `hexray-trainer \
         transfer`.",
        config.topology.name,
        config.topology.spec(),
        fold.adults,
        match fold.renderings {
            true => ", each repeat a new full-resolution rendering of its file",
            false => "",
        }
    );
    let student = train_and_compile(&config, &lesson, &mut Vec::new(), name, &description)?;
    Ok((strong.unwrap_or(fine_tuned), student))
}

/// One fold's adults as training data: the training patients repeated to about
/// [`IMAGES_PER_EPOCH`], and patients held out of them on which checkpoints are chosen.
struct Fold {
    train: Tensors,
    val: Tensors,
    /// Images on which the compiled circuit's borderline margin is measured: PneumoniaMNIST's
    /// validation split and the fold's validation adults, since the margin is a property of
    /// the circuit's noise more than of the population.
    margin_images: Dataset,
    adults: usize,
    /// Whether each repeat of a training image is a new rendering of its file.
    renderings: bool,
}

impl Fold {
    fn new(
        images: &AdultImages,
        indices: &[usize],
        pediatric_val: &Dataset,
        (seed, spec): (u64, &InputSpec),
    ) -> Result<Self> {
        let adults = images.set();
        let (fit_on, choose_on) = hold_out(adults, indices, 4, seed)?;
        let repeats = IMAGES_PER_EPOCH.div_ceil(fit_on.len().max(1));
        let train = images.repeated(&fit_on, repeats, (seed, spec))?;
        let val = adults.subset(&choose_on);
        Ok(Fold {
            train: Tensors::new(&train, spec.scale),
            val: Tensors::new(&val, spec.scale),
            margin_images: pediatric_val.joined(&val, 1),
            adults: indices.len(),
            renderings: images.renders(),
        })
    }
}

/// One setting's cross-validated teacher and student, and the gap between them.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct SettingFigures {
    pub(crate) setting: String,
    pub(crate) teacher: CrossValidated,
    pub(crate) student: CrossValidated,
    /// Teacher accuracy minus student accuracy, in points: mean and sd over seeds.
    pub(crate) gap_points: (f64, f64),
}

/// What `transfer --model-dir` writes beside the model file.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TransferReport {
    pub(crate) config: Config,
    pub(crate) bootstraps: usize,
    pub(crate) settings: Vec<SettingFigures>,
    /// The setting the model file was trained with.
    pub(crate) shipped: String,
    /// Whether each repeat of an adult training image was a new rendering of its file.
    pub(crate) renderings: bool,
    /// Images (all adults, then the PneumoniaMNIST test split) whose trainer integer outputs
    /// differ from the simulator's (must be 0), and how many were compared.
    pub(crate) export_mismatches: usize,
    pub(crate) export_images: usize,
    /// How the shipped model calls the PneumoniaMNIST test split (children, pneumonia or
    /// normal), which it was not made for: the exact simulation.
    pub(crate) pediatric: Scores,
    pub(crate) cross_validation_seconds: f64,
    pub(crate) training_seconds: f64,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn transfer(
    common: &Common,
    (folder, renderings): (&Path, bool),
    labels: &[String],
    class_names: &[String],
    topology: &str,
    (k, seeds): (usize, usize),
    out: &Path,
    model_dir: Option<&Path>,
    name: Option<&str>,
) -> Result<()> {
    if labels.len() != class_names.len() {
        bail!(
            "{} folder labels but {} class names",
            labels.len(),
            class_names.len()
        );
    }
    let names: Vec<&str> = labels.iter().map(String::as_str).collect();
    let spec = common.input_spec();
    let images = AdultImages::load(folder, &names, &spec, renderings)
        .with_context(|| format!("loading {}", folder.display()))?;
    let adults = images.set();
    let [train, val, test] = common.splits()?;
    let scale = spec.scale;
    let config = common.config(topology, common.shipped(), class_names)?;
    let seeded = |seed: u64| Config {
        settings: Settings {
            seed,
            ..config.settings.clone()
        },
        ..config.clone()
    };
    let (tr, va) = (Tensors::new(&train, scale), Tensors::new(&val, scale));
    let start = Instant::now();
    let seed_list: Vec<u64> = with_seeds(common, seeds).map(|c| c.seed).collect();
    let pretrained: BTreeMap<u64, Pretrained> = seed_list
        .iter()
        .map(|&seed| {
            eprintln!("pre-training the teachers on PneumoniaMNIST (seed {seed})...");
            let config = seeded(seed);
            let own = teacher(None, &config, &tr, &va, &mut Vec::new());
            let strong = strong_teacher(&config, &tr, &va, &mut Vec::new());
            (seed, Pretrained { own, strong })
        })
        .collect();
    let models = cross_validate(adults, k, &seed_list, |seed, fit_on, held_out| {
        eprintln!("transfer: seed {seed}, {} images held out", held_out.len());
        let pre = &pretrained[&seed];
        let fold = Fold::new(&images, fit_on, &val, (seed, &spec))?;
        let held = adults.subset(held_out);
        let mut fold_calls: FoldCalls = Vec::new();
        for setting in Setting::ALL {
            let (teacher_net, student) = train_setting(setting, pre, &seeded(seed), &fold, "fold")?;
            let (_, _, circuit) = student
                .quantized
                .as_ref()
                .expect("the shipped recipe quantizes");
            let [teacher_calls, student_calls] =
                held_out_calls(&teacher_net, circuit, &held, common, seed)?;
            fold_calls.push((format!("{}: ReLU teacher", setting.name()), teacher_calls));
            fold_calls.push((
                format!("{}: quadratic student", setting.name()),
                student_calls,
            ));
        }
        Ok::<_, anyhow::Error>(fold_calls)
    })?;
    let cross_validation_seconds = start.elapsed().as_secs_f64();
    let settings: Vec<SettingFigures> = Setting::ALL
        .iter()
        .zip(models.chunks(2))
        .map(|(setting, pair)| {
            let gaps: Vec<f64> = pair[0]
                .seeds
                .iter()
                .zip(&pair[1].seeds)
                .map(|(t, s)| 100.0 * (t.accuracy() - s.accuracy()))
                .collect();
            SettingFigures {
                setting: setting.name().to_owned(),
                teacher: pair[0].clone(),
                student: pair[1].clone(),
                gap_points: mean_sd(&gaps, 1),
            }
        })
        .collect();
    let first = &models[0];
    let mut doc = format!(
        "# Transfer to adult COVID-19 chest X-rays\n\nGenerated by `cargo run --release -p \
         hexray-trainer -- transfer` (see the README). The method of Baruch et al. (\"A \
         methodology for training HE-friendly neural networks\"): a ReLU teacher pre-trained on \
         PneumoniaMNIST (children aged 1-5), transferred to {} adult X-rays of {} patients from \
         one site ({} normal, {} COVID-19; the Actualmed set), and a per-element quadratic \
         student (`{}`, {} bootstraps per image) quantized and noise-aware. Each setting is \
         cross-validated by patient: {k} folds, no patient in two, over {} seeds; within a fold, \
         a quarter of the training patients is held out to choose checkpoints on. Students are \
         scored by the compiled circuit under TFHE's predicted noise ({} draws per image), \
         teachers in float.{renderings}{strong}\n\n\
         Each cell is the mean ± standard deviation over seeds, then the Wilson 95% interval over \
         the images. **With 44 images from one site, the intervals are wide**: read them before \
         the means. The gap is the teacher's accuracy minus the student's, in points (Baruch et \
         al. report 0.32 to 5.3).\n\n\
         | setting | teacher: COVID-19 not called normal | teacher: normal called normal | \
         student: COVID-19 not called normal | student: normal called normal | gap (points) |\n\
         |---|---|---|---|---|---|\n",
        first.images,
        first.patients,
        first.normal_images,
        first.abnormal_images,
        config.topology.name,
        config.topology.bootstraps(INPUT_SHAPE),
        seeds,
        common.draws,
        renderings = match images.renders() {
            true => {
                " Each repeat of an adult training image is a new full-resolution rendering of \
                 its file (size, aspect, margins, exposure, PNG or JPEG; `--adult-renderings`)."
            }
            false => "",
        },
        strong = match &config.strong_teacher {
            Some(t) => format!(
                " The last setting also pre-trains and fine-tunes a larger ReLU CNN (`{}`) and \
                 distils from it; its teacher columns are that network's.",
                t.spec()
            ),
            None => String::new(),
        },
    );
    for s in &settings {
        doc += &format!(
            "| {} | {} | {} | {} | {} | {:.1} ± {:.1} |\n",
            s.setting,
            s.teacher.sensitivity_cell(),
            s.teacher.specificity_cell(),
            s.student.sensitivity_cell(),
            s.student.specificity_cell(),
            s.gap_points.0,
            s.gap_points.1
        );
    }
    doc += &format!(
        "\nThe same, each model on its own row:\n\n{}\nCross-validation took {:.0} s.\n",
        crossval::table(&models),
        cross_validation_seconds
    );

    if let Some(dir) = model_dir {
        let start = Instant::now();
        let all: Vec<usize> = (0..adults.len()).collect();
        let fold = Fold::new(&images, &all, &val, (common.seed, &spec))?;
        let name = name.map_or_else(
            || format!("covid-19-{}", config.topology.name),
            str::to_owned,
        );
        let (_, student) = train_setting(
            Setting::Distilled,
            &pretrained[&common.seed],
            &config,
            &fold,
            &name,
        )?;
        let training_seconds = start.elapsed().as_secs_f64();
        let (quantized, model, circuit) = student.quantized.expect("the shipped recipe quantizes");
        let checked = adults.joined(&test, 1);
        let export = export_mismatches(
            &quantized,
            &config.input,
            &config.classes,
            &circuit,
            &checked,
        )?;
        if export > 0 {
            bail!(
                "export check failed: {export} images differ between the trainer and the simulator"
            );
        }
        let report = TransferReport {
            bootstraps: circuit.bootstrap_count(),
            config: config.clone(),
            settings,
            shipped: Setting::Distilled.name().to_owned(),
            renderings: images.renders(),
            export_mismatches: export,
            export_images: checked.len(),
            pediatric: score_circuit(&circuit, &test, 0, common.seed)?.0,
            cross_validation_seconds,
            training_seconds,
        };
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let model_path = dir.join("model.hexray");
        std::fs::write(&model_path, model.to_bytes())
            .with_context(|| format!("writing {}", model_path.display()))?;
        write(
            &dir.join("report.json"),
            &serde_json::to_string_pretty(&report)?,
        )?;
        doc += &format!(
            "\n## The shipped model\n\n`{name}` ({} bootstraps per image) is the last setting \
             trained on all {} images (checkpoints chosen on a quarter of the patients), in {:.0} \
             s; its file and `report.json` are in `{}`. Its figures on adults are the \
             cross-validated ones above. The trainer's integer forward pass and the circuit \
             simulator differ on **{export}** of {} images (the adults and the PneumoniaMNIST \
             test split). On children, which it was not made for, it calls {} of {} normal \
             images normal and {} of {} pneumonia images not normal.\n",
            report.bootstraps,
            adults.len(),
            training_seconds,
            dir.display(),
            checked.len(),
            report.pediatric.confusion[0][0],
            report.pediatric.confusion[0].iter().sum::<usize>(),
            report.pediatric.confusion[1][1..].iter().sum::<usize>(),
            report.pediatric.confusion[1].iter().sum::<usize>(),
        );
    }
    write(out, &doc)?;
    println!("{doc}");
    Ok(())
}
