//! `hexray serve`: the self-hosted server. Every flag has an environment variable, for systemd
//! units and containers.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::at_least;
use actix_cors::Cors;
use actix_web::http::header;
use actix_web::middleware::Logger;
use actix_web::{web, App, HttpServer};
use anyhow::{bail, Context, Result};
use hexray_evaluator::server::auth::{Access, Tokens};
use hexray_evaluator::server::client_address::{AddressRange, TrustedProxies};
use hexray_evaluator::server::jobs::QueueConfig;
use hexray_evaluator::server::keys::KeyLimits;
use hexray_evaluator::server::postgres::PoolLimits;
use hexray_evaluator::server::{
    configure, defaults, node_name, security_headers, AppState, Config, Limits,
};

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on. Put a TLS reverse proxy in front to serve other machines.
    #[arg(long, env = "HEXRAY_BIND", default_value = defaults::BIND)]
    bind: String,
    /// Tokens file (`hexray token new`): every API route but health and the OpenAPI document
    /// then needs `Authorization: Bearer <token>`.
    #[arg(long, env = "HEXRAY_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
    /// Run without tokens on a non-loopback address: only behind a reverse proxy that
    /// authenticates every request itself. From the environment, `1`, `true`, `yes` or `on`
    /// (and `0`, `false`, `no` or `off`), as service managers write it.
    #[arg(long, env = "HEXRAY_ALLOW_OPEN", value_parser = clap::builder::BoolishValueParser::new())]
    allow_open: bool,
    /// Origin allowed to call the API from a browser when the page is hosted elsewhere (the
    /// hospital's own web server), e.g. `https://pages.hospital.example`.
    #[arg(long, env = "HEXRAY_CORS_ORIGIN")]
    cors_origin: Option<String>,
    /// Directory of *.hexray model files, each with its model card beside it as
    /// `<id>.card.md` where there is one; without it, the bundled models are served.
    #[arg(long, env = "HEXRAY_MODELS_DIR")]
    models_dir: Option<PathBuf>,
    /// The id of the model that clients get when they choose none (listed first). Without it,
    /// the first bundled model, `screen-mlp-32`, or the models folder's first id in sort order.
    #[arg(long, env = "HEXRAY_DEFAULT_MODEL")]
    default_model: Option<String>,
    /// Where registered server keys are stored (the embedded back end).
    #[arg(long, env = "HEXRAY_DATA_DIR", default_value = defaults::DATA_DIR)]
    data_dir: PathBuf,
    /// A PostgreSQL database that several `hexray serve` nodes share for registered keys and
    /// the job queue, e.g. `postgres://hexray@db/hexray`; the schema is created or updated at
    /// start. Without it, keys stay in the data directory and jobs in memory.
    #[arg(long, env = "HEXRAY_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The CA certificate (PEM) that signs the database server's certificate, when the URL
    /// names none with `sslrootcert`. A database on another host is reached over TLS, verified
    /// against it; plain text needs `sslmode=disable` in the URL.
    #[arg(long, env = "HEXRAY_DATABASE_CA_FILE")]
    database_ca_file: Option<PathBuf>,
    /// Connections this node may open to the database, all its requests and workers together
    /// (at least 3: a worker and its lease renewal hold one each while a request holds another).
    #[arg(long, env = "HEXRAY_DATABASE_CONNECTIONS", default_value_t = defaults::DATABASE_CONNECTIONS, value_parser = at_least::<3, usize>)]
    database_connections: usize,
    /// This node's name in `/api/v1/health` and in the shared queue, unique among the nodes that
    /// share a database; by default the host name (a pod's name) and a random suffix.
    #[arg(long, env = "HEXRAY_NODE_NAME")]
    node_name: Option<String>,
    /// The page and wasm client (`web/`, built by `scripts/build-web.sh`).
    #[arg(long, env = "HEXRAY_WEB_DIR", default_value = defaults::WEB_DIR)]
    web_dir: PathBuf,
    /// Threads for encrypted evaluation (default: all cores). With a shared database, a node
    /// claims at most this many images at a time.
    #[arg(long, env = "HEXRAY_THREADS", value_parser = at_least::<1, usize>)]
    threads: Option<usize>,
    /// Jobs evaluated at the same time; they share the threads.
    #[arg(long, env = "HEXRAY_WORKERS", default_value_t = defaults::WORKERS, value_parser = at_least::<1, usize>)]
    workers: usize,
    /// Jobs that may wait (all nodes together, with a shared database); beyond this the server
    /// answers 503 with Retry-After.
    #[arg(long, env = "HEXRAY_QUEUE_LIMIT", default_value_t = defaults::QUEUE_LIMIT, value_parser = at_least::<1, usize>)]
    queue_limit: usize,
    /// Jobs one token may have queued or running (429 beyond).
    #[arg(long, env = "HEXRAY_MAX_JOBS_PER_TOKEN", default_value_t = defaults::MAX_JOBS_PER_TOKEN, value_parser = at_least::<1, usize>)]
    max_jobs_per_token: usize,
    /// Bulk jobs (`POST /api/v1/bulk-jobs`, up to a few hundred MB each on disk or in the
    /// database) that may be queued or running, all tokens together (503 beyond); 0 switches
    /// the bulk path off: its routes answer 404, and on a shared database this node claims no
    /// bulk job.
    #[arg(long, env = "HEXRAY_BULK_QUEUE_LIMIT", default_value_t = defaults::BULK_QUEUE_LIMIT)]
    bulk_queue_limit: usize,
    /// Images one token may have in the bulk jobs the server keeps (queued, running, or finished
    /// within --job-retention-s), 429 beyond, each bulk job counted as its batch's 8192 slots
    /// whatever it declares: it bounds how many chosen images a token can have the model
    /// answer exactly.
    #[arg(long, env = "HEXRAY_MAX_BULK_IMAGES_PER_TOKEN", default_value_t = defaults::MAX_BULK_IMAGES_PER_TOKEN)]
    max_bulk_images_per_token: usize,
    /// Most images in one job.
    #[arg(long, env = "HEXRAY_MAX_BATCH", default_value_t = defaults::MAX_BATCH, value_parser = at_least::<1, usize>)]
    max_batch: usize,
    /// Keys one token may have registered (429 beyond).
    #[arg(long, env = "HEXRAY_MAX_KEYS_PER_TOKEN", default_value_t = defaults::MAX_KEYS_PER_TOKEN, value_parser = at_least::<1, usize>)]
    max_keys_per_token: usize,
    /// Disk for stored keys, all tokens together, in MiB (507 beyond).
    #[arg(long, env = "HEXRAY_MAX_KEY_STORAGE_MIB", default_value_t = defaults::MAX_KEY_STORAGE_MIB)]
    max_key_storage_mib: u64,
    /// Keys unused for this many days are deleted; the browser uploads them again.
    #[arg(long, env = "HEXRAY_KEY_EXPIRY_DAYS", default_value_t = defaults::KEY_EXPIRY_DAYS, value_parser = at_least::<1, u64>)]
    key_expiry_days: u64,
    /// Bodies one token may be uploading at once to this node (429 beyond). Counted per node:
    /// behind a load balancer, N nodes let a token upload N times as many.
    #[arg(long, env = "HEXRAY_MAX_UPLOADS_PER_TOKEN", default_value_t = defaults::MAX_UPLOADS_PER_TOKEN, value_parser = at_least::<1, usize>)]
    max_uploads_per_token: usize,
    /// Seconds a request body has to arrive in full (408 beyond).
    #[arg(long, env = "HEXRAY_BODY_TIMEOUT_S", default_value_t = defaults::BODY_TIMEOUT_S, value_parser = at_least::<1, u64>)]
    body_timeout_s: u64,
    /// Progress streams open at once on one job at this node (429 beyond). Counted per node,
    /// like the upload slots.
    #[arg(long, env = "HEXRAY_MAX_STREAMS_PER_JOB", default_value_t = defaults::MAX_STREAMS_PER_JOB, value_parser = at_least::<1, usize>)]
    max_streams_per_job: usize,
    /// Memory for expanded server keys, in MiB (about 85 MiB each).
    #[arg(long, env = "HEXRAY_KEY_CACHE_MIB", default_value_t = defaults::KEY_CACHE_MIB)]
    key_cache_mib: usize,
    /// With a shared database: seconds a node's claim on work lasts unless renewed (about once
    /// a second); the work of a node that died is taken by another once its lease runs out.
    #[arg(long, env = "HEXRAY_LEASE_S", default_value_t = defaults::LEASE_S, value_parser = at_least::<1, u64>)]
    lease_s: u64,
    /// How long finished jobs' outputs are kept, in seconds (at least a minute, for clients to
    /// fetch them).
    #[arg(long, env = "HEXRAY_JOB_RETENTION_S", default_value_t = defaults::JOB_RETENTION_S, value_parser = at_least::<60, u64>)]
    job_retention_s: u64,
    /// Seconds open requests get to finish after SIGTERM before the node hands its claimed
    /// work back and exits: keep it under the service manager's stop timeout (Kubernetes'
    /// terminationGracePeriodSeconds, 30 s by default).
    #[arg(long, env = "HEXRAY_SHUTDOWN_TIMEOUT_S", default_value_t = defaults::SHUTDOWN_TIMEOUT_S)]
    shutdown_timeout_s: u64,
    /// Reverse proxies (addresses or CIDR ranges, comma-separated) whose `X-Forwarded-For`
    /// names the caller, so that requests without a token are rate-limited per caller rather
    /// than all at the proxy's address: the proxy on this machine (127.0.0.1, ::1), or the
    /// addresses an ingress controller connects from. Name only proxies that append the address
    /// they were reached from, and no range callers come from; any other peer's header is
    /// ignored.
    #[arg(
        long = "trusted-proxy",
        env = "HEXRAY_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<AddressRange>,
    /// Threads answering HTTP requests.
    #[arg(long, env = "HEXRAY_HTTP_WORKERS", default_value_t = defaults::HTTP_WORKERS, value_parser = at_least::<1, usize>)]
    http_workers: usize,
}

