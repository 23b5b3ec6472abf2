//! `hexray analyze`: the command line as a clinician's client of a remote server, doing what
//! the page does. It fetches the model's client spec (never the model), keeps its own key pair
//! in a local directory (the secret key never leaves it), uploads the evaluation key once,
//! encrypts the images, submits them with the spec's fingerprint (as one job, or as several one
//! after another when there are more than the server takes per job), and decrypts the answers
//! here. A key the server lost is uploaded again, and a job it lost is submitted again once.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hexray_crypto::{batch_body, ClientKey, EncryptedOutput, ParameterSet};
use hexray_evaluator::client::ApiClient;
use hexray_evaluator::durable_file::{write_durably, Readers};
use hexray_evaluator::remote_job;
use hexray_model::client_spec::BORDERLINE_NOTE;
use hexray_model::{ClientSpec, Diagnosis};
use ndarray::Array3;

use crate::{read_image, ServerArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    server: ServerArgs,
    /// The served model's id; without it, the server's default (the first it lists).
    #[arg(long)]
    model: Option<String>,
    /// Chest X-rays (PNG, JPEG or DICOM); as many per job as the server takes.
    #[arg(long, required = true)]
    image: Vec<PathBuf>,
    /// Where this client keeps its key pair, as the browser keeps it in IndexedDB; without it,
    /// `$XDG_DATA_HOME/hexray/keys` (`~/.local/share/hexray/keys`), one pair for the user
    /// wherever the command runs, so that the server's key quota is not spent folder by folder.
    #[arg(long, env = "HEXRAY_KEYS_DIR")]
    keys_dir: Option<PathBuf>,
}

/// The user's own keys folder, by the XDG base directory rule.
fn user_keys_dir() -> Result<PathBuf> {
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .context("neither XDG_DATA_HOME nor HOME is set: name a folder with --keys-dir")?;
    Ok(data.join("hexray/keys"))
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
    // Every image is read before keys are made or anything is sent: a wrong file costs nothing.
    let inputs = args
        .image
        .iter()
        .map(|path| read_image(path, &spec.input))
        .collect::<Result<Vec<_>>>()?;
    let per_job = api
        .batch_images()
        .context("asking the server for its limits")?;
    let keys_dir = match args.keys_dir {
        Some(dir) => dir,
        None => user_keys_dir()?,
    };
    let keys = Keys::load_or_create(&keys_dir, ParameterSet::from_name(&spec.parameter_set)?)?;
    let jobs = inputs.len().div_ceil(per_job);
    if jobs > 1 {
        eprintln!(
            "{} images go as {jobs} jobs: the server takes {per_job} per job",
            inputs.len()
        );
    }
    for (paths, inputs) in args.image.chunks(per_job).zip(inputs.chunks(per_job)) {
        for (path, diagnosis) in paths
            .iter()
            .zip(run_job(&api, &model, &spec, &keys, inputs)?)
        {
            println!("{}: {}", path.display(), result_line(&spec, &diagnosis));
        }
    }
    eprintln!("decision support, not a diagnosis: a qualified clinician reviews every result");
    Ok(())
}

/// Encrypts `inputs`, submits them as one job, follows it with a progress bar, and decrypts
/// its answers, in order ([`remote_job::run`]: a job the server lost is submitted again).
fn run_job(
    api: &ApiClient,
    model: &str,
    spec: &ClientSpec,
    keys: &Keys,
    inputs: &[Array3<i64>],
) -> Result<Vec<Diagnosis>> {
    let blobs = inputs
        .iter()
        .map(|input| Ok(keys.client.encrypt(spec, input.view())?.to_bytes()?))
        .collect::<Result<Vec<_>>>()?;
    let batch = batch_body::pack(&blobs);
    let finished = remote_job::run(api, "bootstraps", || {
        let job = api.submit_under_key(model, spec, &batch, &keys.server_key, |bytes| {
            eprintln!(
                "uploading the evaluation key ({:.1} MB)",
                bytes as f64 / 1e6
            )
        })?;
        // scripts/container-test.sh follows the job by this line.
        eprintln!(
            "job {job}: {} image(s), {} bootstraps each",
            blobs.len(),
            spec.bootstraps
        );
        Ok(job)
    })?;
    batch_body::unpack(&finished.outputs, blobs.len())?
        .into_iter()
        .map(|blob| {
            let output =
                EncryptedOutput::from_bytes(blob, keys.client.parameter_set(), spec.output_len())?;
            Ok(keys.client.decrypt(spec, &output)?)
        })
        .collect()
}

/// A result as `analyze` prints it: the class, each class's probability, and the borderline
/// note where the result is borderline.
fn result_line(spec: &ClientSpec, diagnosis: &Diagnosis) -> String {
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
    format!(
        "{} ({}){borderline}",
        spec.classes[diagnosis.class],
        scores.join(", ")
    )
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
        let write = |path: &Path, bytes: &[u8]| {
            write_durably(path, bytes, Readers::Owner)
                .with_context(|| format!("writing {}", path.display()))
        };
        write(&server_path, &server_key)?;
        write(&client_path, &client.to_bytes()?)?;
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
