//! `hexray analyze`: the command line as a clinician's client of a remote server, doing what
//! the page does. It fetches the model's client spec (never the model), keeps its own key pair
//! in a local directory (the secret key never leaves it), uploads the evaluation key once,
//! encrypts the images, submits them as one job with the spec's fingerprint, and decrypts the
//! answers here. A key the server lost is uploaded again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use hexray_crypto::{batch_body, ClientKey, EncryptedOutput, ParameterSet};
use hexray_evaluator::server::jobs::JobState;
use hexray_model::client_spec::BORDERLINE_NOTE;

use crate::{read_image, ServerArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    server: ServerArgs,
    /// The served model's id; without it, the server's default (the first it lists).
    #[arg(long)]
    model: Option<String>,
    /// Chest X-rays (PNG, JPEG or DICOM); all go in one job.
    #[arg(long, required = true)]
    image: Vec<PathBuf>,
    /// Where this client keeps its key pair, as the browser keeps it in IndexedDB.
    #[arg(long, env = "HEXRAY_KEYS_DIR", default_value = "hexray-keys")]
    keys_dir: PathBuf,
}

pub fn analyze(args: Args) -> Result<()> {
    let api = args.server.client()?;
    let model = match args.model {
        Some(model) => model,
        None => api
            .default_model()
            .context("asking the server for its models")?,
    };
    let spec = api
        .spec(&model)
        .with_context(|| format!("fetching the client spec of `{model}`"))?;
    let set = ParameterSet::from_name(&spec.parameter_set)?;
    let keys = Keys::load_or_create(&args.keys_dir, set)?;
    let mut blobs = Vec::with_capacity(args.image.len());
    for path in &args.image {
        let input = read_image(path, &spec.input)?;
        blobs.push(keys.client.encrypt(&spec, input.view())?.to_bytes()?);
    }
    let batch = batch_body::pack(&blobs);
    let job = api.submit_under_key(&model, &spec, &batch, &keys.server_key, |bytes| {
        eprintln!(
            "uploading the evaluation key ({:.1} MB)",
            bytes as f64 / 1e6
        )
    })?;
    eprintln!(
        "job {job}: {} image(s), {} bootstraps each",
        blobs.len(),
        spec.bootstraps
    );
    let status = api.wait(&job, Duration::from_secs(3600))?;
    anyhow::ensure!(
        status.state == JobState::Done,
        "the server could not evaluate the images: {}",
        status.error.unwrap_or_default()
    );
    let outputs = api.outputs(&job)?;
    for (path, blob) in args
        .image
        .iter()
        .zip(batch_body::unpack(&outputs, blobs.len())?)
    {
        let output = EncryptedOutput::from_bytes(blob, set, spec.output_len())?;
        let diagnosis = keys.client.decrypt(&spec, &output)?;
        let scores: Vec<String> = spec
            .classes
            .iter()
            .zip(&diagnosis.probabilities)
            .map(|(class, p)| format!("{class} {:.1}%", 100.0 * p))
            .collect();
        let borderline = if diagnosis.is_borderline(spec.borderline_margin) {
            format!(" {BORDERLINE_NOTE}")
        } else {
            String::new()
        };
        println!(
            "{}: {} ({}){borderline}",
            path.display(),
            spec.classes[diagnosis.class],
            scores.join(", ")
        );
    }
    eprintln!("decision support, not a diagnosis: a qualified clinician reviews every result");
    Ok(())
}

/// This client's key pair, in files only its user can read.
struct Keys {
    client: ClientKey,
    server_key: Vec<u8>,
}

impl Keys {
    fn load_or_create(dir: &Path, set: ParameterSet) -> Result<Self> {
        let (client_path, server_path) = (dir.join("client.key"), dir.join("server.key"));
        let read = |path: &Path| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        // The secret key is written last: where it is, the pair is whole.
        if client_path.exists() {
            let client = ClientKey::from_bytes(&read(&client_path)?)
                .with_context(|| format!("reading {}", client_path.display()))?;
            if client.parameter_set() == set {
                return Ok(Keys {
                    client,
                    server_key: read(&server_path)?,
                });
            }
        }
        eprintln!("generating a key pair for {} (once)", set.name());
        create_private_dir(dir)?;
        let client = ClientKey::generate(set);
        let server_key = client.server_key().to_bytes()?;
        write_private(&server_path, &server_key)?;
        write_private(&client_path, &client.to_bytes()?)?;
        Ok(Keys { client, server_key })
    }
}

/// Creates `dir`, if it is missing, readable by its owner only. A folder that exists is left
/// as it is (it may be shared, or the user's home): the key files are private by themselves.
fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Writes `bytes` to `path`, readable by its owner only, whole or not at all: into a new file
/// beside it, then renamed over it, so an interrupted run never leaves half a key.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let partial = path.with_extension("partial");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let write = || -> std::io::Result<()> {
        let mut file = options.open(&partial)?;
        std::io::Write::write_all(&mut file, bytes)?;
        file.sync_all()?;
        std::fs::rename(&partial, path)
    };
    write().with_context(|| format!("writing {}", path.display()))
}
