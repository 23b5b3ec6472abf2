//! Inference jobs: where they wait, who evaluates them, and the state clients poll.
//!
//! A job is one batch of encrypted images for one model: on the interactive path (TFHE), one
//! ciphertext set per image under a registered key; on the bulk path (BFV, `docs/bulk.md`), one
//! packed batch of up to 8192 images with its evaluation key, spooled to disk. [`JobStorage`]
//! is what the routes see, with two back ends:
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
use hexray_model::hex;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tempfile::TempPath;

use super::auth::Owner;
use super::models::ServedModel;
use super::store_error::StoreError;

pub use memory::MemoryJobs;

/// Where jobs wait and how clients see them. Every method may block (the PostgreSQL back end
/// talks to its database): call them from a blocking thread.
pub trait JobStorage: Send + Sync {
    /// Queues a batch, or refuses it at once when the queue or `owner`'s share of it is full.
    fn submit(&self, job: NewJob) -> Result<Status, StoreError>;
    /// Refuses a job of `kind` that would not fit ([`room`]) before its body is read; `pending`
    /// bulk uploads that this node is still receiving count as bulk jobs.
    fn check_room(&self, owner: &Owner, kind: JobKind, pending: usize) -> Result<(), StoreError>;
    /// `owner`'s job `id`; another token's job is unknown to it.
    fn status(&self, owner: &Owner, id: &str) -> Result<Status, StoreError>;
    /// The encrypted outputs of `owner`'s job, once done: for an interactive job, packed
    /// ([`batch_body`](hexray_crypto::batch_body)) in image order; for a bulk job, the encrypted
    /// results' wire format ([`hexray_bulk::batch`]).
    fn outputs(&self, owner: &Owner, id: &str) -> Result<Vec<u8>, StoreError>;
    /// Jobs waiting and jobs being evaluated, as every node sees them.
    fn depth(&self) -> Result<Depth, StoreError>;
    /// For a node that is shutting down: its workers take no more work, and what they hold
    /// goes back to the queue at once rather than when its lease runs out. The embedded
    /// queue has no other node to hand work to: its jobs end with the process.
    fn stop(&self) -> Result<(), StoreError>;
}

/// A batch the API has accepted and checked, to be queued.
pub struct NewJob {
    pub model: Arc<ServedModel>,
    /// The token that submits it: only that token can see it.
    pub owner: Owner,
    pub inputs: JobInputs,
}

/// What a job evaluates, as the route checked it.
pub enum JobInputs {
    /// The interactive path: one ciphertext set per image, under the registered key `key_id`;
    /// decoded (for a worker of this node) and as the client sent them (for a shared queue,
    /// which stores the bytes the route checked rather than encoding the images again).
    Images {
        key_id: String,
        images: Vec<EncryptedImage>,
        blobs: Vec<Vec<u8>>,
    },
    /// The bulk path: an upload ([`hexray_bulk::upload`]) that was streamed to this file and
    /// read through once; the file is removed when this is dropped.
    Bulk { file: TempPath, images: usize },
}

impl JobInputs {
    pub fn kind(&self) -> JobKind {
        match self {
            JobInputs::Images { .. } => JobKind::Interactive,
            JobInputs::Bulk { .. } => JobKind::Bulk,
        }
    }

    pub fn images(&self) -> usize {
        match self {
            JobInputs::Images { images, .. } => images.len(),
            JobInputs::Bulk { images, .. } => *images,
        }
    }

    /// The registered key an interactive job names; a bulk job carries its own.
    pub fn key_id(&self) -> Option<&str> {
        match self {
            JobInputs::Images { key_id, .. } => Some(key_id),
            JobInputs::Bulk { .. } => None,
        }
    }
}

/// Which path a job takes (`"interactive"` or `"bulk"` in JSON and in the database).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// Servers older than the bulk path report no kind: their jobs are interactive.
    #[default]
    Interactive,
    Bulk,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Interactive => "interactive",
            JobKind::Bulk => "bulk",
        }
    }

    /// Units of work a job of `images` images of `model` takes: bootstraps on the interactive
    /// path, packed neurons (each for every image at once) on the bulk path.
    pub fn work(self, model: &ServedModel, images: usize) -> usize {
        match self {
            JobKind::Interactive => images * model.loaded.circuit().bootstrap_count(),
            JobKind::Bulk => model
                .packed
                .as_ref()
                .map_or(0, hexray_bulk::evaluate::neurons),
        }
    }
}

/// How far a job has got, in its path's unit of work: flattened into [`Status`] as
/// `bootstraps_done`/`bootstraps_total` or `neurons_done`/`neurons_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Progress {
    Bootstraps {
        bootstraps_done: usize,
        bootstraps_total: usize,
    },
    Neurons {
        neurons_done: usize,
        neurons_total: usize,
    },
}

