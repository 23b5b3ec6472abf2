//! `hexray-bench server`: what batching and the HTTP server cost. It prints figures; nothing
//! here passes or fails.
//!
//! 1. Amortised encrypted latency per image for batches of 1, 4 and 16 images, each batch one
//!    stream of bootstraps across its images (`evaluate_batch`).
//! 2. Server overhead: the same batch through the whole API in-process (routing, body checks,
//!    the job queue, polling, packing outputs), against the engine alone.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix_http::Request;
use actix_web::dev::Service;
use actix_web::{test, web, App};
use anyhow::{bail, Context, Result};
use hexray_crypto::{batch_body, ClientKey, EncryptedImage};
use hexray_engine::{evaluate_batch, LoadedModel};
use hexray_evaluator::server::auth::{Access, Owner};
use hexray_evaluator::server::jobs::{JobState, Status};
use hexray_evaluator::server::{configure, AppState, Config};
use hexray_model::preprocess::preprocess;

use crate::stats::median;
use crate::BENCH_MODEL;

const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../samples/pneumoniamnist");

#[derive(clap::Args)]
pub struct Args {
    /// Model file (the server serves the bundled one, which is the default here too).
    #[arg(long, default_value = BENCH_MODEL)]
    model: PathBuf,
    /// Batch sizes to time.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    batches: Vec<usize>,
    /// Images per batch in the server-overhead comparison.
    #[arg(long, default_value_t = 4)]
    overhead_batch: usize,
    /// Alternating engine/server rounds of that comparison; medians are compared, since this
    /// machine's speed drifts between runs.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

pub fn run(args: Args) -> Result<()> {
    let loaded = LoadedModel::from_file(&args.model).context("loading the model")?;
    let circuit = &loaded.circuit();
    let (client, compressed) = ClientKey::generate_deterministic(loaded.parameter_set(), 7);
    let key = compressed.decompress();
    let mut inputs = Vec::new();
    for entry in std::fs::read_dir(SAMPLES)? {
        let bytes = std::fs::read(entry?.path())?;
        inputs.push(preprocess(&bytes, &loaded.model().network.input)?);
    }
    let encrypt = |n: usize| -> Result<Vec<EncryptedImage>> {
        (0..n)
            .map(|i| Ok(client.encrypt(loaded.spec(), inputs[i % inputs.len()].view())?))
            .collect()
    };
    let threads = rayon::current_num_threads();
    println!(
        "model {} ({} bootstraps per image), {threads} threads\n",
        loaded.model().name,
        circuit.bootstrap_count()
    );
    println!(
        "{:>6} {:>10} {:>16} {:>14}",
        "batch", "total s", "s per image", "PBS per s"
    );
    for &n in &args.batches {
        let batch = encrypt(n)?;
        let start = Instant::now();
        let (_, stats) = evaluate_batch(&loaded, &key, batch, &|| {})?;
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "{n:>6} {seconds:>10.2} {:>16.3} {:>14.1}",
            seconds / n as f64,
            stats.bootstraps as f64 / seconds
        );
    }

    let n = args.overhead_batch;
    let body = batch_body::pack(
        &encrypt(n)?
            .iter()
            .map(EncryptedImage::to_bytes)
            .collect::<Result<Vec<_>, _>>()?,
    );
    let data = std::env::temp_dir().join(format!("hexray-bench-{}", std::process::id()));
    let (mut engine, mut server) = (Vec::new(), Vec::new());
    actix_web::rt::System::new().block_on(async {
        let api = start_api(&data, &args.model, threads, &compressed.to_bytes()?).await?;
        for _ in 0..args.rounds.max(1) {
            // Encrypted before the clock starts: encryption is the client's work, which the
            // API's round does not time either (its body is packed once, above).
            let batch = encrypt(n)?;
            let start = Instant::now();
            evaluate_batch(&loaded, &key, batch, &|| {})?;
            engine.push(start.elapsed().as_secs_f64());
            server.push(api.run(body.clone()).await?);
        }
        anyhow::Ok(())
    })?;
    std::fs::remove_dir_all(&data).ok();
    let (engine, server) = (median(&mut engine), median(&mut server));
    println!(
        "\nserver overhead, batch of {n}, median of {} rounds: engine {engine:.2} s, through the API {server:.2} s: {:+.1}%",
        args.rounds.max(1),
        100.0 * (server / engine - 1.0)
    );
    Ok(())
}

/// The whole API in-process (routing, body checks, the job queue, polling, packing outputs),
/// serving `model`, with one client's key registered and expanded, as for a returning client.
struct Api<S> {
    app: S,
    key_id: String,
    fingerprint: String,
}

type Response = actix_web::dev::ServiceResponse;

/// Starts [`Api`] on a fresh data directory.
async fn start_api(
    data_dir: &std::path::Path,
    model: &std::path::Path,
    threads: usize,
    key: &[u8],
) -> Result<Api<impl Service<Request, Response = Response, Error = actix_web::Error>>> {
    let models_dir = data_dir.join("models");
    std::fs::create_dir_all(&models_dir)?;
    std::fs::copy(model, models_dir.join("bench.hexray"))?;
    let mut config = Config::defaults(data_dir, threads);
    config.models_dir = Some(models_dir);
    config.queue.capacity = 4;
    config.limits.batch_images = 64;
    let state = web::Data::new(AppState::start(&config, Access::Proxied)?);
    let app = test::init_service(App::new().configure(configure(state.clone(), None))).await;
    let request = test::TestRequest::post()
        .uri("/api/v1/keys")
        .insert_header(("content-type", "application/octet-stream"))
        .set_payload(key.to_vec())
        .to_request();
    let registered: serde_json::Value = test::call_and_read_body_json(&app, request).await;
    let key_id = registered["key_id"]
        .as_str()
        .context("no key id")?
        .to_owned();
    state.keys.server_key(&Owner::open(), &key_id)?; // expand once
    let fingerprint = state
        .models
        .get("bench")
        .context("the model is served")?
        .loaded
        .spec()
        .fingerprint
        .clone();
    Ok(Api {
        app,
        key_id,
        fingerprint,
    })
}

impl<S: Service<Request, Response = Response, Error = actix_web::Error>> Api<S> {
    /// Seconds from submitting `body` to holding its outputs.
    async fn run(&self, body: Vec<u8>) -> Result<f64> {
        let start = Instant::now();
        let request = test::TestRequest::post()
            .uri(&format!(
                "/api/v1/jobs?model=bench&key={}&fingerprint={}",
                self.key_id, self.fingerprint
            ))
            .insert_header(("content-type", "application/octet-stream"))
            .set_payload(body)
            .to_request();
        let job: serde_json::Value = test::call_and_read_body_json(&self.app, request).await;
        let id = job["job_id"].as_str().context("no job id")?.to_owned();
        loop {
            let request = test::TestRequest::get()
                .uri(&format!("/api/v1/jobs/{id}"))
                .to_request();
            let status: Status = test::call_and_read_body_json(&self.app, request).await;
            match status.state {
                JobState::Done => break,
                JobState::Failed => bail!("the job failed: {:?}", status.error),
                _ => actix_web::rt::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let request = test::TestRequest::get()
            .uri(&format!("/api/v1/jobs/{id}/outputs"))
            .to_request();
        let outputs = test::call_and_read_body(&self.app, request).await;
        batch_body::unpack(&outputs, 64)?;
        Ok(start.elapsed().as_secs_f64())
    }
}
