//! `hexray-bench load`: several clinicians' browsers against one real server over HTTP, some of
//! them misbehaving, with every limit at its default. It prints the time per image that the
//! well-behaved clients see (p50, p95), what the misbehaving ones were refused, and whether
//! anything was lost: every well-behaved image must come back and decrypt.
//!
//! The misbehaving clients: a *hog*, which submits jobs as fast as it can for as long as the
//! run lasts, and a *staller*, which keeps upload bodies hanging and opens many progress
//! streams on its job.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpServer};
use anyhow::{Context, Result};
use hexray_crypto::{batch_body, ClientKey, EncryptedOutput, ParameterSet};
use hexray_engine::LoadedModel;
use hexray_evaluator::client::{ApiClient, ClientError};
use hexray_evaluator::server::auth::{Access, Scope, Tokens};
use hexray_evaluator::server::jobs::JobState;
use hexray_evaluator::server::{configure, AppState, Config};
use hexray_model::preprocess::preprocess;
use hexray_model::simulate;
use hexray_test_kit::misbehaving::stalled_upload;
use indicatif::ProgressBar;

use crate::stats::percentile;
use crate::BENCH_MODEL;

#[derive(clap::Args)]
pub struct Args {
    /// Clients, each with its own token and key.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// How many of them misbehave (a hog first, then a staller, alternately).
    #[arg(long, default_value_t = 2)]
    misbehaving: usize,
    /// Images each well-behaved client submits, in one job as the page does.
    #[arg(long, default_value_t = 4)]
    images: usize,
    /// Evaluation threads of the server (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Model file to serve.
    #[arg(long, default_value = BENCH_MODEL)]
    model: PathBuf,
}

/// How long a client waits after 503 `queue_full` (the server's Retry-After).
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// What one well-behaved client saw.
#[derive(Default)]
struct Good {
    /// Seconds from submitting an image's job to holding its decrypted diagnosis.
    latencies: Vec<f64>,
    /// Images whose diagnosis differs from the plaintext simulator's.
    disagreements: usize,
}

pub fn run(args: Args) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("hexray-bench-load-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("models"))?;
    std::fs::copy(&args.model, dir.join("models/bench.hexray"))?;
    let tokens_file = dir.join("tokens");
    let tokens: Vec<String> = (0..args.clients)
        .map(|i| Tokens::create(&tokens_file, &format!("client {i}"), Scope::Clinician))
        .collect::<Result<_, _>>()?;
    let threads = args.threads.unwrap_or_else(rayon::current_num_threads);
    let mut config = Config::defaults(&dir.join("data"), threads);
    config.models_dir = Some(dir.join("models"));
    // Short enough that stalled bodies come and go within one run.
    config.limits.body_timeout = Duration::from_secs(5);
    let base = start_server(&config, Tokens::load(&tokens_file)?)?;
    let model = LoadedModel::from_file(&args.model)?;
    let inputs = sample_inputs(&model)?;
    println!(
        "{} clients ({} misbehaving) × {} images, {} bootstraps each, server on {threads} threads",
        args.clients,
        args.misbehaving,
        args.images,
        model.circuit().bootstrap_count()
    );

    let done = Arc::new(AtomicBool::new(false));
    let refusals = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let good_images = (args.clients - args.misbehaving.min(args.clients)) * args.images;
    let bar = ProgressBar::new(good_images as u64);
    let start = Instant::now();
    let results: Vec<Result<Option<Good>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = tokens
            .iter()
            .enumerate()
            .map(|(i, token)| {
                let api = ApiClient::new(&base, Some(token));
                let (model, inputs, done, refusals, bar) =
                    (&model, &inputs, done.clone(), refusals.clone(), &bar);
                let images = args.images;
                let port = port_of(&base);
                let role = i.checked_sub(args.clients - args.misbehaving.min(args.clients));
                scope.spawn(move || -> Result<Option<Good>> {
                    let session = Session::open(api, model, i as u128)?;
                    match role {
                        None => session.well_behaved(inputs, images, bar).map(Some),
                        Some(k) if k % 2 == 0 => {
                            session.hog(inputs, &done, &refusals).map(|_| None)
                        }
                        Some(_) => session
                            .stall(port, token, inputs, &done, &refusals)
                            .map(|_| None),
                    }
                })
            })
            .collect();
        // The well-behaved clients are the first ones; stop the others once they are done.
        let mut results = Vec::new();
        for (i, handle) in handles.into_iter().enumerate() {
            if i == args.clients - args.misbehaving.min(args.clients) {
                done.store(true, Ordering::SeqCst);
            }
            results.push(handle.join().expect("a client thread panicked"));
        }
        done.store(true, Ordering::SeqCst);
        results
    });
    bar.finish_and_clear();
    let wall = start.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    let mut disagreements = 0;
    for result in results {
        if let Some(good) = result? {
            latencies.extend(good.latencies);
            disagreements += good.disagreements;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let lost = good_images - latencies.len();
    println!(
        "well-behaved images: {} of {good_images} back and decrypted (lost: {lost}); {disagreements} differ from the simulator",
        latencies.len()
    );
    println!(
        "time per image, job submitted → diagnosis decrypted: p50 {:.1} s, p95 {:.1} s, max {:.1} s",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.95),
        latencies.last().copied().unwrap_or(0.0)
    );
    println!(
        "wall {wall:.1} s: {:.1} well-behaved images per minute",
        60.0 * latencies.len() as f64 / wall
    );
    for (code, n) in refusals.lock().expect("refusals lock").iter() {
        println!("refused to the misbehaving clients: {n} × {code}");
    }
    let health = ApiClient::new(&base, None)
        .request("/api/v1/health", None)?
        .json()?;
    println!("server afterwards: {health}");
    std::fs::remove_dir_all(&dir).ok();
    anyhow::ensure!(lost == 0, "{lost} well-behaved images were lost");
    Ok(())
}

