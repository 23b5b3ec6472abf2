//! Inference jobs: a bounded queue, a few workers, and the state clients poll.
//!
//! A job is one batch of encrypted images for one model and key. Workers take jobs in order and
//! run each as one stream of bootstraps across all its images ([`crate::evaluate_batch`]) on a
//! shared rayon pool, so a batch keeps every core busy. The queue has a fixed capacity: a job
//! that does not fit is refused with 503 and Retry-After, never accepted and dropped later.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hexray_crypto::{frames, EncryptedImage};
use rand::RngCore;
use serde::Serialize;

use super::error::ApiError;
use super::keys::KeyStore;
use super::metrics::Metrics;
use super::models::ServedModel;
use crate::evaluate_batch;

/// One submitted batch.
pub struct Job {
    pub id: String,
    pub model: Arc<ServedModel>,
    pub key_id: String,
    pub images: usize,
    pub bootstraps_total: usize,
    pub bootstraps_done: AtomicUsize,
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
        message: String,
        finished: Instant,
    },
}

/// A job's state as `GET /api/v1/jobs/{id}` reports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Status {
    pub job_id: String,
    pub model: String,
    /// `queued`, `running`, `done` or `failed`.
    pub state: &'static str,
    pub images: usize,
    pub bootstraps_done: usize,
    pub bootstraps_total: usize,
    /// Evaluation time so far, or in total once done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Status {
    pub fn is_final(&self) -> bool {
        matches!(self.state, "done" | "failed")
    }
}

impl Job {
    pub fn status(&self) -> Status {
        let state = self.state.lock().expect("job state lock");
        let (name, seconds, error) = match &*state {
            State::Queued => ("queued", None, None),
            State::Running { started } => ("running", Some(started.elapsed().as_secs_f64()), None),
            State::Done { seconds, .. } => ("done", Some(*seconds), None),
            State::Failed { message, .. } => ("failed", None, Some(message.clone())),
        };
        Status {
            job_id: self.id.clone(),
            model: self.model.id.clone(),
            state: name,
            images: self.images,
            bootstraps_done: self.bootstraps_done.load(Ordering::Relaxed),
            bootstraps_total: self.bootstraps_total,
            seconds,
            error,
        }
    }

    /// The packed encrypted outputs, once done.
    pub fn outputs(&self) -> Result<Arc<Vec<u8>>, ApiError> {
        match &*self.state.lock().expect("job state lock") {
            State::Done { outputs, .. } => Ok(outputs.clone()),
            State::Failed { message, .. } => Err(ApiError::JobFailed {
                id: self.id.clone(),
                message: message.clone(),
            }),
            _ => Err(ApiError::NotReady(self.id.clone())),
        }
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
}

pub struct JobQueue {
    sender: SyncSender<Arc<Job>>,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    queued: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    retention: Duration,
    pub metrics: Arc<Metrics>,
}

impl JobQueue {
    /// Starts the workers.
    pub fn start(config: &QueueConfig, keys: Arc<KeyStore>, metrics: Arc<Metrics>) -> Self {
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
        JobQueue {
            sender,
            jobs: Mutex::new(HashMap::new()),
            queued,
            running,
            retention: config.retention,
            metrics,
        }
    }

    /// Queues a batch, or refuses it at once when the queue is full.
    pub fn submit(
        &self,
        model: Arc<ServedModel>,
        key_id: String,
        inputs: Vec<EncryptedImage>,
    ) -> Result<Status, ApiError> {
        self.forget_expired();
        let images = inputs.len();
        let job = Arc::new(Job {
            id: job_id(),
            bootstraps_total: images * model.loaded.circuit.bootstrap_count(),
            model,
            key_id,
            images,
            bootstraps_done: AtomicUsize::new(0),
            inputs: Mutex::new(Some(inputs)),
            state: Mutex::new(State::Queued),
        });
        self.queued.fetch_add(1, Ordering::SeqCst);
        match self.sender.try_send(job.clone()) {
            Ok(()) => {
                Metrics::add(&self.metrics.jobs_submitted, 1);
                let status = job.status();
                self.jobs
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

    pub fn get(&self, id: &str) -> Result<Arc<Job>, ApiError> {
        self.jobs
            .lock()
            .expect("job table lock")
            .get(id)
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

    fn forget_expired(&self) {
        let retention = self.retention;
        self.jobs
            .lock()
            .expect("job table lock")
            .retain(|_, job| job.finished_at().is_none_or(|t| t.elapsed() < retention));
    }
}

/// 128 random bits in hex: ids that cannot be guessed, so one client cannot poll another's job.
fn job_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Worker {
    receiver: Arc<Mutex<Receiver<Arc<Job>>>>,
    pool: Arc<rayon::ThreadPool>,
    keys: Arc<KeyStore>,
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
                    .unwrap_or_else(|_| Err("the evaluation panicked".into()));
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
                Err(message) => {
                    Metrics::add(&self.metrics.jobs_failed, 1);
                    log::warn!("job {} failed: {message}", job.id);
                    State::Failed { message, finished }
                }
            };
            *job.state.lock().expect("job state lock") = state;
            self.running.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn evaluate(&self, job: &Job) -> Result<Vec<u8>, String> {
        let key = self
            .keys
            .server_key(&job.key_id)
            .map_err(|e| e.to_string())?;
        let inputs = job
            .inputs
            .lock()
            .expect("job inputs lock")
            .take()
            .ok_or("the job's inputs were already consumed")?;
        let progress = || {
            job.bootstraps_done.fetch_add(1, Ordering::Relaxed);
        };
        let (outputs, _) = self
            .pool
            .install(|| evaluate_batch(&job.model.loaded, &key, inputs, &progress))
            .map_err(|e| e.to_string())?;
        let blobs: Vec<Vec<u8>> = outputs.iter().map(|o| o.to_bytes()).collect();
        Ok(frames::pack(&blobs))
    }
}
