//! Inference jobs: a bounded queue, a few workers, and the state clients poll.
//!
//! A job is one batch of encrypted images for one model and key. Workers take jobs in order and
//! run each as one stream of bootstraps across all its images ([`hexray_engine::evaluate_batch`]) on a
//! shared rayon pool, so a batch keeps every core busy. The queue has a fixed capacity: a job
//! that does not fit is refused with 503 and Retry-After, never accepted and dropped later.

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
use super::error::ApiError;
use super::keys::KeyStorage;
use super::metrics::Metrics;
use super::models::ServedModel;
use hexray_engine::evaluate_batch;

/// One submitted batch.
pub struct Job {
    pub id: String,
    pub model: Arc<ServedModel>,
    /// The token that submitted it: only that token can see it.
    pub owner: Owner,
    pub key_id: String,
    /// Progress streams open on this job, bounded per job.
    pub streams: AtomicUsize,
    pub images: usize,
    pub bootstraps_total: usize,
    pub bootstraps_done: AtomicUsize,
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
        error: ApiError,
        finished: Instant,
    },
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
    /// The node that evaluates or evaluated it, once a worker has taken it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Status {
    pub fn is_final(&self) -> bool {
        matches!(self.state, JobState::Done | JobState::Failed)
    }
}

impl Job {
    pub fn status(&self) -> Status {
        let state = self.state.lock().expect("job state lock");
        let (name, seconds, error) = match &*state {
            State::Queued => (JobState::Queued, None, None),
            State::Running { started } => (
                JobState::Running,
                Some(started.elapsed().as_secs_f64()),
                None,
            ),
            State::Done { seconds, .. } => (JobState::Done, Some(*seconds), None),
            State::Failed { error, .. } => (JobState::Failed, None, Some(error)),
        };
        Status {
            job_id: self.id.clone(),
            model: self.model.id.clone(),
            state: name,
            images: self.images,
            bootstraps_done: self.bootstraps_done.load(Ordering::Relaxed),
            bootstraps_total: self.bootstraps_total,
            seconds,
            error: error.map(ToString::to_string),
            error_code: error.map(|e| e.code().as_str()),
            node: (name != JobState::Queued).then(|| self.node.to_string()),
        }
    }

