//! The embedded job back end: a bounded queue in this process's memory and a few workers. A
//! job that does not fit is refused with 503 and Retry-After, never accepted and dropped later.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hexray_crypto::batch_body;

use super::{
    job_id, room, start_sweeper, Depth, JobInputs, JobKind, JobState, JobStorage, NewJob, Progress,
    QueueConfig, QueueOccupancy, Status,
};
use crate::server::auth::Owner;
use crate::server::error::{job_failure, ErrorCode};
use crate::server::evaluation::Evaluator;
use crate::server::metrics::Metrics;
use crate::server::models::ServedModel;
use crate::server::store_error::StoreError;

/// One batch in the embedded queue.
struct Job {
    id: String,
    model: Arc<ServedModel>,
    owner: Owner,
    kind: JobKind,
    images: usize,
    /// Units of work ([`JobKind::work`]): bootstraps, or packed neurons.
    work_total: usize,
    work_done: AtomicUsize,
    /// The node whose workers evaluate it.
    node: Arc<str>,
    /// Taken by the worker that evaluates it; a bulk job's file goes with the job.
    inputs: Mutex<Option<JobInputs>>,
    lifecycle: Mutex<Lifecycle>,
}

/// A job's [`JobState`] as this back end holds it: with when it started, and its outputs or
/// its failure once it ended. Clients see it only as a [`Status`].
enum Lifecycle {
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
        /// What the client is told, settled once ([`job_failure`]).
        code: ErrorCode,
        message: String,
        finished: Instant,
    },
}

impl Job {
    fn status(&self) -> Status {
        let lifecycle = self.lifecycle.lock().expect("job lifecycle lock");
        let (state, seconds, error) = match &*lifecycle {
            Lifecycle::Queued => (JobState::Queued, None, None),
            Lifecycle::Running { started } => (
                JobState::Running,
                Some(started.elapsed().as_secs_f64()),
                None,
            ),
            Lifecycle::Done { seconds, .. } => (JobState::Done, Some(*seconds), None),
            Lifecycle::Failed { code, message, .. } => {
                (JobState::Failed, None, Some((code, message)))
            }
        };
        Status {
            job_id: self.id.clone(),
            model: self.model.id.clone(),
            kind: self.kind,
            state,
            images: self.images,
            progress: Progress::new(
                self.kind,
                self.work_done.load(Ordering::Relaxed),
                self.work_total,
            ),
            seconds,
            error: error.map(|(_, message)| message.clone()),
            error_code: error.map(|(code, _)| code.as_str().to_owned()),
            node: (state != JobState::Queued).then(|| self.node.to_string()),
        }
    }

    fn outputs(&self) -> Result<Vec<u8>, StoreError> {
        match &*self.lifecycle.lock().expect("job lifecycle lock") {
            Lifecycle::Done { outputs, .. } => Ok(outputs.to_vec()),
            Lifecycle::Failed { message, .. } => Err(StoreError::JobFailed {
                id: self.id.clone(),
                message: message.clone(),
            }),
            _ => Err(StoreError::NotReady(self.id.clone())),
        }
    }

    /// Queued or running.
    fn is_active(&self) -> bool {
        matches!(
            *self.lifecycle.lock().expect("job lifecycle lock"),
            Lifecycle::Queued | Lifecycle::Running { .. }
        )
    }

    /// A bulk job, queued or running.
    fn holds_bulk(&self) -> bool {
        self.kind == JobKind::Bulk && self.is_active()
    }

    fn finished_at(&self) -> Option<Instant> {
        match &*self.lifecycle.lock().expect("job lifecycle lock") {
            Lifecycle::Done { finished, .. } | Lifecycle::Failed { finished, .. } => {
                Some(*finished)
            }
            _ => None,
        }
    }
}

/// The embedded back end: jobs in this process's memory, evaluated by its own workers.
pub struct MemoryJobs {
    sender: SyncSender<Arc<Job>>,
    jobs: Arc<Jobs>,
    queued: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    /// The limits [`room`] checks.
    config: QueueConfig,
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

impl MemoryJobs {
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
        MemoryJobs {
            sender,
            jobs,
            queued,
            running,
            config: *config,
            node: node.into(),
            metrics,
        }
    }

    fn get(&self, owner: &Owner, id: &str) -> Result<Arc<Job>, StoreError> {
        self.jobs
            .table
            .lock()
            .expect("job table lock")
            .get(id)
            .filter(|job| job.owner == *owner)
            .cloned()
            .ok_or_else(|| StoreError::UnknownJob(id.into()))
    }
}