impl Progress {
    /// The work done and the work in all, whatever its unit.
    pub fn counts(self) -> (usize, usize) {
        match self {
            Progress::Bootstraps {
                bootstraps_done,
                bootstraps_total,
            } => (bootstraps_done, bootstraps_total),
            Progress::Neurons {
                neurons_done,
                neurons_total,
            } => (neurons_done, neurons_total),
        }
    }

    pub fn new(kind: JobKind, done: usize, total: usize) -> Self {
        match kind {
            JobKind::Interactive => Progress::Bootstraps {
                bootstraps_done: done,
                bootstraps_total: total,
            },
            JobKind::Bulk => Progress::Neurons {
                neurons_done: done,
                neurons_total: total,
            },
        }
    }
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
}

/// A job's state as `GET /api/v1/jobs/{id}` reports it: what the server sends and what
/// [`ApiClient`](crate::client::ApiClient) reads back, one type for both.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub job_id: String,
    pub model: String,
    #[serde(default)]
    pub kind: JobKind,
    pub state: JobState,
    pub images: usize,
    #[serde(flatten)]
    pub progress: Progress,
    /// Evaluation time so far, or in total once done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The failure's API code; `unknown_key` tells the client to upload its key again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
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
///
/// Bulk batches count in the same queue and the same per-token share as interactive ones;
/// `bulk_capacity` also bounds how many the server holds at once, as each is a file (or a
/// database large object) of up to a few hundred MB.
#[derive(Clone, Copy, Debug)]
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
    /// Bulk jobs that may be queued or running (all tokens and nodes together); 0 switches
    /// the bulk path off at this node: it accepts and claims no bulk job.
    pub bulk_capacity: usize,
    /// Images one token may have in the bulk jobs the server keeps (queued, running, or
    /// finished within the retention), each job counted as [`BULK_IMAGES_CHARGED`]: a bound on
    /// how many chosen images a token can have the model answer exactly, which is what fitting
    /// a copy of the model takes.
    pub bulk_images_per_owner: usize,
    /// How long a node's claim on shared work lasts unless it renews it: another node takes
    /// the work of a node that died once its lease has run out.
    pub lease: Duration,
}

impl QueueConfig {
    /// Whether this node takes bulk jobs: a `bulk_capacity` of 0 switches the bulk path off.
    pub fn takes_bulk(&self) -> bool {
        self.bulk_capacity > 0
    }
}

/// A fault of a file in the bulk spool: a full disk is the server's storage being full (to a
/// client, 507; a claim on a shared queue lets it lapse, for a node with room), anything else
/// a fault of the store.
pub(crate) fn spool_error(e: std::io::Error) -> StoreError {
    match e.kind() {
        std::io::ErrorKind::StorageFull => StoreError::StorageFull,
        _ => StoreError::Internal(format!("the bulk spool: {e}")),
    }
}

/// 128 random bits in hex: ids that cannot be guessed, so one client cannot poll another's job.
pub(crate) fn job_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(&bytes)
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

/// What a job's admission is counted against, as a back end counts it at that moment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueOccupancy {
    /// The token's jobs, queued or running.
    pub owner_active: usize,
    /// Every token's bulk jobs, queued or running.
    pub bulk_active: usize,
    /// The token's bulk jobs still kept: queued, running, or finished within the retention.
    pub owner_bulk_jobs: usize,
}

/// What a bulk job counts against its token's image quota: every slot of its batch, whatever
/// its header declares. The server evaluates all of them, and the client, which holds the
/// secret key, can decrypt all of them: a header declaring one image must not buy 8192
/// answers from the model.
pub const BULK_IMAGES_CHARGED: usize = hexray_bulk::parameters::DEGREE;

/// The one room rule: a job of `kind` fits below the token's share of the queue and, for a
/// bulk job, below the server's limit of bulk jobs and the token's image quota, each bulk job
/// counted as [`BULK_IMAGES_CHARGED`] images. Routes ask before they read a body, and the
/// store again when it enters the job.
pub(crate) fn room(
    config: &QueueConfig,
    kind: JobKind,
    now: QueueOccupancy,
) -> Result<(), StoreError> {
    if now.owner_active >= config.per_owner {
        return Err(StoreError::TooManyJobs {
            limit: config.per_owner,
        });
    }
    if kind == JobKind::Bulk {
        let limit = config.bulk_images_per_owner;
        if BULK_IMAGES_CHARGED > limit {
            return Err(StoreError::OverQuota {
                images: BULK_IMAGES_CHARGED,
                limit,
            });
        }
        if now.bulk_active >= config.bulk_capacity {
            return Err(StoreError::QueueFull { retry_after: 30 });
        }
        let used = now.owner_bulk_jobs * BULK_IMAGES_CHARGED;
        if used + BULK_IMAGES_CHARGED > limit {
            return Err(StoreError::ImageQuota {
                limit,
                used,
                hours: config.retention.as_secs_f64() / 3600.0,
            });
        }
    }
    Ok(())
}
