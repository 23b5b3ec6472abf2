//! The server's defaults, in one place: `hexray serve`'s flags show and use them, and
//! [`Config::defaults`](super::Config::defaults), which tests and benchmarks start from, is
//! built from them, so the two cannot drift apart.

/// Address to listen on: loopback, so that a first run is reachable from this machine only.
pub const BIND: &str = "127.0.0.1:8080";
/// Where the embedded back end keeps registered keys.
pub const DATA_DIR: &str = "hexray-data";
/// The page and wasm client, as `scripts/build-web.sh` leaves them.
pub const WEB_DIR: &str = "web";
/// Connections one node may open to a shared database.
pub const DATABASE_CONNECTIONS: usize = 10;
/// Jobs evaluated at the same time.
pub const WORKERS: usize = 1;
/// Jobs that may wait.
pub const QUEUE_LIMIT: usize = 16;
/// Jobs one token may have queued or running.
pub const MAX_JOBS_PER_TOKEN: usize = 4;
/// Bulk jobs that may be queued or running, all tokens together: each holds an upload of up to
/// a few hundred MB on disk (or in the database) until it is evaluated.
pub const BULK_QUEUE_LIMIT: usize = 4;
/// Images one token may have in the bulk jobs kept (queued, running, or finished within the
/// retention): four full batches an hour by default.
pub const MAX_BULK_IMAGES_PER_TOKEN: usize = 4 * 8192;
/// Most images in one job: a clinician's batch.
pub const MAX_BATCH: usize = 16;
/// Keys one token may have registered.
pub const MAX_KEYS_PER_TOKEN: usize = 4;
/// Disk for stored keys, all tokens together, in MiB.
pub const MAX_KEY_STORAGE_MIB: u64 = 10 << 10;
/// Days an unused key is kept.
pub const KEY_EXPIRY_DAYS: u64 = 90;
/// Bodies one token may be uploading at once to one node.
pub const MAX_UPLOADS_PER_TOKEN: usize = 2;
/// Seconds a request body has to arrive in full.
pub const BODY_TIMEOUT_S: u64 = 120;
/// Progress streams open at once on one job at one node.
pub const MAX_STREAMS_PER_JOB: usize = 4;
/// Memory for expanded server keys, in MiB (about 85 MiB each).
pub const KEY_CACHE_MIB: usize = 1 << 10;
/// Seconds a node's claim on work lasts unless renewed.
pub const LEASE_S: u64 = 30;
/// Seconds finished jobs' outputs are kept.
pub const JOB_RETENTION_S: u64 = 3600;
/// Threads answering HTTP requests.
pub const HTTP_WORKERS: usize = 2;
/// Seconds open requests get to finish after SIGTERM: under Kubernetes' default grace period
/// of 30 s, with room for the pre-stop pause and the hand-back of claimed work.
pub const SHUTDOWN_TIMEOUT_S: u64 = 20;
