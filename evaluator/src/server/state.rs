//! A server's configuration and its shared state: storage, models, metrics, the queue-depth
//! cache, and the per-token slots that bound uploads and progress streams. Every route reads
//! it; nothing here speaks HTTP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::auth::{Access, Owner};
use super::client_address::TrustedProxies;
use super::defaults;
use super::error::ApiError;
use super::evaluation::Evaluator;
use super::jobs::{Depth, JobStorage, MemoryJobs, QueueConfig};
use super::keys::{DirectoryKeys, KeyLimits, KeyStorage};
use super::metrics::Metrics;
use super::models::{Models, ServedModel};
use super::postgres::{Database, DatabaseError, PgJobs, PgKeys, PoolLimits};
use super::rate_limit::RateLimit;
use hexray_engine::LoadError;
use hexray_model::bulk_spec::BulkSpec;

/// Everything a server needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// `*.hexray` files to serve; `None` serves the bundled models.
    pub models_dir: Option<PathBuf>,
    /// The id of the model that clients get when they choose none; `None`: the first bundled
    /// model, or the folder's first id in sort order.
    pub default_model: Option<String>,
    /// Where registered keys are persisted by the embedded back end, and where bulk uploads are
    /// spooled (`spool/`) by either back end. One server process per directory.
    pub data_dir: PathBuf,
    /// A PostgreSQL database shared by several evaluator nodes (`postgres://…`) for keys and
    /// jobs; `None`: the embedded back end, in `data_dir` and memory.
    pub database_url: Option<String>,
    /// The CA that signs the database's certificate, when the URL names none (`sslrootcert`).
    pub database_ca_file: Option<PathBuf>,
    /// This node's connections to the database.
    pub database_pool: PoolLimits,
    /// This node's name in health reports ([`node_name`] by default).
    pub node: String,
    pub queue: QueueConfig,
    /// Memory for expanded server keys.
    pub key_cache_bytes: usize,
    pub keys: KeyLimits,
    pub limits: Limits,
    /// The reverse proxies whose `X-Forwarded-For` names the client for the per-address limit.
    pub trusted_proxies: TrustedProxies,
}

impl Config {
    /// A server of the bundled model on `data_dir` with `threads` evaluation threads and the
    /// command line's default limits: for benchmarks and tests.
    pub fn defaults(data_dir: &Path, threads: usize) -> Self {
        Config {
            models_dir: None,
            default_model: None,
            data_dir: data_dir.to_path_buf(),
            database_url: None,
            database_ca_file: None,
            database_pool: PoolLimits {
                max: defaults::DATABASE_CONNECTIONS,
                wait: Duration::from_secs(10),
                idle: Duration::from_secs(60),
            },
            node: node_name(),
            queue: QueueConfig {
                workers: defaults::WORKERS,
                threads,
                capacity: defaults::QUEUE_LIMIT,
                retention: Duration::from_secs(defaults::JOB_RETENTION_S),
                per_owner: defaults::MAX_JOBS_PER_TOKEN,
                bulk_capacity: defaults::BULK_QUEUE_LIMIT,
                bulk_images_per_owner: defaults::MAX_BULK_IMAGES_PER_TOKEN,
                lease: Duration::from_secs(defaults::LEASE_S),
            },
            key_cache_bytes: defaults::KEY_CACHE_MIB << 20,
            keys: KeyLimits {
                per_owner: defaults::MAX_KEYS_PER_TOKEN,
                storage_bytes: defaults::MAX_KEY_STORAGE_MIB << 20,
                expiry: Duration::from_secs(defaults::KEY_EXPIRY_DAYS * 86_400),
            },
            limits: Limits {
                batch_images: defaults::MAX_BATCH,
                uploads_per_owner: defaults::MAX_UPLOADS_PER_TOKEN,
                body_timeout: Duration::from_secs(defaults::BODY_TIMEOUT_S),
                streams_per_job: defaults::MAX_STREAMS_PER_JOB,
            },
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

/// How long a queue depth read from storage is good for.
const DEPTH_MAX_AGE: Duration = Duration::from_secs(1);

/// Requests per second, and bursts, that one address may send to the routes that need no
/// token: far above a readiness probe's or a page's, far below what loads a node.
const ANONYMOUS_PER_SECOND: f64 = 10.0;
const ANONYMOUS_BURST: f64 = 30.0;

/// Seconds one bootstrap takes on one core before a node has measured its own: the middle of
/// the 18–45 ms a KS-PBS takes on the hosts HEXray was tried on.
const NOMINAL_BOOTSTRAP_SECONDS: f64 = 0.030;

/// The machine's host name (a Kubernetes pod's name), or `hexray` where it cannot be read, and
/// a random suffix: nodes sharing a database must have different names (a stopping node hands
/// back the work claimed under its own), and two servers on one host, or containers with the
/// host's network and name, would otherwise share one.
///
/// ```
/// use hexray_evaluator::server::node_name;
///
/// let names: std::collections::HashSet<String> = (0..8).map(|_| node_name()).collect();
/// assert!(names.len() > 1, "two servers on one host get different names");
/// let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
/// assert!(names.iter().all(|name| name.starts_with(&format!("{}-", host.trim()))));
/// ```
pub fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "hexray".into());
    format!("{host}-{:04x}", rand::random::<u16>())
}

/// Request limits. Body sizes are not among them: they follow from the models served.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most images in one job.
    pub batch_images: usize,
    /// Bodies each token may be uploading at once.
    pub uploads_per_owner: usize,
    /// Time a request body has to arrive in full.
    pub body_timeout: Duration,
    /// Progress streams open at once on one job.
    pub streams_per_job: usize,
}

