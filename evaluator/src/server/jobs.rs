//! Inference jobs: where they wait, who evaluates them, and the state clients poll.
//!
//! A job is one batch of encrypted images for one model and key. [`JobStorage`] is what the
//! routes see, with two back ends:
//! - the embedded [`JobQueue`] (the default): a bounded queue in memory and a few workers, for
//!   one server;
//! - the PostgreSQL queue (`super::postgres::PgJobs`), which several nodes share: any node
//!   takes work, a dead node's work is taken again, and any node answers for any job.
//!
//! Both evaluate through one [`Evaluator`]: a batch runs as one stream of bootstraps across all
//! its images ([`hexray_engine::evaluate_batch`]) on the node's rayon pool, so a batch keeps every
//! core busy. A queue has a fixed capacity: a job that does not fit is refused with 503 and
//! Retry-After, never accepted and dropped later.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hexray_crypto::{frames, EncryptedImage, EncryptedOutput};
use hexray_model::file::hex;
use rand::RngCore;
use serde::Serialize;

use super::auth::Owner;
use super::error::{ApiError, ErrorCode};
use super::keys::KeyStorage;
use super::metrics::Metrics;
use super::models::ServedModel;
use hexray_engine::evaluate_batch;

/// Where jobs wait and how clients see them. Every method may block (the PostgreSQL back end
/// talks to its database): call them from a blocking thread.
pub trait JobStorage: Send + Sync {
    /// Queues a batch, or refuses it at once when the queue or `owner`'s share of it is full.
    fn submit(&self, job: NewJob) -> Result<Status, ApiError>;
    /// Refuses a job when its owner already has its share of the queue.
    fn check_owner_room(&self, owner: &Owner) -> Result<(), ApiError>;
    /// `owner`'s job `id`; another token's job is unknown to it.
    fn status(&self, owner: &Owner, id: &str) -> Result<Status, ApiError>;
    /// The packed encrypted outputs ([`frames`]) of `owner`'s job, once done, in image order.
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

/// Evaluates batches on one node's pool, for either back end, and counts what it did.
pub struct Evaluator {
    pool: rayon::ThreadPool,
    keys: Arc<dyn KeyStorage>,
    pub metrics: Arc<Metrics>,
}

impl Evaluator {
    /// A pool of `threads` evaluation threads.
    pub fn new(threads: usize, keys: Arc<dyn KeyStorage>, metrics: Arc<Metrics>) -> Self {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("hexray-fhe-{i}"))
            .build()
            .expect("the evaluation thread pool starts");
        Evaluator {
            pool,
            keys,
            metrics,
        }
    }

    /// Evaluates `inputs` with `owner`'s key, calling `progress` after each bootstrap; returns
    /// one serialized output per input, in order. A panic fails the batch, never the node.
    pub fn run(
        &self,
        model: &ServedModel,
        owner: &Owner,
        key_id: &str,
        inputs: Vec<EncryptedImage>,
        progress: &(dyn Fn() + Sync),
    ) -> Result<Vec<Vec<u8>>, ApiError> {
        let images = inputs.len();
        let bootstraps = AtomicUsize::new(0);
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let key = self.keys.server_key(owner, key_id)?;
            let counted = || {
                bootstraps.fetch_add(1, Ordering::Relaxed);
                progress();
            };
            let (outputs, _) = self
                .pool
                .install(|| evaluate_batch(&model.loaded, &key, inputs, &counted))?;
            outputs
                .iter()
                .map(EncryptedOutput::to_bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ApiError::Internal(e.to_string()))
        }))
        .unwrap_or_else(|_| Err(ApiError::Internal("the evaluation panicked".into())));
        let metrics = &self.metrics;
        Metrics::add(&metrics.busy_nanos, started.elapsed().as_nanos() as u64);
        Metrics::add(
            &metrics.bootstraps,
            bootstraps.load(Ordering::Relaxed) as u64,
        );
        if result.is_ok() {
            Metrics::add(&metrics.images_completed, images as u64);
        }
        result
    }
}

/// One batch in the embedded queue.
struct Job {
    id: String,
    model: Arc<ServedModel>,
    owner: Owner,
    key_id: String,
    images: usize,
    bootstraps_total: usize,
    bootstraps_done: AtomicUsize,
    /// The node whose workers evaluate it.
    node: Arc<str>,
    inputs: Mutex<Option<Vec<EncryptedImage>>>,
    state: Mutex<State>,
}

