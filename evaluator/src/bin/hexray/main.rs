//! `hexray`: the engine's command line.
//!
//! - `hexray run --image X.png` (or `.jpg`, `.dcm`): the whole pipeline on one machine (keygen, encrypt, evaluate,
//!   decrypt), compared with the plaintext simulator;
//! - `hexray analyze --server URL --image X.png`: a clinician's client of a remote server;
//! - `hexray bulk --server URL --folder DIR`: a folder of X-rays screened on a remote server by
//!   the bulk path (up to 8192 images per job), results written to a CSV;
//! - `hexray inspect`: what a model costs (bootstraps) and how noisy each layer is;
//! - `hexray simulate --image X.png`: the plaintext simulator's prediction, exact and noisy, as JSON;
//! - `hexray serve`: the self-hosted server with the clinician page and the API;
//! - `hexray token new`: a bearer token for the server's tokens file;
//! - `hexray client-spec`: the public part of a model, exactly what clients receive.
//!
//! The benchmarks are another binary, `hexray-bench` (the `bench/` crate).

mod analyze;
mod bulk;
mod client_spec;
mod inspect;
mod run;
mod serve;
mod simulate;
mod token;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hexray_engine::LoadedModel;
use hexray_evaluator::server::models::bundled_default;
use hexray_model::network::InputSpec;
use hexray_model::preprocess::{decode, preprocess_luma};
use ndarray::Array3;

/// The model a command reads.
#[derive(clap::Args)]
pub struct ModelArg {
    /// Model file (*.hexray). Without it: the bundled default model, screen-mlp-32, which is
    /// compiled into this binary, so the command needs no file wherever it runs.
    #[arg(long)]
    pub model: Option<PathBuf>,
}

impl ModelArg {
    /// The model file given, or the bundled default.
    pub fn load(&self) -> Result<LoadedModel> {
        match &self.model {
            Some(path) => LoadedModel::from_file(path)
                .with_context(|| format!("loading the model {}", path.display())),
            None => bundled_default().context("loading the bundled default model"),
        }
    }
}

/// An image file read and preprocessed for a model, with what its DICOM header names.
pub struct ImageFile {
    pub input: Array3<i64>,
    pub patient_name: Option<String>,
    pub study_date: Option<String>,
    /// What a DICOM header warns of (another modality or body part, several frames…): a result
    /// written without them could be taken at face value.
    pub warnings: Vec<String>,
}

/// Reads an image file (PNG, JPEG or DICOM) and preprocesses it for `spec`, printing what a
/// DICOM file warns about (another modality, several frames…) to stderr: the images `run`,
/// `simulate`, `analyze` and `bulk` are given all come through here.
pub fn read_image_file(path: &Path, spec: &InputSpec) -> Result<ImageFile> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let decoded = decode(&bytes).with_context(|| format!("decoding {}", path.display()))?;
    for warning in decoded.dicom.iter().flat_map(|info| &info.warnings) {
        eprintln!("warning: {}: {warning}", path.display());
    }
    let (patient_name, study_date, warnings) = decoded
        .dicom
        .map(|info| (info.patient_name, info.study_date, info.warnings))
        .unwrap_or_default();
    let input = preprocess_luma(decoded.luma, spec)
        .with_context(|| format!("preprocessing {}", path.display()))?;
    Ok(ImageFile {
        input,
        patient_name,
        study_date,
        warnings,
    })
}

/// [`read_image_file`]'s input tensor alone.
pub fn read_image(path: &Path, spec: &InputSpec) -> Result<Array3<i64>> {
    Ok(read_image_file(path, spec)?.input)
}

/// The server a client command talks to, and its token.
#[derive(clap::Args)]
pub struct ServerArgs {
    /// The server, e.g. `https://hexray.hospital.example` or `http://127.0.0.1:8080`.
    #[arg(long, env = "HEXRAY_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// The access token (`hexray token new`); the environment keeps it out of shell history.
    #[arg(long, env = "HEXRAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA file (PEM) that the `https://` server's certificate is verified against, for a
    /// hospital's own CA; without it, the system's CAs.
    #[arg(long, env = "HEXRAY_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

impl ServerArgs {
    pub fn client(&self) -> Result<hexray_evaluator::client::ApiClient> {
        hexray_evaluator::client::ApiClient::connect(
            &self.server,
            self.token.as_deref(),
            self.ca_file.as_deref(),
        )
        .with_context(|| format!("connecting to {}", self.server))
    }
}

/// One image through one model, compared with the noisy simulator: `run` and `simulate`.
#[derive(clap::Args)]
pub struct ImageArgs {
    /// Chest X-ray (PNG, JPEG or DICOM).
    #[arg(long)]
    pub image: PathBuf,
    #[command(flatten)]
    pub model: ModelArg,
    /// Noisy simulations, each drawing TFHE's predicted noise before every table (at least 2,
    /// so that they have a spread).
    #[arg(long, default_value_t = 300, value_parser = at_least::<2, usize>)]
    pub noisy_runs: usize,
}

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
    Run(ImageArgs),
    /// Analyse X-rays on a remote server, as the page does: encrypted here, decrypted here.
    Analyze(analyze::Args),
    /// Screen a folder of X-rays on a remote server by the bulk path: packed and encrypted
    /// here, thousands per job, results decrypted here into a CSV.
    Bulk(bulk::Args),
    /// Print a model's circuit: bootstraps, accumulator widths and noise per layer.
    Inspect(ModelArg),
    /// Print the plaintext simulator's prediction for an image (exact and noisy) as JSON.
    Simulate(ImageArgs),
    /// Serve the clinician page and the encrypted inference API.
    Serve(Box<serve::Args>),
    /// Manage the server's bearer tokens.
    #[command(subcommand)]
    Token(token::Command),
    /// Print a model's client spec, the only part of it clients receive (for audits).
    ClientSpec(ModelArg),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run::run(args),
        Command::Analyze(args) => analyze::analyze(args),
        Command::Bulk(args) => bulk::bulk(args),
        Command::Inspect(model) => inspect::print_report(&model.load()?),
        Command::Serve(args) => serve::serve(*args),
        Command::Simulate(args) => simulate::simulate(args),
        Command::Token(command) => token::run(command),
        Command::ClientSpec(model) => client_spec::print(&model.load()?),
    }
}

/// A number that must be at least `MIN`, as a command-line value parser: a server limit below
/// it would refuse every request (or, for database connections, deadlock), and one noisy run has
/// no spread, so it is refused in words, never silently raised.
pub fn at_least<const MIN: u64, T: TryFrom<u64>>(value: &str) -> Result<T, String> {
    let n: u64 = value
        .parse()
        .map_err(|e: std::num::ParseIntError| e.to_string())?;
    if n < MIN {
        return Err(format!("must be at least {MIN}"));
    }
    T::try_from(n).map_err(|_| format!("must be at most {}", usize::MAX))
}
