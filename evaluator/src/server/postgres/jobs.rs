//! The job queue in PostgreSQL, shared by every node: the API's side (submit, status,
//! outputs, depth, stop), and the sweeper. The workers that claim and evaluate the images are
//! in `worker`.
//!
//! Submission inserts the job and its encrypted images in one transaction.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hexray_crypto::{frames, EncryptedImage};

use super::worker::Workers;
use super::Database;
use crate::server::auth::Owner;
use crate::server::error::{ApiError, ErrorCode};
use crate::server::evaluation::Evaluator;
use crate::server::jobs::{
    job_id, owner_room, start_sweeper, Depth, JobState, JobStorage, NewJob, QueueConfig, Status,
};
use crate::server::metrics::Metrics;
use crate::server::models::ServedModel;

/// The shared queue, as seen from one node.
pub struct PgJobs {
    database: Arc<Database>,
    node: String,
    /// The fingerprints of the models this node serves.
    served: Vec<String>,
    /// Set when the node shuts down: its workers claim nothing more.
    pub(super) stopping: AtomicBool,
    /// Held by a worker while it claims, so that stopping waits for a claim in progress and
    /// hands it back too.
    pub(super) claiming: Mutex<()>,
    capacity: usize,
    per_owner: usize,
    metrics: Arc<Metrics>,
}

impl PgJobs {
    /// The queue in `database`, with `config.workers` workers on this node evaluating `models`.
    pub fn start(
        database: Arc<Database>,
        config: &QueueConfig,
        node: &str,
        models: impl IntoIterator<Item = Arc<ServedModel>>,
        evaluator: Arc<Evaluator>,
    ) -> Arc<Self> {
        let models: HashMap<String, Arc<ServedModel>> = models
            .into_iter()
            .map(|m| (m.loaded.spec().fingerprint.clone(), m))
            .collect();
        let jobs = Arc::new(PgJobs {
            database: database.clone(),
            node: node.to_owned(),
            served: models.keys().cloned().collect(),
            stopping: AtomicBool::new(false),
            claiming: Mutex::new(()),
            capacity: config.capacity,
            per_owner: config.per_owner,
            metrics: evaluator.metrics.clone(),
        });
        let workers = Arc::new(Workers {
            jobs: Arc::downgrade(&jobs),
            database,
            evaluator,
            models,
            node: node.to_owned(),
            threads: config.threads,
            lease: config.lease,
            in_flight: Mutex::new(0),
        });
        for i in 0..config.workers {
            let workers = workers.clone();
            std::thread::Builder::new()
                .name(format!("hexray-worker-{i}"))
                .spawn(move || workers.run())
                .expect("a worker thread starts");
        }
        start_sweeper(&jobs, config.retention, PgJobs::sweep);
        jobs
    }

    /// Deletes finished jobs older than the retention, with their outputs, and fails jobs
    /// that have waited as long for a model no longer served here: after a rolling upgrade,
    /// nothing would ever claim them, and they would hold their owner's share of the queue.
    /// Every node sweeps; the statements are idempotent.
    fn sweep(&self, retention: Duration) {
        let seconds = retention.as_secs_f64();
        let swept = self.database.with(|c| {
            c.execute(
                "DELETE FROM jobs WHERE finished < now() - make_interval(secs => $1)",
                &[&seconds],
            )?;
            c.execute(
                "WITH stale AS (
                     UPDATE job_images SET state = 'failed', input = NULL
                     WHERE state = 'queued' AND job_id IN (
                         SELECT id FROM jobs WHERE state = 'queued' AND NOT fingerprint = ANY($2)
                           AND submitted < now() - make_interval(secs => $1))
                     RETURNING job_id)
                 UPDATE jobs SET state = 'failed', finished = clock_timestamp(),
                        error = 'no node serves this version of model ' || model
                                || ' any more: fetch its client spec and submit again',
                        error_code = 'stale_model'
                 WHERE state = 'queued' AND id IN (SELECT job_id FROM stale)",
                &[&seconds, &self.served],
            )
        });
        if let Err(e) = swept {
            log::error!("cannot sweep the job queue: {e}");
        }
    }
}