enum State {
    Queued,
    Running {
        started: Instant,
    },
    Done {
        outputs: Arc<Vec<u8>>,
        seconds: f64,
        finished: Instant,
    },
    Failed {
        /// What the client is told, settled once ([`ApiError::public_message`]).
        code: ErrorCode,
        message: String,
        finished: Instant,
    },
}

impl Job {
    fn status(&self) -> Status {
        let state = self.state.lock().expect("job state lock");
        let (name, seconds, error) = match &*state {
            State::Queued => (JobState::Queued, None, None),
            State::Running { started } => (
                JobState::Running,
                Some(started.elapsed().as_secs_f64()),
                None,
            ),
            State::Done { seconds, .. } => (JobState::Done, Some(*seconds), None),
            State::Failed { code, message, .. } => (JobState::Failed, None, Some((code, message))),
        };
        Status {
            job_id: self.id.clone(),
            model: self.model.id.clone(),
            state: name,
            images: self.images,
            bootstraps_done: self.bootstraps_done.load(Ordering::Relaxed),
            bootstraps_total: self.bootstraps_total,
            seconds,
            error: error.map(|(_, message)| message.clone()),
            error_code: error.map(|(code, _)| code.as_str()),
            node: (name != JobState::Queued).then(|| self.node.to_string()),
        }
    }

    fn outputs(&self) -> Result<Vec<u8>, ApiError> {
        match &*self.state.lock().expect("job state lock") {
            State::Done { outputs, .. } => Ok(outputs.to_vec()),
            State::Failed { message, .. } => Err(ApiError::JobFailed {
                id: self.id.clone(),
                message: message.clone(),
            }),
            _ => Err(ApiError::NotReady(self.id.clone())),
        }
    }

    /// Queued or running.
    fn is_active(&self) -> bool {
        matches!(
            *self.state.lock().expect("job state lock"),
            State::Queued | State::Running { .. }
        )
    }

    fn finished_at(&self) -> Option<Instant> {
        match &*self.state.lock().expect("job state lock") {
            State::Done { finished, .. } | State::Failed { finished, .. } => Some(*finished),
            _ => None,
        }
    }
}

/// The embedded back end: jobs in this process's memory, evaluated by its own workers.
pub struct JobQueue {
    sender: SyncSender<Arc<Job>>,
    jobs: Arc<Jobs>,
    queued: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    per_owner: usize,
    /// This node's name, which its jobs report.
    node: Arc<str>,
    metrics: Arc<Metrics>,
}

/// Every job a client may still ask about, and how long finished ones are kept.
struct Jobs {
    table: Mutex<HashMap<String, Arc<Job>>>,
    retention: Duration,
}

impl Jobs {
    /// Removes finished jobs older than the retention, and their outputs.
    fn forget_expired(&self) {
        let retention = self.retention;
        self.table
            .lock()
            .expect("job table lock")
            .retain(|_, job| job.finished_at().is_none_or(|t| t.elapsed() < retention));
    }
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

impl JobQueue {
    /// Starts the workers of node `node`.
    pub fn start(config: &QueueConfig, node: &str, evaluator: Arc<Evaluator>) -> Self {
        let (sender, receiver) = sync_channel::<Arc<Job>>(config.capacity);
        let receiver = Arc::new(Mutex::new(receiver));
        let queued = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let metrics = evaluator.metrics.clone();
        for i in 0..config.workers {
            let worker = Worker {
                receiver: receiver.clone(),
                evaluator: evaluator.clone(),
                queued: queued.clone(),
                running: running.clone(),
            };
            std::thread::Builder::new()
                .name(format!("hexray-worker-{i}"))
                .spawn(move || worker.run())
                .expect("a worker thread starts");
        }
        let jobs = Arc::new(Jobs {
            table: Mutex::new(HashMap::new()),
            retention: config.retention,
        });
        // Expired outputs are removed on a timer, not only when the next job arrives.
        start_sweeper(&jobs, config.retention, |jobs, _| jobs.forget_expired());
        JobQueue {
            sender,
            jobs,
            queued,
            running,
            per_owner: config.per_owner,
            node: node.into(),
            metrics,
        }
    }