/// Starts the server on a free loopback port in its own thread; returns its base URL.
fn start_server(config: &Config, tokens: Tokens) -> Result<String> {
    let state = web::Data::new(AppState::start(config, Access::Tokens(tokens))?);
    let routes = configure(state, None);
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(move || App::new().configure(routes.clone()))
                .workers(2)
                .bind("127.0.0.1:0")
                .expect("a loopback port");
            let port = server.addrs()[0].port();
            sender.send(port).expect("the benchmark waits for the port");
            server.run().await
        })
    });
    let port = receiver.recv().context("the server did not start")?;
    Ok(format!("http://127.0.0.1:{port}"))
}

fn port_of(base: &str) -> u16 {
    base.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a base URL with a port")
}

/// The sample X-rays, preprocessed for `model`.
pub(crate) fn sample_inputs(model: &LoadedModel) -> Result<Vec<ndarray::Array3<i64>>> {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../samples/pneumoniamnist"
    ));
    let mut inputs = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    paths.sort();
    for path in paths {
        inputs.push(preprocess(&std::fs::read(&path)?, &model.spec().input)?);
    }
    anyhow::ensure!(!inputs.is_empty(), "no sample images in {}", dir.display());
    Ok(inputs)
}

/// One client's connection: its key registered and the spec fetched.
struct Session<'a> {
    api: ApiClient,
    model: &'a LoadedModel,
    client: ClientKey,
    key_id: String,
}

impl<'a> Session<'a> {
    fn open(api: ApiClient, model: &'a LoadedModel, seed: u128) -> Result<Self> {
        let (client, server_key) =
            ClientKey::generate_deterministic(ParameterSet::Ks32, 500 + seed);
        let key_id = api.register_key(&server_key.to_bytes()?)?;
        let spec = api.spec("bench")?;
        anyhow::ensure!(&spec == model.spec(), "the served spec is not the model's");
        Ok(Session {
            api,
            model,
            client,
            key_id,
        })
    }

    fn batch(&self, input: &ndarray::Array3<i64>) -> Result<Vec<u8>> {
        let blob = self
            .client
            .encrypt(self.model.spec(), input.view())?
            .to_bytes()?;
        Ok(batch_body::pack(&[blob]))
    }