impl JobStorage for MemoryJobs {
    fn submit(&self, new: NewJob) -> Result<Status, StoreError> {
        let (kind, images) = (new.inputs.kind(), new.inputs.images());
        let job = Arc::new(Job {
            id: job_id(),
            work_total: kind.work(&new.model, images),
            model: new.model,
            owner: new.owner,
            kind,
            images,
            work_done: AtomicUsize::new(0),
            node: self.node.clone(),
            inputs: Mutex::new(Some(new.inputs)),
            lifecycle: Mutex::new(Lifecycle::Queued),
        });
        // The owner's share is counted and the job entered under one lock, so that two
        // submissions at once cannot both take the last place.
        let mut table = self.jobs.table.lock().expect("job table lock");
        self.room(&table, &job.owner, kind, 0)?;
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
                Err(StoreError::QueueFull { retry_after: 5 })
            }
        }
    }

    fn check_room(&self, owner: &Owner, kind: JobKind, pending: usize) -> Result<(), StoreError> {
        let table = self.jobs.table.lock().expect("job table lock");
        self.room(&table, owner, kind, pending)
    }

    fn status(&self, owner: &Owner, id: &str) -> Result<Status, StoreError> {
        Ok(self.get(owner, id)?.status())
    }

    fn outputs(&self, owner: &Owner, id: &str) -> Result<Vec<u8>, StoreError> {
        self.get(owner, id)?.outputs()
    }

    fn depth(&self) -> Result<Depth, StoreError> {
        Ok(Depth {
            queued: self.queued.load(Ordering::SeqCst),
            running: self.running.load(Ordering::SeqCst),
        })
    }
    fn stop(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl MemoryJobs {
    /// [`room`] for a job of `owner`'s, counted in `table` with `pending` bulk uploads still
    /// arriving.
    fn room(
        &self,
        table: &HashMap<String, Arc<Job>>,
        owner: &Owner,
        kind: JobKind,
        pending: usize,
    ) -> Result<(), StoreError> {
        let owners = || table.values().filter(|job| job.owner == *owner);
        let now = QueueOccupancy {
            owner_active: owners().filter(|job| job.is_active()).count(),
            bulk_active: table.values().filter(|job| job.holds_bulk()).count() + pending,
            owner_bulk_jobs: owners().filter(|job| job.kind == JobKind::Bulk).count(),
        };
        room(&self.config, kind, now)
    }
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
            *job.lifecycle.lock().expect("job lifecycle lock") = Lifecycle::Running { started };
            let result = self.evaluate(&job);
            let finished = Instant::now();
            let seconds = (finished - started).as_secs_f64();
            let ended = match result {
                Ok(outputs) => {
                    Metrics::add(&metrics.jobs_completed, 1);
                    log::info!(
                        "{} job {} done: {} images in {seconds:.2} s",
                        job.kind.as_str(),
                        job.id,
                        job.images,
                    );
                    Lifecycle::Done {
                        outputs: Arc::new(outputs),
                        seconds,
                        finished,
                    }
                }
                Err(error) => {
                    Metrics::add(&metrics.jobs_failed, 1);
                    log::warn!("job {} failed: {error}", job.id);
                    let (code, message) = job_failure(error);
                    Lifecycle::Failed {
                        code,
                        message,
                        finished,
                    }
                }
            };
            *job.lifecycle.lock().expect("job lifecycle lock") = ended;
            self.running.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn evaluate(&self, job: &Job) -> Result<Vec<u8>, StoreError> {
        let inputs = job
            .inputs
            .lock()
            .expect("job inputs lock")
            .take()
            .ok_or_else(|| StoreError::Internal("the job's inputs were already consumed".into()))?;
        let progress = || {
            job.work_done.fetch_add(1, Ordering::Relaxed);
        };
        match inputs {
            JobInputs::Images { key_id, images, .. } => {
                let blobs = self
                    .evaluator
                    .run(&job.model, &job.owner, &key_id, images, &progress)?;
                Ok(batch_body::pack(&blobs))
            }
            JobInputs::Bulk { file, .. } => {
                let upload = std::fs::File::open(&file)
                    .map_err(|e| StoreError::Internal(format!("the spooled batch: {e}")))?;
                self.evaluator.run_bulk(&job.model, upload, &progress)
            }
        }
    }
}
