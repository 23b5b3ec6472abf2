//! `hexray serve`: the self-hosted server. Every flag has an environment variable, for systemd
//! units and containers.

use std::path::PathBuf;
use std::time::Duration;

use actix_web::middleware::Logger;
use actix_web::{web, App, HttpServer};
use anyhow::{Context, Result};
use hexray_evaluator::server::jobs::QueueConfig;
use hexray_evaluator::server::{configure, AppState, Config, Limits};

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on. Put a TLS reverse proxy in front to serve other machines.
    #[arg(long, env = "HEXRAY_BIND", default_value = "127.0.0.1:8080")]
    bind: String,
    /// Directory of *.hexray model files; without it, the bundled model is served.
    #[arg(long, env = "HEXRAY_MODELS_DIR")]
    models_dir: Option<PathBuf>,
    /// Where registered server keys are stored.
    #[arg(long, env = "HEXRAY_DATA_DIR", default_value = "hexray-data")]
    data_dir: PathBuf,
    /// The page and wasm client (`web/`, built by `scripts/build-web.sh`).
    #[arg(long, env = "HEXRAY_WEB_DIR", default_value = "web")]
    web_dir: PathBuf,
    /// Threads for encrypted evaluation (default: all cores).
    #[arg(long, env = "HEXRAY_THREADS")]
    threads: Option<usize>,
    /// Jobs evaluated at the same time; they share the threads.
    #[arg(long, env = "HEXRAY_WORKERS", default_value_t = 1)]
    workers: usize,
    /// Jobs that may wait; beyond this the server answers 503 with Retry-After.
    #[arg(long, env = "HEXRAY_QUEUE_LIMIT", default_value_t = 16)]
    queue_limit: usize,
    /// Most images in one job.
    #[arg(long, env = "HEXRAY_MAX_BATCH", default_value_t = 16)]
    max_batch: usize,
    /// Largest server key upload, in MiB.
    #[arg(long, env = "HEXRAY_MAX_KEY_MIB", default_value_t = 64)]
    max_key_mib: usize,
    /// Memory for expanded server keys, in MiB (about 85 MiB each).
    #[arg(long, env = "HEXRAY_KEY_CACHE_MIB", default_value_t = 1024)]
    key_cache_mib: usize,
    /// How long finished jobs' outputs are kept, in seconds.
    #[arg(long, env = "HEXRAY_JOB_RETENTION_S", default_value_t = 3600)]
    job_retention_s: u64,
    /// Threads answering HTTP requests.
    #[arg(long, env = "HEXRAY_HTTP_WORKERS", default_value_t = 2)]
    http_workers: usize,
}

pub fn serve(args: Args) -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = Config {
        models_dir: args.models_dir,
        data_dir: args.data_dir,
        queue: QueueConfig {
            workers: args.workers.max(1),
            threads: args
                .threads
                .unwrap_or_else(rayon::current_num_threads)
                .max(1),
            capacity: args.queue_limit.max(1),
            retention: Duration::from_secs(args.job_retention_s),
        },
        key_cache_bytes: args.key_cache_mib << 20,
        limits: Limits {
            key_bytes: args.max_key_mib << 20,
            batch_images: args.max_batch.max(1),
        },
    };
    let state = web::Data::new(AppState::start(&config).context("starting the server")?);
    for model in state.models.iter() {
        log::info!(
            "serving model {} ({} bootstraps per image)",
            model.id,
            model.loaded.circuit.bootstrap_count()
        );
    }
    let web_dir = args.web_dir.is_dir().then_some(args.web_dir.clone());
    if web_dir.is_none() {
        log::warn!(
            "{} is not a directory: serving the API only",
            args.web_dir.display()
        );
    }
    let routes = configure(state, web_dir.as_deref());
    log::info!("listening on http://{}", args.bind);
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            App::new()
                // Request line, status, size and time: never a body.
                .wrap(Logger::new("%r %s %b B %D ms"))
                .configure(routes.clone())
        })
        .workers(args.http_workers.max(1))
        .bind(&args.bind)
        .with_context(|| format!("binding {}", args.bind))?
        .run()
        .await
        .context("running the server")
    })
}