    /// Submits its images as one job, as the page does, retrying after `Retry-After` while
    /// the queue is full; then waits, and decrypts each image's diagnosis.
    fn well_behaved(
        &self,
        inputs: &[ndarray::Array3<i64>],
        images: usize,
        bar: &ProgressBar,
    ) -> Result<Good> {
        let chosen: Vec<_> = (0..images).map(|k| &inputs[k % inputs.len()]).collect();
        let blobs = chosen
            .iter()
            .map(|input| {
                Ok(self
                    .client
                    .encrypt(self.model.spec(), input.view())?
                    .to_bytes()?)
            })
            .collect::<Result<Vec<_>>>()?;
        let batch = batch_body::pack(&blobs);
        let start = Instant::now();
        let job = loop {
            match self
                .api
                .submit("bench", &self.key_id, self.model.spec(), &batch)
            {
                Err(e) if e.code() == Some("queue_full") => std::thread::sleep(RETRY_AFTER),
                other => break other?,
            }
        };
        let status = self.api.wait(&job, Duration::from_secs(1800))?;
        anyhow::ensure!(status.state == JobState::Done, "job {job}: {status:?}");
        let outputs = self.api.outputs(&job)?;
        let blobs = batch_body::unpack(&outputs, images)?;
        anyhow::ensure!(blobs.len() == images, "job {job}: {} outputs", blobs.len());
        let seconds = start.elapsed().as_secs_f64();
        let mut good = Good::default();
        for (blob, input) in blobs.into_iter().zip(chosen) {
            let output = EncryptedOutput::from_bytes(
                blob,
                ParameterSet::Ks32,
                self.model.spec().output_len(),
            )?;
            let shown = self.client.decrypt(self.model.spec(), &output)?;
            good.latencies.push(seconds);
            let exact = simulate::exact(self.model.circuit(), input.view())?;
            good.disagreements += usize::from(shown.class != exact.class());
            bar.inc(1);
        }
        Ok(good)
    }

    /// Submits jobs as fast as the server takes them until the run ends.
    fn hog(
        &self,
        inputs: &[ndarray::Array3<i64>],
        done: &AtomicBool,
        refusals: &Mutex<BTreeMap<String, usize>>,
    ) -> Result<()> {
        let batch = self.batch(&inputs[0])?;
        while !done.load(Ordering::SeqCst) {
            match self
                .api
                .submit("bench", &self.key_id, self.model.spec(), &batch)
            {
                Ok(_) => {}
                Err(e) => count(refusals, &e)?,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Keeps upload bodies hanging and opens many progress streams, until the run ends.
    fn stall(
        &self,
        port: u16,
        token: &str,
        inputs: &[ndarray::Array3<i64>],
        done: &AtomicBool,
        refusals: &Mutex<BTreeMap<String, usize>>,
    ) -> Result<()> {
        let job = self.api.submit(
            "bench",
            &self.key_id,
            self.model.spec(),
            &self.batch(&inputs[0])?,
        )?;
        while !done.load(Ordering::SeqCst) {
            // Requests held open, never read to their end: bodies that never finish, and
            // progress streams nobody reads.
            let mut held = (0..4)
                .map(|_| stalled_upload(port, token))
                .collect::<std::io::Result<Vec<_>>>()?;
            for _ in 0..25 {
                held.push(open_stream(port, token, &job)?);
            }
            for stream in &mut held {
                if let Some(code) = refusal_of(stream)? {
                    *refusals
                        .lock()
                        .expect("refusals lock")
                        .entry(code)
                        .or_default() += 1;
                }
            }
            std::thread::sleep(Duration::from_secs(6));
        }
        Ok(())
    }
}

/// A progress stream request on a raw connection.
fn open_stream(port: u16, token: &str, job: &str) -> Result<TcpStream> {
    use std::io::Write;
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    write!(
        stream,
        "GET /api/v1/jobs/{job}/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
    )?;
    Ok(stream)
}

/// The API error code of an answer that came back at once (a refusal), if any: a held request
/// that is still going (a stream, a body being awaited) has none yet.
fn refusal_of(stream: &mut TcpStream) -> Result<Option<String>> {
    use std::io::Read;
    stream.set_read_timeout(Some(Duration::from_millis(300)))?;
    let mut head = vec![0u8; 4096];
    let n = match stream.read(&mut head) {
        Ok(n) => n,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e.into()),
    };
    let text = String::from_utf8_lossy(&head[..n]);
    if text.starts_with("HTTP/1.1 2") {
        return Ok(None);
    }
    let code = text
        .split("\"code\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("(no code)");
    Ok(Some(code.to_owned()))
}

/// Counts a refusal by its code; any other error ends the run.
fn count(refusals: &Mutex<BTreeMap<String, usize>>, error: &ClientError) -> Result<()> {
    let code = error
        .code()
        .with_context(|| format!("not a refusal: {error}"))?;
    *refusals
        .lock()
        .expect("refusals lock")
        .entry(code.to_owned())
        .or_default() += 1;
    Ok(())
}
