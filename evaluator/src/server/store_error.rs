//! What the storage back ends (keys and jobs, embedded or PostgreSQL) and the workers they run
//! report, in their own terms. Storage knows no HTTP status: `error.rs` alone turns a
//! [`StoreError`] into a status, a code and the words a client reads. (A failed job is stored
//! with the code and words its client will read, which `error.rs`'s `job_failure` settles.)

use thiserror::Error;

/// Seconds a client waits before retrying when the database is busy (sent as Retry-After).
pub const BUSY_RETRY_S: u64 = 1;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("no server key is registered under id `{0}`; upload it first")]
    UnknownKey(String),
    #[error("no job has id `{0}` (finished jobs are kept for a limited time, and a server without a database loses its jobs when it restarts)")]
    UnknownJob(String),
    #[error("job `{0}` has not finished yet")]
    NotReady(String),
    /// A job that failed; `message` is what its client was told when it failed.
    #[error("job `{id}` failed: {message}")]
    JobFailed { id: String, message: String },
    /// The upload is not a compressed server key, or one for another parameter set.
    #[error("{}", key_refusal(.0))]
    RejectedKey(hexray_crypto::CryptoError),
    #[error("the job queue is full; retry after {retry_after} s")]
    QueueFull { retry_after: u64 },
    #[error("this token already has {limit} jobs queued or running; wait for one to finish")]
    TooManyJobs { limit: usize },
    /// A token's whole image quota is smaller than what one bulk job is charged, so no wait
    /// would admit any.
    #[error("a bulk job counts all {images} slots of its batch, over this token's bulk quota of {limit} images: the server's --max-bulk-images-per-token is too small for the bulk path")]
    OverQuota { images: usize, limit: usize },
    #[error("this token already has {used} images in bulk jobs kept by the server, of its {limit} per {hours} h; wait for older jobs to expire")]
    ImageQuota {
        limit: usize,
        used: usize,
        hours: f64,
    },
    #[error("this token already has {limit} keys registered, one per browser (or key folder) it was used from: \"Forget my keys\" in a browser no longer used frees its place, and a key unused for the expiry period goes by itself; the administrator can raise --max-keys-per-token")]
    KeyQuota { limit: usize },
    #[error("the server's storage (keys, or the bulk spool) is full; try again later or ask the administrator")]
    StorageFull,
    /// Every connection to the shared database stayed busy.
    #[error("the server's database is busy; retry after {BUSY_RETRY_S} s")]
    Busy,
    /// A server fault in storage or in the evaluation its workers run: a disk, the database,
    /// stored bytes that no longer read, a panic.
    #[error("server error: {0}")]
    Internal(String),
    /// The engine refused a batch the route had accepted: a server bug, not the client's.
    #[error("the evaluation failed: {0}")]
    Engine(#[from] hexray_engine::EngineError),
    /// A bulk upload that a worker cannot read or evaluate; reported as the route reports
    /// the same refusal.
    #[error("{0}")]
    Bulk(#[from] hexray_bulk::BulkError),
}

/// A refused key's words: a parameter mismatch says what it was about.
fn key_refusal(e: &hexray_crypto::CryptoError) -> String {
    match e {
        hexray_crypto::CryptoError::ParameterMismatch { .. } => format!("the uploaded key: {e}"),
        _ => e.to_string(),
    }
}