/// A token's jobs that are queued or running, on every node: what its share is counted in.
const ACTIVE_JOBS_OF: &str =
    "SELECT count(*) FROM jobs WHERE owner = $1 AND state IN ('queued', 'running')";

impl JobStorage for PgJobs {
    fn submit(&self, new: NewJob) -> Result<Status, ApiError> {
        let inputs = new
            .inputs
            .iter()
            .map(EncryptedImage::to_bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let id = job_id();
        let images = inputs.len();
        let bootstraps_total = images * new.model.loaded.circuit().bootstrap_count();
        let (capacity, per_owner) = (self.capacity, self.per_owner);
        let accepted = self.database.with(|c| {
            let mut tx = c.transaction()?;
            // One submission at a time across the cluster, so that neither a token's share
            // nor the queue limit, which all tokens share, can be raced past.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('hexray job submission'))",
                &[],
            )?;
            let active: i64 = tx.query_one(ACTIVE_JOBS_OF, &[&new.owner.0])?.get(0);
            if let Err(e) = owner_room(active as usize, per_owner) {
                return Ok(Err(e));
            }
            let waiting: i64 = tx
                .query_one("SELECT count(*) FROM jobs WHERE state = 'queued'", &[])?
                .get(0);
            if waiting as usize >= capacity {
                return Ok(Err(ApiError::QueueFull { retry_after: 5 }));
            }
            tx.execute(
                "INSERT INTO jobs (id, owner, model, fingerprint, key_id, images, bootstraps_total)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &id,
                    &new.owner.0,
                    &new.model.id,
                    &new.model.loaded.spec().fingerprint,
                    &new.key_id,
                    &(images as i32),
                    &(bootstraps_total as i64),
                ],
            )?;
            tx.execute(
                "INSERT INTO job_images (job_id, image, input)
                 SELECT $1, (n - 1)::integer, input FROM unnest($2::bytea[]) WITH ORDINALITY AS t(input, n)",
                &[&id, &inputs],
            )?;
            tx.commit()?;
            Ok(Ok(()))
        })?;
        match accepted {
            Ok(()) => Metrics::add(&self.metrics.jobs_submitted, 1),
            Err(ApiError::QueueFull { .. }) => Metrics::add(&self.metrics.jobs_rejected, 1),
            Err(_) => {}
        }
        accepted?;
        Ok(Status {
            job_id: id,
            model: new.model.id.clone(),
            state: JobState::Queued,
            images,
            bootstraps_done: 0,
            bootstraps_total,
            seconds: None,
            error: None,
            error_code: None,
            node: None,
        })
    }

    fn check_owner_room(&self, owner: &Owner) -> Result<(), ApiError> {
        let active: i64 = self
            .database
            .with(|c| c.query_one(ACTIVE_JOBS_OF, &[&owner.0]))?
            .get(0);
        owner_room(active as usize, self.per_owner)
    }

    fn status(&self, owner: &Owner, id: &str) -> Result<Status, ApiError> {
        let row = self
            .database
            .with(|c| {
                c.query_opt(
                    "SELECT j.model, j.state, j.images, j.bootstraps_total, j.error, j.error_code,
                            CASE WHEN j.state <> 'failed' THEN extract(epoch FROM
                                coalesce(j.finished, clock_timestamp()) - j.started)::float8 END,
                            coalesce(sum(i.bootstraps_done), 0)::bigint,
                            string_agg(DISTINCT i.node, ',' ORDER BY i.node)
                     FROM jobs j LEFT JOIN job_images i ON i.job_id = j.id
                     WHERE j.id = $1 AND j.owner = $2
                     GROUP BY j.id",
                    &[&id, &owner.0],
                )
            })?
            .ok_or_else(|| ApiError::UnknownJob(id.into()))?;
        let state = job_state(row.get(1))?;
        let code: Option<String> = row.get(5);
        Ok(Status {
            job_id: id.to_owned(),
            model: row.get(0),
            state,
            images: row.get::<_, i32>(2) as usize,
            bootstraps_done: row.get::<_, i64>(7) as usize,
            bootstraps_total: row.get::<_, i64>(3) as usize,
            seconds: row.get(6),
            error: row.get(4),
            error_code: code.and_then(|c| {
                ErrorCode::ALL
                    .iter()
                    .map(|known| known.as_str())
                    .find(|known| *known == c)
            }),
            node: row.get(8),
        })
    }

    fn outputs(&self, owner: &Owner, id: &str) -> Result<Vec<u8>, ApiError> {
        let (state, error, outputs) = self
            .database
            .with(|c| {
                let Some(job) = c.query_opt(
                    "SELECT state, error FROM jobs WHERE id = $1 AND owner = $2",
                    &[&id, &owner.0],
                )?
                else {
                    return Ok(None);
                };
                let state: String = job.get(0);
                let outputs = if state == "done" {
                    c.query(
                        "SELECT output FROM job_images WHERE job_id = $1 ORDER BY image",
                        &[&id],
                    )?
                    .iter()
                    .map(|row| row.get::<_, Vec<u8>>(0))
                    .collect()
                } else {
                    Vec::new()
                };
                Ok(Some((state, job.get::<_, Option<String>>(1), outputs)))
            })?
            .ok_or_else(|| ApiError::UnknownJob(id.into()))?;
        match job_state(state)? {
            JobState::Done => Ok(frames::pack(&outputs)),
            JobState::Failed => Err(ApiError::JobFailed {
                id: id.into(),
                message: error.unwrap_or_default(),
            }),
            JobState::Queued | JobState::Running => Err(ApiError::NotReady(id.into())),
        }
    }

    fn depth(&self) -> Result<Depth, ApiError> {
        let row = self.database.with(|c| {
            c.query_one(
                "SELECT count(*) FILTER (WHERE state = 'queued'),
                        count(*) FILTER (WHERE state = 'running')
                 FROM jobs",
                &[],
            )
        })?;
        Ok(Depth {
            queued: row.get::<_, i64>(0) as usize,
            running: row.get::<_, i64>(1) as usize,
        })
    }

    fn stop(&self) -> Result<(), ApiError> {
        self.stopping.store(true, Ordering::SeqCst);
        // A claim in progress commits first, and is handed back with the rest.
        let _no_claim = self.claiming.lock().expect("claiming lock");
        let released = self.database.with(|c| {
            let mut tx = c.transaction()?;
            let images = tx.query(
                "UPDATE job_images
                 SET state = 'queued', node = NULL, lease_until = NULL, bootstraps_done = 0
                 WHERE node = $1 AND state = 'running'
                 RETURNING job_id",
                &[&self.node],
            )?;
            let jobs: Vec<String> = images.iter().map(|row| row.get(0)).collect();
            // Those of its jobs that no other node has started are waiting again.
            tx.execute(
                "UPDATE jobs j SET state = 'queued' WHERE id = ANY($1) AND state = 'running'
                 AND NOT EXISTS (SELECT 1 FROM job_images i
                                 WHERE i.job_id = j.id AND i.state <> 'queued')",
                &[&jobs],
            )?;
            tx.commit()?;
            Ok(images.len())
        })?;
        log::info!("stopping: {released} claimed images handed back to the queue");
        Ok(())
    }
}

/// A stored job state, which the schema's CHECK keeps to four words.
fn job_state(state: String) -> Result<JobState, ApiError> {
    match state.as_str() {
        "queued" => Ok(JobState::Queued),
        "running" => Ok(JobState::Running),
        "done" => Ok(JobState::Done),
        "failed" => Ok(JobState::Failed),
        other => Err(ApiError::Internal(format!("a job in state {other}"))),
    }
}
