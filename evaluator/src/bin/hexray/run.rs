//! `hexray run`: the whole encrypted pipeline on one machine, phase by phase, exactly as the
//! client and the server split it (every blob crosses the "network" as bytes).

use hexray_model::client_spec::BORDERLINE_NOTE;
use hexray_model::simulate;
use std::time::{Duration, Instant};

use anyhow::Result;
use hexray_crypto::{ClientKey, CompressedServerKey, EncryptedImage, EncryptedOutput};
use hexray_engine::evaluate;
use hexray_evaluator::progress::bootstrap_bar;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::{read_image, ImageArgs};

pub fn run(args: ImageArgs) -> Result<()> {
    let loaded = args.model.load()?;
    let (circuit, set) = (&loaded.circuit(), loaded.parameter_set());
    let mut phases: Vec<(&str, Duration)> = Vec::new();
    let mut timed = |name, start: Instant| phases.push((name, start.elapsed()));

    // Client: preprocess and keys.
    let t = Instant::now();
    let input = read_image(&args.image, &loaded.model().network.input)?;
    timed("preprocess", t);
    let t = Instant::now();
    let client = ClientKey::generate(set);
    let server_key_upload = client.server_key().to_bytes()?;
    timed("client keygen", t);

    // Server: register the key.
    let t = Instant::now();
    let server_key = CompressedServerKey::from_bytes(&server_key_upload)?.decompress();
    timed("server key decompression", t);

    // Client: encrypt.
    let t = Instant::now();
    let upload = client.encrypt(loaded.spec(), input.view())?.to_bytes()?;
    timed("encrypt", t);

    // Server: evaluate.
    let t = Instant::now();
    let encrypted = EncryptedImage::from_bytes(&upload, set, circuit.input_len())?;
    let bar = bootstrap_bar(circuit.bootstrap_count());
    bar.set_message("evaluating");
    let (output, stats) = evaluate(&loaded, &server_key, encrypted, &|| bar.inc(1))?;
    bar.finish_and_clear();
    let download = output.to_bytes()?;
    timed("evaluate (server)", t);

    // Client: decrypt, knowing only the spec.
    let t = Instant::now();
    let output = EncryptedOutput::from_bytes(&download, set, loaded.spec().output_len())?;
    let diagnosis = client.decrypt(loaded.spec(), &output)?;
    timed("decrypt", t);
    // The model owner's view of the same output, to compare with the simulator.
    let prediction = client.decrypt_prediction(circuit, &output)?;

    let exact = simulate::exact(circuit, input.view())?;
    let spread = simulate::spread(
        circuit,
        input.view(),
        args.noisy_runs,
        &mut ChaCha8Rng::seed_from_u64(1),
    )?;

    println!("image      {}", args.image.display());
    println!(
        "model      {} v{} ({})",
        loaded.model().name,
        loaded.model().model_version,
        set.name()
    );
    println!(
        "diagnosis  {} (decision support, not a diagnosis)",
        loaded.spec().classes[diagnosis.class]
    );
    for (class, p) in loaded.spec().classes.iter().zip(&diagnosis.probabilities) {
        println!("  {class:<12} {:>6.2}%", 100.0 * p);
    }
    if diagnosis.is_borderline(loaded.spec().borderline_margin) {
        println!("  {BORDERLINE_NOTE}");
    }
    println!("bootstraps {}", stats.bootstraps);
    println!(
        "upload     {} B image, {:.1} MB server key; download {} B",
        upload.len(),
        server_key_upload.len() as f64 / 1e6,
        download.len()
    );
    for (name, d) in &phases {
        println!("  {name:<26} {:>9.3} s", d.as_secs_f64());
    }
    let linear_share =
        stats.linear_cpu.as_secs_f64() / (stats.linear_cpu + stats.bootstrap_cpu).as_secs_f64();
    println!(
        "  non-bootstrap share of engine CPU time: {:.2}%",
        100.0 * linear_share
    );
    println!(
        "simulator  exact: {}",
        format_scores(&exact.accumulators, &exact.probabilities)
    );
    println!(
        "           encrypted: {}",
        format_scores(&prediction.accumulators, &prediction.probabilities)
    );
    let distance = prediction
        .accumulators
        .iter()
        .zip(&exact.accumulators)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    println!("           max |encrypted − exact| = {distance:.2} accumulator units");
    for (j, class) in circuit.classes.iter().enumerate() {
        println!(
            "           noisy spread {class:<10} [{:.1}, {:.1}] over {} runs",
            spread.min[j], spread.max[j], spread.runs
        );
    }
    println!(
        "           encrypted result {} the noisy spread; noise changed the class in {}/{} runs",
        if spread.contains(&prediction, 0.0) {
            "lies inside"
        } else {
            "lies OUTSIDE"
        },
        spread.class_changes,
        spread.runs
    );
    Ok(())
}

fn format_scores(acc: &[f64], probabilities: &[f64]) -> String {
    acc.iter()
        .zip(probabilities)
        .map(|(a, p)| format!("acc {a:.1} (p={p:.3})"))
        .collect::<Vec<_>>()
        .join(", ")
}
