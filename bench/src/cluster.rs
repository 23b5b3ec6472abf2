//! `hexray-bench cluster`: `hexray serve` nodes sharing one PostgreSQL database, each limited
//! to one evaluation thread, so that the scaling shows on a small machine. It prints figures;
//! nothing here passes or fails.
//!
//! - The amortised time per image against batch size, on one node and on two: each batch is
//!   one job, which the nodes split by image. The largest batch gives the throughput in images
//!   per minute.
//! - The time to recover a killed node's job: two nodes, one image; the node evaluating it is
//!   killed with SIGKILL, and the other finishes it once the lease has run out.
//! - The database's overhead per job: the same one-image jobs on one embedded node and on one
//!   PostgreSQL node.
//!
//! It works in a fresh database `hexray_bench_<pid>` on the server of `--database-url` (which
//! needs the right to create databases), dropped at the end.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hexray_crypto::{batch_body, ClientKey};
use hexray_engine::LoadedModel;
use hexray_evaluator::client::ApiClient;
use hexray_evaluator::launch;
use hexray_evaluator::server::jobs::{JobState, Progress, Status};
use hexray_evaluator::server::postgres::connection::other_database;
use hexray_evaluator::server::postgres::Connection;
use hexray_model::ClientSpec;
use indicatif::ProgressBar;
use ndarray::Array3;

use crate::load::sample_inputs;
use crate::stats::median_ms;

#[derive(clap::Args)]
pub struct Args {
    /// A PostgreSQL server (any database on it); the benchmark creates its own database there.
    #[arg(long, env = "HEXRAY_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Model file the nodes serve.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/pneumonia-a.hexray"))]
    model: PathBuf,
    /// Batch sizes to time, each as one job.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    batches: Vec<usize>,
    /// The nodes' lease, in seconds: how long a dead node's claim holds its work.
    #[arg(long, default_value_t = 5)]
    lease_s: u64,
    /// One-image jobs timed on each back end for the database's overhead.
    #[arg(long, default_value_t = 5)]
    overhead_jobs: usize,
    /// The `hexray` binary the nodes run; by default the one beside this benchmark, where
    /// `cargo build --release -p hexray-evaluator` puts it.
    #[arg(long)]
    hexray: Option<PathBuf>,
}

/// A `hexray serve` process and a client of it; killed when dropped.
struct Node {
    process: Child,
    api: ApiClient,
    _data: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// What every node of a run is started with.
struct Nodes<'a> {
    hexray: &'a Path,
    models: &'a Path,
    database: Option<&'a str>,
    lease_s: u64,
}

impl Nodes<'_> {
    /// Starts node `name` with one evaluation thread, and waits until it answers.
    fn start(&self, name: &str) -> Result<Node> {
        let data = tempfile::tempdir()?;
        let port = launch::free_port()?;
        let lease = self.lease_s.to_string();
        let mut flags: Vec<&OsStr> = vec!["--models-dir".as_ref(), self.models.as_os_str()];
        flags.extend(["--threads", "1", "--node-name", name, "--lease-s", &lease].map(OsStr::new));
        flags.extend(["--max-batch", "64", "--queue-limit", "64"].map(OsStr::new));
        if let Some(url) = self.database {
            flags.extend(["--database-url", url].map(OsStr::new));
        }
        let process = launch::start(self.hexray, data.path(), port, &flags)
            .with_context(|| format!("starting node {name}"))?;
        Ok(Node {
            process,
            api: ApiClient::new(&format!("http://127.0.0.1:{port}"), None),
            _data: data,
        })
    }
}

/// A client with its key registered on a node, ready to submit encrypted batches.
struct Clinician {
    client: ClientKey,
    key: String,
    spec: ClientSpec,
    model: String,
    inputs: Vec<Array3<i64>>,
}

