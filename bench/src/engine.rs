//! `hexray-bench engine`: the engine benchmark. It prints figures; nothing here passes or fails.
//!
//! 1. For each supported parameter set: client keygen time, compressed server key size,
//!    decompression time and the single-thread keyswitch + bootstrap time (median).
//! 2. For each model (the reference topologies by default): bootstraps per image, end-to-end
//!    encrypted latency on all cores, the efficiency ratio
//!    (bootstraps × single-bootstrap time / cores) ÷ latency, the share of non-bootstrap work,
//!    and upload/download sizes.
//! 3. The plaintext simulator's throughput, exact and noisy, on one thread.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hexray_crypto::{ClientKey, EncryptedImage, ParameterSet, ServerKey};
use hexray_engine::{evaluate, LoadedModel};
use hexray_model::preprocess::preprocess;
use hexray_model::simulate;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use hexray_evaluator::progress::bootstrap_bar;

use crate::stats::median_ms;

const MODELS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models");
const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../samples/pneumoniamnist/test-0000-pneumonia.png"
);

#[derive(clap::Args)]
pub struct Args {
    /// Models to benchmark (default: the reference topologies a and b).
    #[arg(long)]
    model: Vec<PathBuf>,
    /// Image to encrypt.
    #[arg(long, default_value = SAMPLE)]
    image: PathBuf,
    /// Single-thread bootstraps timed per parameter set.
    #[arg(long, default_value_t = 40)]
    samples: usize,
}

pub fn run(args: Args) -> Result<()> {
    let cores = rayon::current_num_threads();
    let models = if args.model.is_empty() {
        ["reference-a", "reference-b"]
            .map(|m| PathBuf::from(format!("{MODELS_DIR}/{m}.hexray")))
            .to_vec()
    } else {
        args.model
    };
    let image =
        std::fs::read(&args.image).with_context(|| format!("reading {}", args.image.display()))?;
    let first = LoadedModel::from_file(&models[0]).context("loading the first model")?;
    let input = preprocess(&image, &first.model().network.input)?;
    println!("machine: {cores} threads\n");

    println!(
        "{:<50} {:>9} {:>10} {:>11} {:>12}",
        "parameter set", "keygen s", "srv key MB", "decompress s", "PBS ms (1T)"
    );
    let mut default_keys = None;
    for set in ParameterSet::ALL {
        let t = Instant::now();
        let client = ClientKey::generate(set);
        let compressed = client.server_key();
        let keygen = t.elapsed();
        let size = compressed.to_bytes()?.len();
        let t = Instant::now();
        let server = compressed.decompress();
        let decompress = t.elapsed();
        let single = single_bootstrap(&client, &server, &first, input.view(), args.samples)?;
        println!(
            "{:<50} {:>9.2} {:>10.1} {:>11.2} {:>12.2}",
            set.name(),
            keygen.as_secs_f64(),
            size as f64 / 1e6,
            decompress.as_secs_f64(),
            single.as_secs_f64() * 1e3
        );
        if set == first.parameter_set() {
            default_keys = Some((client, server));
        }
    }
    let (client, server) = default_keys.expect("the models' parameter set is benchmarked");

    println!(
        "\n{:<14} {:>6} {:>12} {:>11} {:>10} {:>10} {:>9} {:>10} {:>10} {:>9} {:>12}",
        "model",
        "PBS",
        "PBS ms (1T)",
        "latency s",
        "ideal s",
        "efficiency",
        "non-PBS",
        "encrypt ms",
        "upload B",
        "output B",
        "compress ms"
    );
    for path in &models {
        let loaded =
            LoadedModel::from_file(path).with_context(|| format!("loading {}", path.display()))?;
        let circuit = &loaded.circuit();
        let input = preprocess(&image, &loaded.model().network.input)?;
        // Timed right before the run it is compared with: this machine's speed drifts by ±10%.
        let pbs_time = single_bootstrap(&client, &server, &loaded, input.view(), args.samples)?;
        let t = Instant::now();
        let upload = client.encrypt(loaded.spec(), input.view())?.to_bytes()?;
        let encrypt = t.elapsed();
        let encrypted =
            EncryptedImage::from_bytes(&upload, loaded.parameter_set(), circuit.input_len())?;
        let bar = bootstrap_bar(circuit.bootstrap_count());
        bar.set_message(loaded.model().name.clone());
        let t = Instant::now();
        let (output, stats) = evaluate(&loaded, &server, encrypted, &|| bar.inc(1))?;
        let latency = t.elapsed();
        bar.finish_and_clear();
        let ideal = pbs_time.as_secs_f64() * stats.bootstraps as f64 / cores as f64;
        let non_pbs = (stats.linear_cpu + stats.expand).as_secs_f64()
            / (stats.linear_cpu + stats.expand + stats.bootstrap_cpu).as_secs_f64();
        println!(
            "{:<14} {:>6} {:>12.2} {:>11.2} {:>10.2} {:>10.3} {:>8.2}% {:>10.1} {:>10} {:>9} {:>12.2}",
            loaded.model().name,
            stats.bootstraps,
            pbs_time.as_secs_f64() * 1e3,
            latency.as_secs_f64(),
            ideal,
            ideal / latency.as_secs_f64(),
            100.0 * non_pbs,
            encrypt.as_secs_f64() * 1e3,
            upload.len(),
            output.to_bytes()?.len(),
            stats.compress_cpu.as_secs_f64() * 1e3
        );
    }

    println!(
        "\n{:<14} {:>22} {:>22}",
        "simulator", "exact images/s (1T)", "noisy images/s (1T)"
    );
    for path in &models {
        let loaded = LoadedModel::from_file(path)?;
        let input = preprocess(&image, &loaded.model().network.input)?;
        let circuit = &loaded.circuit();
        let runs = 200;
        let t = Instant::now();
        for _ in 0..runs {
            simulate::exact(circuit, input.view())?;
        }
        let exact = runs as f64 / t.elapsed().as_secs_f64();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let t = Instant::now();
        for _ in 0..runs {
            simulate::noisy(circuit, input.view(), &mut rng)?;
        }
        let noisy = runs as f64 / t.elapsed().as_secs_f64();
        println!("{:<14} {exact:>22.0} {noisy:>22.0}", loaded.model().name);
    }
    Ok(())
}

/// Median single-thread keyswitch + bootstrap time, on a real encrypted input through a real
/// neuron table of the model's first stage.
fn single_bootstrap(
    client: &ClientKey,
    server: &ServerKey,
    model: &LoadedModel,
    input: ndarray::ArrayView3<i64>,
    samples: usize,
) -> Result<Duration> {
    // The model is compiled for one set; its first-stage table is a realistic one for any set
    // with the same polynomial size, which both supported sets share.
    let circuit = &model.circuit();
    let mut spec = model.spec().clone();
    spec.parameter_set = client.parameter_set().name().into();
    let encrypted = client.encrypt(&spec, input)?.expand();
    let stage = &circuit.stages[0];
    let lut = server.lookup_table(&stage.lookup_table(
        0,
        circuit.polynomial_size,
        circuit.stages[1].delta,
    ));
    let phase = hexray_engine::evaluate::dot_product(stage, 0, &encrypted);
    let times = (0..samples).map(|_| {
        let t = Instant::now();
        let _ = server.bootstrap(phase.clone(), &lut);
        t.elapsed()
    });
    Ok(Duration::from_secs_f64(median_ms(times) / 1e3))
}