pub fn serve(args: Args) -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let access = access(&args)?;
    let defaults = Config::defaults(&args.data_dir, 1);
    let config = Config {
        models_dir: args.models_dir,
        default_model: args.default_model,
        data_dir: args.data_dir,
        database_url: args.database_url,
        database_ca_file: args.database_ca_file,
        database_pool: PoolLimits {
            max: args.database_connections,
            ..defaults.database_pool
        },
        node: args.node_name.unwrap_or_else(node_name),
        queue: QueueConfig {
            workers: args.workers,
            threads: args.threads.unwrap_or_else(rayon::current_num_threads),
            capacity: args.queue_limit,
            retention: Duration::from_secs(args.job_retention_s),
            per_owner: args.max_jobs_per_token,
            bulk_capacity: args.bulk_queue_limit,
            bulk_images_per_owner: args.max_bulk_images_per_token,
            lease: Duration::from_secs(args.lease_s),
        },
        key_cache_bytes: args.key_cache_mib << 20,
        keys: KeyLimits {
            per_owner: args.max_keys_per_token,
            storage_bytes: args.max_key_storage_mib << 20,
            expiry: Duration::from_secs(args.key_expiry_days * 86_400),
        },
        limits: Limits {
            batch_images: args.max_batch,
            uploads_per_owner: args.max_uploads_per_token,
            body_timeout: Duration::from_secs(args.body_timeout_s),
            streams_per_job: args.max_streams_per_job,
        },
        trusted_proxies: TrustedProxies::new(args.trusted_proxies.clone()),
    };
    if !args.trusted_proxies.is_empty() {
        let ranges: Vec<String> = args.trusted_proxies.iter().map(|r| r.to_string()).collect();
        log::info!(
            "believing X-Forwarded-For from the trusted proxies {}",
            ranges.join(", ")
        );
    }
    let state = web::Data::new(AppState::start(&config, access).context("starting the server")?);
    for model in state.models.iter() {
        log::info!(
            "serving model {} ({} bootstraps per image)",
            model.id,
            model.loaded.circuit().bootstrap_count()
        );
    }
    let web_dir = args.web_dir.is_dir().then_some(args.web_dir.clone());
    if web_dir.is_none() {
        log::warn!(
            "{} is not a directory: serving the API only",
            args.web_dir.display()
        );
    }
    let routes = configure(state.clone(), web_dir.as_deref());
    let cors_origin = args.cors_origin;
    log::info!("listening on http://{}", args.bind);
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            App::new()
                .wrap(cors(cors_origin.as_deref()))
                .wrap(security_headers())
                // Request line, status, size and time: never a body.
                .wrap(Logger::new("%r %s %b B %D ms"))
                .configure(routes.clone())
        })
        .workers(args.http_workers)
        // On SIGTERM (a pod scaled down), open requests get time to finish, then the node
        // hands its claimed work back to the queue below.
        .shutdown_timeout(args.shutdown_timeout_s)
        .bind(&args.bind)
        .with_context(|| format!("binding {}", args.bind))?
        .run()
        .await
        .context("running the server")
    })?;
    state.jobs.stop().context("handing claimed work back")
}

