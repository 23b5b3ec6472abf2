//! `hexray-trainer`: trains HE-friendly students and writes model files and reports.
//!
//! - `train`: one topology with the shipped recipe; writes the model file, a markdown and JSON
//!   report, training curves and ROC curves;
//! - `ablation`: the ablation rows of the two papers HEXray follows (Baruch et al., "A methodology
//!   for training HE-friendly neural networks"; Zhang et al., "Batch-oriented element-wise
//!   approximate activation") for several topologies, as `docs/ablation.md`;
//! - `pareto`: the shipped recipe over candidate topologies, accuracy against bootstraps;
//! - `transfer`: PneumoniaMNIST pre-training, then COVID-19 fine-tuning with patient-level
//!   cross-validation.

mod ablation;
mod checks;
mod common;
mod pareto;
mod train;
mod transfer;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::ablation::ablation;
use crate::checks::{full_resolution, stability};
use crate::common::*;
use crate::pareto::pareto;
use crate::train::{train, Adults, Pretraining};
use crate::transfer::transfer;

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
        /// The model's id (default: pneumonia-<topology>).
        #[arg(long)]
        name: Option<String>,
        /// The model's class names, in label order: the first is normal, the second what
        /// PneumoniaMNIST's pneumonia and the adult set's other labels are called.
        #[arg(long, default_value = "normal,pneumonia", value_delimiter = ',')]
        class_names: Vec<String>,
        /// Also learn from these adult X-rays (a folder dataset's labels.csv with patient ids),
        /// and cross-validate the recipe on them by patient first.
        #[arg(long)]
        adults: Option<PathBuf>,
        /// The adult folder's labels, normal first; every other one is abnormal.
        #[arg(long, default_value = "normal,covid", value_delimiter = ',')]
        adult_labels: Vec<String>,
        /// Copies of each adult image in the training set.
        #[arg(long, default_value_t = 20, value_parser = at_least_one())]
        adult_repeats: usize,
        /// Draw each adult class as often as the largest before repeating them.
        #[arg(long)]
        adult_balance: bool,
        /// Make each repeat of an adult image a new full-resolution rendering of its file
        /// (size, aspect, margins, exposure, PNG or JPEG) rather than the same image again.
        #[arg(long)]
        adult_renderings: bool,
        /// Hold a quarter of the adult patients out to choose checkpoints on, beside the
        /// validation split.
        #[arg(long)]
        adult_validation: bool,
        #[arg(long, default_value_t = 4)]
        adult_folds: usize,
        /// Seeds of the adult cross-validation, from --seed upward.
        #[arg(long, default_value_t = 3, value_parser = at_least_one())]
        adult_seeds: usize,
        /// Where the teacher starts: from scratch on both populations (`none`), or pre-trained
        /// on PneumoniaMNIST alone and then trained on both, whole (`fine-tune`) or with its
        /// front frozen (`frozen-front`: only the output layer learns, and in the student the
        /// quadratics too).
        #[arg(long, value_enum, default_value_t = Pretraining::None)]
        adult_pretraining: Pretraining,
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
        /// Ids of the models that learned from these images, marked as such.
        #[arg(long, value_delimiter = ',')]
        trained_on: Vec<String>,
        #[arg(long, default_value = "docs/full-resolution.md")]
        out: PathBuf,
    },
    /// The COVID-19 model by transfer learning: pre-train on PneumoniaMNIST, fine-tune and
    /// distil on the adult folder dataset, cross-validated by patient.
    Transfer {
        #[command(flatten)]
        common: Common,
        /// The folder dataset's labels.csv (path,label[,patient_id]).
        #[arg(long, default_value = "../shared/data/covid-cxr-actualmed/labels.csv")]
        folder: PathBuf,
        /// The folder's labels, normal first.
        #[arg(long, default_value = "normal,covid", value_delimiter = ',')]
        classes: Vec<String>,
        /// The model's class names, one per folder label.
        #[arg(long, default_value = "normal,covid-19", value_delimiter = ',')]
        class_names: Vec<String>,
        #[arg(long, default_value = "mlp-32")]
        topology: String,
        /// Make each repeat of an adult image a new full-resolution rendering of its file
        /// (size, aspect, margins, exposure, PNG or JPEG) rather than the same image again.
        #[arg(long)]
        adult_renderings: bool,
        #[arg(long, default_value_t = 4)]
        folds: usize,
        /// Seeds of the cross-validation, from --seed upward.
        #[arg(long, default_value_t = 3, value_parser = at_least_one())]
        seeds: usize,
        /// Also train the shipped setting on every image and write its model file and
        /// report.json here.
        #[arg(long)]
        model_dir: Option<PathBuf>,
        /// The model's id (default: covid-19-<topology>).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "docs/transfer.md")]
        out: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Train {
            common,
            topology,
            out,
            model,
            name,
            class_names,
            adults,
            adult_labels,
            adult_repeats,
            adult_balance,
            adult_renderings,
            adult_validation,
            adult_folds,
            adult_seeds,
            adult_pretraining,
            encrypted_sample,
            stability_sample,
            stability_runs,
        } => train(
            &common,
            &topology,
            (name.as_deref(), &class_names),
            adults
                .map(|labels| Adults {
                    labels,
                    classes: adult_labels,
                    repeats: adult_repeats,
                    balance: adult_balance,
                    renderings: adult_renderings,
                    validate: adult_validation,
                    folds: adult_folds,
                    seeds: adult_seeds,
                    pretraining: adult_pretraining,
                })
                .as_ref(),
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
            class_names,
            topology,
            adult_renderings,
            folds,
            seeds,
            model_dir,
            name,
            out,
        } => transfer(
            &common,
            (&folder, adult_renderings),
            &classes,
            &class_names,
            &topology,
            (folds, seeds),
            &out,
            model_dir.as_deref(),
            name.as_deref(),
        ),
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
            trained_on,
            out,
        } => full_resolution(&models, &folder, &classes, &trained_on, &out),
    }
}