    fn get(&self, owner: &Owner, id: &str) -> Result<Arc<Job>, ApiError> {
        self.jobs
            .table
            .lock()
            .expect("job table lock")
            .get(id)
            .filter(|job| job.owner == *owner)
            .cloned()
            .ok_or_else(|| ApiError::UnknownJob(id.into()))
    }
}

impl JobStorage for JobQueue {
    fn submit(&self, new: NewJob) -> Result<Status, ApiError> {
        let images = new.inputs.len();
        let job = Arc::new(Job {
            id: job_id(),
            bootstraps_total: images * new.model.loaded.circuit().bootstrap_count(),
            model: new.model,
            owner: new.owner,
            key_id: new.key_id,
            images,
            bootstraps_done: AtomicUsize::new(0),
            node: self.node.clone(),
            inputs: Mutex::new(Some(new.inputs)),
            state: Mutex::new(State::Queued),
        });
        // The owner's share is counted and the job entered under one lock, so that two
        // submissions at once cannot both take the last place.
        let mut table = self.jobs.table.lock().expect("job table lock");
        owner_room(active_jobs(&table, &job.owner), self.per_owner)?;
        self.queued.fetch_add(1, Ordering::SeqCst);
        match self.sender.try_send(job.clone()) {
            Ok(()) => {
                Metrics::add(&self.metrics.jobs_submitted, 1);
                let status = job.status();
                table.insert(job.id.clone(), job);
                Ok(status)
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                Metrics::add(&self.metrics.jobs_rejected, 1);
                Err(ApiError::QueueFull { retry_after: 5 })
            }
        }
    }

    fn check_owner_room(&self, owner: &Owner) -> Result<(), ApiError> {
        let table = self.jobs.table.lock().expect("job table lock");
        owner_room(active_jobs(&table, owner), self.per_owner)
    }

    fn status(&self, owner: &Owner, id: &str) -> Result<Status, ApiError> {
        Ok(self.get(owner, id)?.status())
    }

    fn outputs(&self, owner: &Owner, id: &str) -> Result<Vec<u8>, ApiError> {
        self.get(owner, id)?.outputs()
    }

    fn depth(&self) -> Result<Depth, ApiError> {
        Ok(Depth {
            queued: self.queued.load(Ordering::SeqCst),
            running: self.running.load(Ordering::SeqCst),
        })
    }
    fn stop(&self) -> Result<(), ApiError> {
        Ok(())
    }
}

/// The one per-token rule: `active` jobs leave room for another below `limit`.
/// How many of `owner`'s jobs in `table` are queued or running.
fn active_jobs(table: &HashMap<String, Arc<Job>>, owner: &Owner) -> usize {
    table
        .values()
        .filter(|job| job.owner == *owner && job.is_active())
        .count()
}

pub(crate) fn owner_room(active: usize, limit: usize) -> Result<(), ApiError> {
    if active >= limit {
        return Err(ApiError::TooManyJobs { limit });
    }
    Ok(())
}

struct Worker {
    receiver: Arc<Mutex<Receiver<Arc<Job>>>>,
    evaluator: Arc<Evaluator>,
    queued: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
}

impl Worker {
    fn run(self) {
        let metrics = self.evaluator.metrics.clone();
        loop {
            let next = self.receiver.lock().expect("job receiver lock").recv();
            let Ok(job) = next else {
                return; // The server is shutting down.
            };
            self.queued.fetch_sub(1, Ordering::SeqCst);
            self.running.fetch_add(1, Ordering::SeqCst);
            let started = Instant::now();
            *job.state.lock().expect("job state lock") = State::Running { started };
            let result = self.evaluate(&job);
            let finished = Instant::now();
            let seconds = (finished - started).as_secs_f64();
            let state = match result {
                Ok(outputs) => {
                    Metrics::add(&metrics.jobs_completed, 1);
                    log::info!(
                        "job {} done: {} images, {} bootstraps in {seconds:.2} s",
                        job.id,
                        job.images,
                        job.bootstraps_total
                    );
                    State::Done {
                        outputs: Arc::new(outputs),
                        seconds,
                        finished,
                    }
                }
                Err(error) => {
                    Metrics::add(&metrics.jobs_failed, 1);
                    log::warn!("job {} failed: {error}", job.id);
                    State::Failed {
                        code: error.code(),
                        message: error.public_message(),
                        finished,
                    }
                }
            };
            *job.state.lock().expect("job state lock") = state;
            self.running.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn evaluate(&self, job: &Job) -> Result<Vec<u8>, ApiError> {
        let inputs = job
            .inputs
            .lock()
            .expect("job inputs lock")
            .take()
            .ok_or_else(|| ApiError::Internal("the job's inputs were already consumed".into()))?;
        let progress = || {
            job.bootstraps_done.fetch_add(1, Ordering::Relaxed);
        };
        let blobs = self
            .evaluator
            .run(&job.model, &job.owner, &job.key_id, inputs, &progress)?;
        Ok(frames::pack(&blobs))
    }
}
