//! Inference jobs: where they wait, who evaluates them, and the state clients poll.
//!
//! A job is one batch of encrypted images for one model and key. [`JobStorage`] is what the
//! routes see, with two back ends:
//! - the embedded [`MemoryJobs`] (the default, `memory`): a bounded queue in memory and a
//!   few workers, for one server;
//! - the PostgreSQL queue ([`PgJobs`](super::postgres::PgJobs)), which several nodes share:
//!   any node takes work, a dead node's work is taken again, and any node answers for any job.
//!
//! This file holds what both share: the trait, the wire types clients poll, and the rules
//! (job ids, the per-token limit, the sweeper). Both evaluate through one
//! [`Evaluator`](super::evaluation::Evaluator): a batch runs as one stream of bootstraps across all
//! its images ([`hexray_engine::evaluate_batch`]) on the node's rayon pool, so a batch keeps every
//! core busy. A queue has a fixed capacity: a job that does not fit is refused with 503 and
//! Retry-After, never accepted and dropped later.

mod memory;

use std::sync::Arc;
use std::time::Duration;

use hexray_crypto::EncryptedImage;
use hexray_model::file::hex;
use rand::RngCore;
use serde::Serialize;

use super::auth::Owner;
use super::error::ApiError;
use super::models::ServedModel;

pub use memory::MemoryJobs;

/// Where jobs wait and how clients see them. Every method may block (the PostgreSQL back end
/// talks to its database): call them from a blocking thread.
pub trait JobStorage: Send + Sync {
    /// Queues a batch, or refuses it at once when the queue or `owner`'s share of it is full.
    fn submit(&self, job: NewJob) -> Result<Status, ApiError>;
    /// Refuses a job when its owner already has its share of the queue.
    fn check_owner_room(&self, owner: &Owner) -> Result<(), ApiError>;
    /// `owner`'s job `id`; another token's job is unknown to it.
    fn status(&self, owner: &Owner, id: &str) -> Result<Status, ApiError>;
    /// The packed encrypted outputs ([`frames`](hexray_crypto::frames)) of `owner`'s job, once done, in image order.
    fn outputs(&self, owner: &Owner, id: &str) -> Result<Vec<u8>, ApiError>;
    /// Jobs waiting and jobs being evaluated, as every node sees them.
    fn depth(&self) -> Result<Depth, ApiError>;
    /// For a node that is shutting down: its workers take no more work, and what they hold
    /// goes back to the queue at once rather than when its lease runs out. The embedded
    /// queue has no other node to hand work to: its jobs end with the process.
    fn stop(&self) -> Result<(), ApiError>;
}

/// A batch the API has accepted and checked, to be queued.
pub struct NewJob {
    pub model: Arc<ServedModel>,
    /// The token that submits it: only that token can see it.
    pub owner: Owner,
    pub key_id: String,
    pub inputs: Vec<EncryptedImage>,
}

/// The queue as all nodes see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Depth {
    /// Jobs waiting for a worker.
    pub queued: usize,
    /// Jobs being evaluated.
    pub running: usize,
}

/// Where a job is, as clients see it (`"queued"`, `"running"`, `"done"`, `"failed"` in JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
}

/// A job's state as `GET /api/v1/jobs/{id}` reports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Status {
    pub job_id: String,
    pub model: String,
    pub state: JobState,
    pub images: usize,
    pub bootstraps_done: usize,
    pub bootstraps_total: usize,
    /// Evaluation time so far, or in total once done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The failure's API code; `unknown_key` tells the client to upload its key again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
    /// The node that evaluates or evaluated it, once a worker has taken it; the nodes, joined
    /// by commas, when a shared queue split it between several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Status {
    pub fn is_final(&self) -> bool {
        matches!(self.state, JobState::Done | JobState::Failed)
    }
}

/// Sizes of the queue and its workers.
#[derive(Clone, Debug)]
pub struct QueueConfig {
    /// Batches evaluated at once. One batch already fills every core, so more workers mainly
    /// help many small jobs.
    pub workers: usize,
    /// Threads of the pool all workers share: the node's cores.
    pub threads: usize,
    /// Jobs that may wait for a worker (all nodes together, on a shared queue).
    pub capacity: usize,
    /// How long finished jobs (and their outputs) are kept for clients to fetch.
    pub retention: Duration,
    /// Jobs one token may have queued or running, so one client cannot hold the queue.
    pub per_owner: usize,
    /// How long a node's claim on shared work lasts unless it renews it: another node takes
    /// the work of a node that died once its lease has run out.
    pub lease: Duration,
}

/// 128 random bits in hex: ids that cannot be guessed, so one client cannot poll another's job.
pub(crate) fn job_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

/// Starts a thread that calls `sweep` on `target` every so often (a quarter of the retention,
/// between 0.1 s and a minute), so finished jobs do not outstay their retention by much,
/// whether or not requests arrive. It ends once `target` is dropped.
pub(crate) fn start_sweeper<T: Send + Sync + 'static>(
    target: &Arc<T>,
    retention: Duration,
    sweep: fn(&T, Duration),
) {
    let target = Arc::downgrade(target);
    let period = (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    std::thread::Builder::new()
        .name("hexray-job-sweeper".into())
        .spawn(move || loop {
            std::thread::sleep(period);
            match target.upgrade() {
                Some(target) => sweep(&target, retention),
                None => return,
            }
        })
        .expect("the job sweeper starts");
}

/// The one per-token rule: `active` jobs leave room for another below `limit`.
pub(crate) fn owner_room(active: usize, limit: usize) -> Result<(), ApiError> {
    if active >= limit {
        return Err(ApiError::TooManyJobs { limit });
    }
    Ok(())
}
