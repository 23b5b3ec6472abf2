//! `hexray-bench bulk`: the bulk path against the interactive one, in one run. It prints
//! figures; nothing here passes or fails.
//!
//! 1. Accuracy on the PneumoniaMNIST test split: the default model's interactive (TFHE) exact
//!    simulation against its packed exact evaluation, and how often their classes agree.
//! 2. The bulk path on N images (the test split repeated): key generation, packing and
//!    encryption, upload bytes per image, evaluation (amortised seconds per image), the
//!    evaluation's peak memory, decryption, and how many decrypted outputs equal the exact
//!    evaluation.
//! 3. The interactive path's seconds per image on the same model, batched as the server runs
//!    it.
//!
//! The last line is JSON, for scripts.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use hexray_bulk::{evaluate, parameters, ClientKey, EncryptedBatch};
use hexray_crypto::ClientKey as TfheClientKey;
use hexray_engine::{evaluate_batch, LoadedModel};
use hexray_model::packed::{compile, PackedCircuit};
use hexray_model::simulate;
use hexray_trainer::data::load_npz;

use hexray_evaluator::progress::bootstrap_bar;

const DEFAULT_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/screen-mlp-32.hexray"
);
const DEFAULT_DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/data/pneumoniamnist.npz"
);

#[derive(clap::Args)]
pub struct Args {
    /// Images in the bulk batch (1 to 8192), cycling through the test split.
    #[arg(long, default_value_t = 4096)]
    images: usize,
    /// Model file (default: the bundled default, screen-mlp-32).
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// PneumoniaMNIST `.npz` with a `test` split.
    #[arg(long, default_value = DEFAULT_DATA)]
    data: PathBuf,
    /// Images the interactive path is timed on, in one batch.
    #[arg(long, default_value_t = 4)]
    tfhe_images: usize,
}

pub fn run(args: Args) -> Result<()> {
    ensure!(
        (1..=parameters::DEGREE).contains(&args.images),
        "--images must be between 1 and {}",
        parameters::DEGREE
    );
    let loaded = LoadedModel::from_file(&args.model)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let network = &loaded.model().network;
    let circuit = compile(network, &parameters::contract()).context("compiling for bulk")?;
    println!(
        "model {}: bulk circuit with {} neurons, worst-case noise {:.1} of {:.1} bits",
        loaded.model().name,
        hexray_bulk::evaluate::neurons(&circuit),
        circuit.noise_bits,
        circuit.parameters.noise_budget_bits(),
    );

    let (inputs, labels) = test_split(&args.data, &circuit)?;
    let accuracy = accuracy(&loaded, &circuit, &inputs, &labels)?;

    let images: Vec<Vec<i64>> = inputs.iter().cycle().take(args.images).cloned().collect();
    let t = Instant::now();
    let key = ClientKey::generate();
    let evaluation_key = key.evaluation_key()?;
    let keygen_s = t.elapsed().as_secs_f64();
    let key_bytes = evaluation_key.to_bytes().len();
    let t = Instant::now();
    let batch = key.encrypt(&circuit.input, &images)?;
    let encrypt_s = t.elapsed().as_secs_f64();

    // The upload goes to disk, as the server streams it, and the client's copy is dropped, so
    // that the peak measured below is the server's.
    let dir = tempfile::tempdir()?;
    let upload = dir.path().join("batch");
    let upload_bytes = batch.write_to(BufWriter::new(File::create(&upload)?))?;
    drop(batch);
    reset_peak_memory();
    let bar = bootstrap_bar(hexray_bulk::evaluate::neurons(&circuit));
    bar.set_message("bulk neurons");
    let t = Instant::now();
    let received =
        EncryptedBatch::read_from(BufReader::new(File::open(&upload)?), circuit.input_len())?;
    let read_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let outputs = evaluate(&circuit, &evaluation_key, received, &|| bar.inc(1))?;
    let evaluate_s = t.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let peak_bytes = peak_memory_bytes();
    let download_bytes = outputs.to_bytes().len();
    let t = Instant::now();
    let decrypted = key.decrypt(&outputs)?;
    let decrypt_s = t.elapsed().as_secs_f64();
    let agree = decrypted
        .iter()
        .zip(&images)
        .filter(|(out, image)| **out == circuit.evaluate(image))
        .count();

    let tfhe_s_per_image = tfhe_seconds_per_image(&loaded, &inputs, args.tfhe_images)?;
    let n = args.images as f64;
    let bulk_s_per_image = evaluate_s / n;
    println!("\n{:<34} {:>14}", "bulk path", "");
    for (what, value) in [
        ("images", format!("{}", args.images)),
        ("key generation s", format!("{keygen_s:.2}")),
        (
            "evaluation key MB",
            format!("{:.2}", key_bytes as f64 / 1e6),
        ),
        ("pack + encrypt s", format!("{encrypt_s:.2}")),
        ("upload MB", format!("{:.1}", upload_bytes as f64 / 1e6)),
        (
            "upload KB per image",
            format!("{:.1}", upload_bytes as f64 / n / 1e3),
        ),
        ("server read s", format!("{read_s:.2}")),
        ("server evaluate s", format!("{evaluate_s:.2}")),
        (
            "evaluate ms per image",
            format!("{:.3}", bulk_s_per_image * 1e3),
        ),
        (
            "server peak memory MB",
            format!("{:.0}", peak_bytes as f64 / 1e6),
        ),
        ("download MB", format!("{:.2}", download_bytes as f64 / 1e6)),
        ("decrypt s", format!("{decrypt_s:.2}")),
        ("equal to exact", format!("{agree} of {}", args.images)),
        ("interactive s per image", format!("{tfhe_s_per_image:.3}")),
        (
            "bulk ÷ interactive",
            format!("{:.5}", bulk_s_per_image / tfhe_s_per_image),
        ),
    ] {
        println!("{what:<34} {value:>14}");
    }
    println!(
        "{}",
        serde_json::json!({
            "images": args.images,
            "bulk_s_per_image": bulk_s_per_image,
            "tfhe_s_per_image": tfhe_s_per_image,
            "ratio": bulk_s_per_image / tfhe_s_per_image,
            "upload_bytes_per_image": upload_bytes as f64 / n,
            "encrypt_s": encrypt_s,
            "evaluate_s": evaluate_s,
            "decrypt_s": decrypt_s,
            "peak_server_bytes": peak_bytes,
            "agree_with_exact": agree == args.images,
            "test_images": labels.len(),
            "interactive_accuracy": accuracy.0,
            "bulk_accuracy": accuracy.1,
            "class_agreement": accuracy.2,
        })
    );
    Ok(())
}