/// The largest bodies the served models can need.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    /// A compressed server key of any served model's parameter set.
    pub key: usize,
    /// A batch of the largest model's encrypted images.
    pub job: usize,
}

#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Models(#[from] LoadError),
    #[error(transparent)]
    DefaultModel(#[from] super::models::UnknownDefault),
    #[error(transparent)]
    Tokens(#[from] super::auth::TokensError),
    /// A served model's images would be larger than any client may send.
    #[error("sizing request bodies: {0}")]
    Bodies(#[from] hexray_crypto::CryptoError),
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error("cannot open the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("another hexray server is using the data directory {path}: give each server its own --data-dir")]
    DataDirInUse { path: String },
}

/// What every request handler shares.
pub struct AppState {
    pub models: Models,
    pub keys: Arc<dyn KeyStorage>,
    pub jobs: Arc<dyn JobStorage>,
    /// This node's counters.
    pub metrics: Arc<Metrics>,
    /// This node's evaluation threads.
    pub threads: usize,
    pub access: Access,
    pub limits: Limits,
    pub bodies: BodyLimits,
    /// Where bulk uploads are streamed to (`data_dir/spool`).
    pub spool: PathBuf,
    /// This node's name, as health reports it: which of several nodes answered.
    pub node: String,
    /// Where keys and jobs are kept: `embedded` or `postgres`.
    pub storage: &'static str,
    /// Requests without a token, per client address: health and the OpenAPI document.
    pub anonymous: RateLimit,
    /// Whose `X-Forwarded-For` names that address.
    pub proxies: TrustedProxies,
    /// The queue depth last read from storage, and when: health and metrics read storage at
    /// most once per [`DEPTH_MAX_AGE`], however often they are asked.
    depth: Mutex<Option<(Instant, Depth)>>,
    /// Bodies being received, per token.
    uploads: Slots,
    /// Progress streams open on this node, per job.
    streams: Slots,
    /// Bulk uploads this node is receiving or checking, under one key: each may spool and
    /// check up to a few hundred MB before its job counts in the queue.
    bulk_uploads: Slots,
    /// The queue's sizes: its `bulk_capacity` is this node's bulk upload slots, and says
    /// whether it takes bulk jobs at all ([`QueueConfig::takes_bulk`]).
    queue: QueueConfig,
    /// The data directory's lock ([`lock_data_dir`]), held while the server runs.
    _data_dir_lock: std::fs::File,
}

/// Things in progress per key (bodies per token, progress streams per job), each key's count
/// bounded.
#[derive(Default)]
struct Slots(Arc<Mutex<HashMap<String, usize>>>);

impl Slots {
    /// Takes one of `key`'s `limit` slots, if one is free.
    fn claim(&self, key: &str, limit: usize) -> Option<Slot> {
        let mut counts = self.0.lock().expect("slots lock");
        let n = counts.entry(key.to_owned()).or_insert(0);
        if *n >= limit {
            return None;
        }
        let others = *n;
        *n += 1;
        Some(Slot {
            counts: self.0.clone(),
            key: key.to_owned(),
            others,
        })
    }
}

/// One slot taken; dropping it (the body arrived, the stream ended, the client left) frees it.
pub struct Slot {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
    /// The key's other slots taken when this one was, counted under the same lock.
    others: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().expect("slots lock");
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Takes `data_dir/.lock`, held for the process's life: a second server on the same folder
/// would empty the first one's spool at start and count the stored keys apart from it, so it is
/// refused. The operating system drops the lock when the process ends, however it ends.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, StartError> {
    let fault = |source| StartError::DataDir {
        path: data_dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(fault)?;
    let lock = std::fs::File::create(data_dir.join(".lock")).map_err(fault)?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::DataDirInUse {
            path: data_dir.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(fault(source)),
    }
}

/// Creates `data_dir/spool`, emptied of what an earlier process left: uploads it was receiving,
/// and the embedded queue's bulk batches, which ended with it.
fn open_spool(data_dir: &Path) -> Result<PathBuf, StartError> {
    let spool = data_dir.join("spool");
    let fault = |source| StartError::DataDir {
        path: spool.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&spool).map_err(fault)?;
    for entry in std::fs::read_dir(&spool).map_err(fault)? {
        std::fs::remove_file(entry.map_err(fault)?.path()).map_err(fault)?;
    }
    Ok(spool)
}

impl AppState {
    /// Loads the models, opens the key store and starts the job workers and the key expiry.
    pub fn start(config: &Config, access: Access) -> Result<Self, StartError> {
        let models = match &config.models_dir {
            Some(dir) => Models::from_dir(dir)?,
            None => Models::bundled()?,
        };
        let models = match &config.default_model {
            Some(id) => models.with_default(id)?,
            None => models,
        };
        let data_dir_lock = lock_data_dir(&config.data_dir)?;
        let database = config
            .database_url
            .as_deref()
            .map(|url| {
                Database::open(
                    url,
                    config.database_ca_file.as_deref(),
                    config.database_pool,
                )
            })
            .transpose()?;
        let keys: Arc<dyn KeyStorage> = match &database {
            Some(database) => Arc::new(PgKeys::new(
                database.clone(),
                config.key_cache_bytes,
                config.keys,
            )),
            None => Arc::new(
                DirectoryKeys::open(&config.data_dir, config.key_cache_bytes, config.keys)
                    .map_err(|source| StartError::DataDir {
                        path: config.data_dir.display().to_string(),
                        source,
                    })?,
            ),
        };
        // Expired keys go at start, then hourly. The first pass runs on a thread of its own,
        // as the blocking database driver must not run on a caller's async runtime.
        std::thread::scope(|scope| scope.spawn(|| keys.expire()).join())
            .expect("the key expiry does not panic");
        let expiring = Arc::downgrade(&keys);
        std::thread::Builder::new()
            .name("hexray-key-expiry".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(3600));
                match expiring.upgrade() {
                    Some(keys) => drop(keys.expire()),
                    None => return,
                }
            })
            .expect("the key expiry thread starts");
        let metrics = Arc::new(Metrics::default());
        let evaluator = Arc::new(Evaluator::new(
            config.queue.threads,
            keys.clone(),
            metrics.clone(),
        ));
        let spool = open_spool(&config.data_dir)?;
        let jobs: Arc<dyn JobStorage> = match database {
            Some(database) => PgJobs::start(
                database,
                &config.queue,
                (&config.node, &spool),
                models.iter().cloned(),
                evaluator,
            ),
            None => Arc::new(MemoryJobs::start(&config.queue, &config.node, evaluator)),
        };
        let bodies = models.body_limits(config.limits.batch_images)?;
        Ok(AppState {
            models,
            keys,
            jobs,
            metrics,
            threads: config.queue.threads,
            access,
            limits: config.limits,
            bodies,
            spool,
            _data_dir_lock: data_dir_lock,
            node: config.node.clone(),
            storage: if config.database_url.is_some() {
                "postgres"
            } else {
                "embedded"
            },
            anonymous: RateLimit::new(ANONYMOUS_PER_SECOND, ANONYMOUS_BURST),
            proxies: config.trusted_proxies.clone(),
            depth: Mutex::new(None),
            uploads: Slots::default(),
            streams: Slots::default(),
            bulk_uploads: Slots::default(),
            queue: config.queue,
        })
    }

    /// Seconds this node takes per bootstrap, all its threads together: measured once it has
    /// evaluated something, nominal before. What the page's expected time per image is made of.
    pub fn seconds_per_bootstrap(&self) -> f64 {
        self.metrics
            .bootstraps_per_second()
            .map_or(NOMINAL_BOOTSTRAP_SECONDS / self.threads as f64, |rate| {
                1.0 / rate
            })
    }

    /// The queue depth read from storage less than `DEPTH_MAX_AGE` ago, if any.
    pub fn recent_depth(&self) -> Option<Depth> {
        let depth = *self.depth.lock().expect("depth lock");
        depth
            .filter(|(read, _)| read.elapsed() < DEPTH_MAX_AGE)
            .map(|(_, depth)| depth)
    }

    /// Remembers a depth just read from storage.
    pub fn remember_depth(&self, depth: Depth) {
        *self.depth.lock().expect("depth lock") = Some((Instant::now(), depth));
    }

    /// Opens a progress stream on job `id` on this node, or refuses with 429 when the job has
    /// its limit of streams open here.
    pub fn begin_stream(&self, id: &str) -> Result<Slot, ApiError> {
        let limit = self.limits.streams_per_job;
        self.streams
            .claim(id, limit)
            .ok_or(ApiError::TooManyStreams { limit })
    }

    /// Whether this node takes bulk jobs for `model`: the model takes the bulk path, and
    /// `--bulk-queue-limit` is not 0, which switches the bulk path off so that its routes
    /// answer 404 and the model list says so, rather than a 503 that asks the client to retry
    /// forever.
    pub fn serves_bulk(&self, model: &ServedModel) -> bool {
        self.queue.takes_bulk() && model.packed.is_some()
    }

    /// The model's bulk spec, when this node [serves its bulk path](Self::serves_bulk).
    pub fn bulk_spec(&self, model: &ServedModel) -> Option<BulkSpec> {
        self.serves_bulk(model).then(|| model.bulk_spec()).flatten()
    }

    /// Claims one of this node's bulk upload slots, or refuses with 503 and Retry-After;
    /// returns it with how many other bulk uploads this node is receiving.
    pub fn begin_bulk_upload(&self) -> Result<(Slot, usize), ApiError> {
        let slot = self
            .bulk_uploads
            .claim("bulk", self.queue.bulk_capacity)
            .ok_or(ApiError::QueueFull { retry_after: 30 })?;
        let others = slot.others;
        Ok((slot, others))
    }

    /// Claims an upload slot for `owner`, or refuses with 429.
    pub fn begin_upload(&self, owner: &Owner) -> Result<Slot, ApiError> {
        let limit = self.limits.uploads_per_owner;
        self.uploads
            .claim(&owner.0, limit)
            .ok_or(ApiError::TooManyUploads { limit })
    }
}