/// Who may use the API: the tokens file's tokens, or anyone, which is allowed only on loopback
/// unless the operator says a proxy authenticates.
fn access(args: &Args) -> Result<Access> {
    if let Some(path) = &args.tokens_file {
        let tokens = Tokens::load(path)?;
        if tokens.is_empty() {
            bail!(
                "{} holds no token: create one with `hexray token new --label NAME --tokens-file {}`",
                path.display(),
                path.display()
            );
        }
        log::info!("{} tokens accepted", tokens.len());
        return Ok(Access::Tokens(tokens));
    }
    let addrs: Vec<SocketAddr> = args
        .bind
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", args.bind))?
        .collect();
    let loopback = !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback());
    if !loopback && !args.allow_open {
        bail!(
            "refusing to serve {} without authentication: give --tokens-file (see `hexray token \
             new`), or --allow-open behind a reverse proxy that authenticates every request",
            args.bind
        );
    }
    log::warn!(
        "running WITHOUT authentication: anyone who can reach {} can use this server",
        args.bind
    );
    // A proxy on this machine forwards with its own Host header: with --allow-open the
    // operator says one is in front, so only a bare loopback server checks the Host.
    Ok(if loopback && !args.allow_open {
        Access::Loopback {
            cors_origin: args.cors_origin.clone(),
        }
    } else {
        Access::Proxied
    })
}

/// CORS for a page hosted on another origin: only that origin, only the API's methods and
/// headers.
fn cors(origin: Option<&str>) -> Cors {
    match origin {
        Some(origin) => Cors::default()
            .allowed_origin(origin)
            .allowed_methods(["GET", "POST", "DELETE"])
            .allowed_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([header::RETRY_AFTER, header::LOCATION])
            .max_age(3600),
        None => Cors::default(),
    }
}
