//! `hexray`: the engine's command line.
//!
//! - `hexray run --image X.png`: the whole pipeline on one machine (keygen, encrypt, evaluate,
//!   decrypt), compared with the plaintext simulator;
//! - `hexray inspect`: what a model costs (bootstraps) and how noisy each layer is;
//! - `hexray bench`: the engine benchmark (parameter sets, reference topologies).

mod bench;
mod inspect;
mod run;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// The model bundled with the repository, used when `--model` is not given.
pub const DEFAULT_MODEL: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../models/pneumonia-c.hexray");

#[derive(Parser)]
#[command(
    name = "hexray",
    version,
    about = "Encrypted chest X-ray inference with TFHE"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Encrypt an image, evaluate the model on the ciphertext and decrypt the diagnosis.
    Run(run::Args),
    /// Print a model's circuit: bootstraps, accumulator widths and noise per layer.
    Inspect {
        /// Model file.
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: PathBuf,
    },
    /// Benchmark the engine and print the figures.
    Bench(bench::Args),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run::run(args),
        Command::Inspect { model } => inspect::inspect(&model),
        Command::Bench(args) => bench::bench(args),
    }
}