    /// The packed encrypted outputs, once done.
    pub fn outputs(&self) -> Result<Arc<Vec<u8>>, ApiError> {
        match &*self.state.lock().expect("job state lock") {
            State::Done { outputs, .. } => Ok(outputs.clone()),
            State::Failed { error, .. } => Err(ApiError::JobFailed {
                id: self.id.clone(),
                message: error.to_string(),
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

/// Sizes of the queue and its workers.
#[derive(Clone, Debug)]
pub struct QueueConfig {
    /// Jobs evaluated at once. One batch already fills every core, so more workers mainly help
    /// many small jobs.
    pub workers: usize,
    /// Threads of the pool all workers share.
    pub threads: usize,
    /// Jobs that may wait for a worker.
    pub capacity: usize,
    /// How long finished jobs (and their outputs) are kept for clients to fetch.
    pub retention: Duration,
    /// Jobs one token may have queued or running, so one client cannot hold the queue.
    pub per_owner: usize,
}

pub struct JobQueue {
    sender: SyncSender<Arc<Job>>,
    jobs: Arc<Jobs>,
    queued: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    per_owner: usize,
    threads: usize,
    /// This node's name, which its jobs report.
    node: Arc<str>,
    pub metrics: Arc<Metrics>,
}

/// Seconds one bootstrap takes on one core before the server has measured its own: the middle
/// of the 18–45 ms a KS-PBS takes on the hosts HEXray was tried on.
const NOMINAL_BOOTSTRAP_SECONDS: f64 = 0.030;

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

impl JobQueue {
    /// Starts the workers of node `node`.
    pub fn start(
        config: &QueueConfig,
        node: &str,
        keys: Arc<dyn KeyStorage>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (sender, receiver) = sync_channel::<Arc<Job>>(config.capacity);
        let receiver = Arc::new(Mutex::new(receiver));
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(config.threads)
                .thread_name(|i| format!("hexray-fhe-{i}"))
                .build()
                .expect("the evaluation thread pool starts"),
        );
        let queued = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        for i in 0..config.workers {
            let worker = Worker {
                receiver: receiver.clone(),
                pool: pool.clone(),
                keys: keys.clone(),
                metrics: metrics.clone(),
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
        let sweeper = Arc::downgrade(&jobs);
        let period =
            (config.retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        std::thread::Builder::new()
            .name("hexray-job-sweeper".into())
            .spawn(move || loop {
                std::thread::sleep(period);
                match sweeper.upgrade() {
                    Some(jobs) => jobs.forget_expired(),
                    None => return,
                }
            })
            .expect("the job sweeper starts");
        JobQueue {
            sender,
            jobs,
            queued,
            running,
            per_owner: config.per_owner,
            threads: config.threads,
            node: node.into(),
            metrics,
        }
    }

    /// Seconds this server takes per bootstrap, all its threads together: measured once it has
    /// run a job, nominal before. What the page's expected time per image is made of.
    pub fn seconds_per_bootstrap(&self) -> f64 {
        self.metrics
            .bootstraps_per_second()
            .map_or(NOMINAL_BOOTSTRAP_SECONDS / self.threads as f64, |rate| {
                1.0 / rate
            })
    }

    /// Queues a batch, or refuses it at once when the queue is full.
    pub fn submit(
        &self,
        model: Arc<ServedModel>,
        owner: Owner,
        key_id: String,
        inputs: Vec<EncryptedImage>,
    ) -> Result<Status, ApiError> {
        self.check_owner_room(&owner)?;
        let images = inputs.len();
        let job = Arc::new(Job {
            id: job_id(),
            bootstraps_total: images * model.loaded.circuit().bootstrap_count(),
            model,
            owner,
            key_id,
            streams: AtomicUsize::new(0),
            images,
            bootstraps_done: AtomicUsize::new(0),
            node: self.node.clone(),
            inputs: Mutex::new(Some(inputs)),
            state: Mutex::new(State::Queued),
        });
        self.queued.fetch_add(1, Ordering::SeqCst);
        match self.sender.try_send(job.clone()) {
            Ok(()) => {
                Metrics::add(&self.metrics.jobs_submitted, 1);
                let status = job.status();
                self.jobs
                    .table
                    .lock()
                    .expect("job table lock")
                    .insert(job.id.clone(), job);
                Ok(status)
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                Metrics::add(&self.metrics.jobs_rejected, 1);
                Err(ApiError::QueueFull { retry_after: 5 })
            }
        }
    }

    /// Refuses a job when its owner already has its share of the queue.
    pub fn check_owner_room(&self, owner: &Owner) -> Result<(), ApiError> {
        let active = self
            .jobs
            .table
            .lock()
            .expect("job table lock")
            .values()
            .filter(|job| job.owner == *owner && job.is_active())
            .count();
        if active >= self.per_owner {
            return Err(ApiError::TooManyJobs {
                limit: self.per_owner,
            });
        }
        Ok(())
    }

    /// `owner`'s job; another token's job is unknown to it.
    pub fn get(&self, owner: &Owner, id: &str) -> Result<Arc<Job>, ApiError> {
        self.jobs
            .table
            .lock()
            .expect("job table lock")
            .get(id)
            .filter(|job| job.owner == *owner)
            .cloned()
            .ok_or_else(|| ApiError::UnknownJob(id.into()))
    }

    /// Jobs waiting, and jobs being evaluated.
    pub fn depth(&self) -> (usize, usize) {
        (
            self.queued.load(Ordering::SeqCst),
            self.running.load(Ordering::SeqCst),
        )
    }
}

/// 128 random bits in hex: ids that cannot be guessed, so one client cannot poll another's job.
fn job_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

struct Worker {
    receiver: Arc<Mutex<Receiver<Arc<Job>>>>,
    pool: Arc<rayon::ThreadPool>,
    keys: Arc<dyn KeyStorage>,
    metrics: Arc<Metrics>,
    queued: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
}

impl Worker {
    fn run(self) {
        loop {
            let next = self.receiver.lock().expect("job receiver lock").recv();
            let Ok(job) = next else {
                return; // The server is shutting down.
            };
            self.queued.fetch_sub(1, Ordering::SeqCst);
            self.running.fetch_add(1, Ordering::SeqCst);
            let started = Instant::now();
            *job.state.lock().expect("job state lock") = State::Running { started };
            // A panic in one job must not take the worker, or the server, down with it.
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.evaluate(&job)))
                    .unwrap_or_else(|_| Err(ApiError::Internal("the evaluation panicked".into())));
            let finished = Instant::now();
            let seconds = (finished - started).as_secs_f64();
            Metrics::add(
                &self.metrics.busy_nanos,
                (finished - started).as_nanos() as u64,
            );
            Metrics::add(
                &self.metrics.bootstraps,
                job.bootstraps_done.load(Ordering::Relaxed) as u64,
            );
            let state = match result {
                Ok(outputs) => {
                    Metrics::add(&self.metrics.jobs_completed, 1);
                    Metrics::add(&self.metrics.images_completed, job.images as u64);
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
                    Metrics::add(&self.metrics.jobs_failed, 1);
                    log::warn!("job {} failed: {error}", job.id);
                    State::Failed { error, finished }
                }
            };
            *job.state.lock().expect("job state lock") = state;
            self.running.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn evaluate(&self, job: &Job) -> Result<Vec<u8>, ApiError> {
        let key = self.keys.server_key(&job.owner, &job.key_id)?;
        let inputs = job
            .inputs
            .lock()
            .expect("job inputs lock")
            .take()
            .ok_or_else(|| ApiError::Internal("the job's inputs were already consumed".into()))?;
        let progress = || {
            job.bootstraps_done.fetch_add(1, Ordering::Relaxed);
        };
        let (outputs, _) = self
            .pool
            .install(|| evaluate_batch(&job.model.loaded, &key, inputs, &progress))?;
        let blobs = outputs
            .iter()
            .map(EncryptedOutput::to_bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(frames::pack(&blobs))
    }
}