impl Clinician {
    /// Submits `images` sample images (cycling through them) as one job to `api`; returns
    /// the job id once accepted.
    fn submit(&self, api: &ApiClient, images: usize) -> Result<String> {
        let blobs = (0..images)
            .map(|i| {
                let input = &self.inputs[i % self.inputs.len()];
                self.client
                    .encrypt_deterministic(&self.spec, input.view(), i as u128)?
                    .to_bytes()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(api.submit(
            &self.model,
            &self.key,
            &self.spec,
            &batch_body::pack(&blobs),
        )?)
    }
}

/// Polls until `ready`, every 50 ms (finer than [`ApiClient::wait`], as the timings here are
/// short); fails on a failed job or after ten minutes.
fn until(api: &ApiClient, job: &str, ready: impl Fn(&Status) -> bool) -> Result<Status> {
    let started = Instant::now();
    loop {
        let status = api.status(job)?;
        if ready(&status) {
            return Ok(status);
        }
        if status.state == JobState::Failed || started.elapsed() > Duration::from_secs(600) {
            bail!("job {job}: {status:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn done(status: &Status) -> bool {
    status.state == JobState::Done
}

/// Seconds from submitting a batch of `images` to its job being done, and the job's final
/// status.
fn time_job(api: &ApiClient, clinician: &Clinician, images: usize) -> Result<(f64, Status)> {
    let started = Instant::now();
    let job = clinician.submit(api, images)?;
    let status = until(api, &job, done)?;
    Ok((started.elapsed().as_secs_f64(), status))
}

pub fn run(args: Args) -> Result<()> {
    let hexray = match args.hexray {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("hexray"),
    };
    if !hexray.is_file() {
        bail!(
            "no hexray binary at {}: build it (cargo build --release -p hexray-evaluator) or name \
             one with --hexray",
            hexray.display()
        );
    }
    let model = LoadedModel::from_file(&args.model)?;
    let models = tempfile::tempdir()?;
    std::fs::copy(&args.model, models.path().join("bench.hexray"))?;
    let (client, server_key) = ClientKey::generate_deterministic(model.parameter_set(), 31);
    let server_key = server_key.to_bytes()?;
    let database = Scratch::create(&args.database_url)?;
    let shared = Nodes {
        hexray: &hexray,
        models: models.path(),
        database: Some(&database.url),
        lease_s: args.lease_s,
    };
    let register = |node: &Node| -> Result<Clinician> {
        Ok(Clinician {
            key: node.api.register_key(&server_key)?,
            spec: node.api.spec("bench")?,
            client: client.clone(),
            model: "bench".into(),
            inputs: sample_inputs(&model)?,
        })
    };
    println!(
        "model {} ({} bootstraps per image), each node on 1 evaluation thread",
        args.model.display(),
        model.circuit().bootstrap_count()
    );

    // Amortised time per image against batch size, on one node and on two.
    let mut seconds = Vec::new();
    let images: usize = args.batches.iter().sum();
    for count in [1, 2] {
        let nodes = (0..count)
            .map(|i| shared.start(&format!("node-{i}")))
            .collect::<Result<Vec<_>>>()?;
        let clinician = register(&nodes[0])?;
        // Every node expands the key before the clock runs, as a warm cluster would have.
        for node in &nodes {
            time_job(&node.api, &clinician, 1)?;
        }
        let bar = ProgressBar::new(images as u64).with_message(format!("{count} node(s)"));
        let mut row = Vec::new();
        for &batch in &args.batches {
            row.push(time_job(&nodes[0].api, &clinician, batch)?.0);
            bar.inc(batch as u64);
        }
        bar.finish_and_clear();
        seconds.push(row);
    }
    println!("\nbatch  1 node: s/image  2 nodes: s/image  speed-up");
    for (i, &batch) in args.batches.iter().enumerate() {
        let (one, two) = (seconds[0][i] / batch as f64, seconds[1][i] / batch as f64);
        println!("{batch:>5}  {one:>15.2}  {two:>16.2}  {:>8.2}×", one / two);
    }
    let largest = args.batches.len() - 1;
    let per_minute = |s: f64| args.batches[largest] as f64 * 60.0 / s;
    println!(
        "throughput, {} queued images: 1 node {:.1} images/min, 2 nodes {:.1} images/min",
        args.batches[largest],
        per_minute(seconds[0][largest]),
        per_minute(seconds[1][largest])
    );

    // A killed node's job.
    let nodes = [shared.start("node-a")?, shared.start("node-b")?];
    let clinician = register(&nodes[0])?;
    for node in &nodes {
        time_job(&node.api, &clinician, 1)?;
    }
    let single = seconds[0][0];
    let job = clinician.submit(&nodes[0].api, 1)?;
    let running = until(
        &nodes[0].api,
        &job,
        |s| matches!(s.progress, Progress::Bootstraps { bootstraps_done, .. } if bootstraps_done > 0),
    )?;
    let [a, b] = nodes;
    let (victim, survivor, name) = if running.node.as_deref() == Some("node-a") {
        (a, b, "node-b")
    } else {
        (b, a, "node-a")
    };
    drop(victim);
    let killed = Instant::now();
    until(&survivor.api, &job, |s| s.node.as_deref() == Some(name))?;
    let claimed = killed.elapsed().as_secs_f64();
    until(&survivor.api, &job, done)?;
    let recovery = killed.elapsed().as_secs_f64();
    println!(
        "\nrecovery after SIGKILL mid-image (lease {} s): claimed again after {claimed:.1} s, \
         done after {recovery:.1} s (one image takes {single:.1} s on an idle node)",
        args.lease_s
    );
    drop(survivor);

    // The database's overhead per job: the time a job spends outside evaluation (submission,
    // waiting to be claimed, writing its outputs, the client's poll), on each back end.
    let mut rows = Vec::new();
    for database in [None, Some(database.url.as_str())] {
        let nodes = Nodes { database, ..shared };
        let node = nodes.start("solo")?;
        let clinician = register(&node)?;
        time_job(&node.api, &clinician, 1)?;
        let mut walls = Vec::new();
        let mut outside = Vec::new();
        for _ in 0..args.overhead_jobs.max(1) {
            let (wall, status) = time_job(&node.api, &clinician, 1)?;
            let evaluating = status.seconds.context("a done job has seconds")?;
            walls.push(Duration::from_secs_f64(wall));
            outside.push(Duration::from_secs_f64(wall - evaluating));
        }
        let health = (0..20)
            .map(|_| {
                let started = Instant::now();
                node.api.request("/api/v1/health", None)?;
                Ok(started.elapsed())
            })
            .collect::<Result<Vec<_>>>()?;
        let name = if database.is_some() {
            "PostgreSQL"
        } else {
            "embedded"
        };
        rows.push((
            name,
            median_ms(walls),
            median_ms(outside),
            median_ms(health),
        ));
    }
    println!(
        "\none-image jobs, medians of {}: back end, submit to done, outside evaluation, health",
        args.overhead_jobs
    );
    for (name, wall, outside, health) in &rows {
        println!("{name:>10}  {wall:>8.0} ms  {outside:>8.0} ms  {health:>6.2} ms");
    }
    println!(
        "database overhead per job: {:+.0} ms outside evaluation",
        rows[1].2 - rows[0].2
    );
    Ok(())
}

/// A database of the benchmark's own, dropped at the end.
struct Scratch {
    admin: String,
    name: String,
    url: String,
}

impl Scratch {
    fn create(admin: &str) -> Result<Self> {
        let name = format!("hexray_bench_{}", std::process::id());
        let scratch = Scratch {
            admin: admin.to_owned(),
            url: other_database(admin, &name),
            name,
        };
        scratch.admin(&format!("CREATE DATABASE {}", scratch.name))?;
        Ok(scratch)
    }

    fn admin(&self, sql: &str) -> Result<()> {
        let mut client = Connection::parse(&self.admin, None)?
            .connect()
            .context("connecting to PostgreSQL")?;
        client.simple_query(sql).with_context(|| sql.to_owned())?;
        Ok(())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = self.admin(&format!("DROP DATABASE {} WITH (FORCE)", self.name)) {
            eprintln!("could not drop {}: {e:#}", self.name);
        }
    }
}