/// The test split, preprocessed for the model (as the trainer reads it), with its labels.
fn test_split(path: &Path, circuit: &PackedCircuit) -> Result<(Vec<Vec<i64>>, Vec<usize>)> {
    let test = load_npz(path, "test", &circuit.input).with_context(|| {
        format!(
            "reading {} (PneumoniaMNIST; --data names another copy)",
            path.display()
        )
    })?;
    let inputs = test
        .images
        .into_iter()
        .map(|image| image.into_raw_vec_and_offset().0)
        .collect();
    Ok((inputs, test.labels))
}

/// Interactive and bulk accuracy on the test split, and the share of images where their
/// classes agree. Printed as a table.
fn accuracy(
    loaded: &LoadedModel,
    circuit: &PackedCircuit,
    inputs: &[Vec<i64>],
    labels: &[usize],
) -> Result<(f64, f64, f64)> {
    let (mut interactive, mut bulk, mut agree) = (0, 0, 0);
    for (input, &label) in inputs.iter().zip(labels) {
        let pixels = image_view(&circuit.input, input)?;
        let a = simulate::exact(loaded.circuit(), pixels)?.class();
        let b = simulate::argmax(&circuit.logits(&circuit.evaluate(input)));
        interactive += usize::from(a == label);
        bulk += usize::from(b == label);
        agree += usize::from(a == b);
    }
    let n = inputs.len() as f64;
    let (interactive, bulk, agree) = (interactive as f64 / n, bulk as f64 / n, agree as f64 / n);
    println!(
        "\n{} test images: interactive accuracy {:.2}%, bulk {:.2}% ({:+.2} points), classes agree on {:.2}%",
        inputs.len(),
        100.0 * interactive,
        100.0 * bulk,
        100.0 * (bulk - interactive),
        100.0 * agree
    );
    Ok((interactive, bulk, agree))
}

/// The interactive path's seconds per image: `count` images in one batch on all cores, key
/// generation excluded.
fn tfhe_seconds_per_image(loaded: &LoadedModel, inputs: &[Vec<i64>], count: usize) -> Result<f64> {
    let client = TfheClientKey::generate(loaded.parameter_set());
    let server = client.server_key().decompress();
    let input = &loaded.model().network.input;
    let encrypted = inputs
        .iter()
        .take(count.max(1))
        .map(|pixels| {
            let view = image_view(input, pixels)?;
            Ok(client.encrypt(loaded.spec(), view)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let images = encrypted.len();
    let bar = bootstrap_bar(loaded.circuit().bootstrap_count() * images);
    bar.set_message("interactive bootstraps");
    let t = Instant::now();
    evaluate_batch(loaded, &server, encrypted, &|| bar.inc(1))?;
    bar.finish_and_clear();
    Ok(t.elapsed().as_secs_f64() / images as f64)
}

/// One image's quantized pixels as the `[1][height][width]` tensor the interactive path takes.
fn image_view<'a>(
    input: &hexray_model::network::InputSpec,
    pixels: &'a [i64],
) -> Result<ndarray::ArrayView3<'a, i64>> {
    let shape = (1, input.height as usize, input.width as usize);
    Ok(ndarray::ArrayView3::from_shape(shape, pixels)?)
}

/// Resets the kernel's record of this process's peak resident memory (Linux).
fn reset_peak_memory() {
    // "5" clears VmHWM; without /proc the figure below is the whole run's peak.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// This process's peak resident memory since the last reset, in bytes (Linux; 0 elsewhere).
fn peak_memory_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
