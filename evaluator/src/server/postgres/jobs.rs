//! The job queue in PostgreSQL, shared by every node: the API's side (submit, status,
//! outputs, depth, stop), and the sweeper. The workers that claim and evaluate the images are
//! in `worker`.
//!
//! Submission inserts the job and its encrypted images in one transaction; a bulk job's upload
//! goes into a large object in the same transaction, so a refused or failed submission leaves
//! nothing behind.
use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hexray_crypto::batch_body;
use postgres::Transaction;

use super::worker::Workers;
use super::Database;
use crate::server::auth::Owner;
use crate::server::error::ErrorCode;
use crate::server::evaluation::Evaluator;
use crate::server::jobs::{
    job_id, room, spool_error, start_sweeper, Depth, JobInputs, JobKind, JobState, JobStorage,
    NewJob, Progress, QueueConfig, QueueOccupancy, Status,
};
use crate::server::metrics::Metrics;
use crate::server::models::ServedModel;
use crate::server::store_error::StoreError;

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
    /// The limits [`room`] checks, and the queue's capacity.
    config: QueueConfig,
    metrics: Arc<Metrics>,
}

/// The piece of a bulk upload one statement writes or reads.
pub(super) const UPLOAD_PIECE: usize = 4 << 20;

impl PgJobs {
    /// The queue in `database`, with `config.workers` workers on this node evaluating `models`;
    /// they copy bulk uploads to `spool` to read them.
    pub fn start(
        database: Arc<Database>,
        config: &QueueConfig,
        (node, spool): (&str, &std::path::Path),
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
            config: *config,
            metrics: evaluator.metrics.clone(),
        });
        let workers = Arc::new(Workers {
            jobs: Arc::downgrade(&jobs),
            database,
            evaluator,
            models,
            node: node.to_owned(),
            spool: spool.to_owned(),
            bulk: config.takes_bulk(),
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

    /// Unlinks the uploads of bulk jobs that have ended, deletes finished jobs older than the
    /// retention, with their outputs, and fails jobs that have waited as long for a model no
    /// longer served here, or bulk jobs on a node whose bulk path is off: after a rolling
    /// upgrade or a change of `--bulk-queue-limit` to 0, nothing would ever claim them, and
    /// they would hold their owner's share of the queue. Every node sweeps; the statements are
    /// idempotent, and each runs on its own, so that one failing never stops the others.
    fn sweep(&self, retention: Duration) {
        let seconds = retention.as_secs_f64();
        // Each upload is unlinked once: a row another node's sweeper holds is skipped, and an
        // object already gone (unlinked by hand) is only forgotten.
        let unlink = "WITH ended AS (
                          UPDATE jobs j SET upload = NULL
                          FROM (SELECT id, upload FROM jobs
                                WHERE upload IS NOT NULL AND state IN ('done', 'failed')
                                FOR UPDATE SKIP LOCKED) e
                          WHERE j.id = e.id
                          RETURNING e.upload)
                      SELECT count(lo_unlink(upload)) FROM ended
                      WHERE upload IN (SELECT oid FROM pg_largeobject_metadata)";
        // A job whose upload is not unlinked yet stays, so no large object is ever orphaned.
        let expire = "DELETE FROM jobs WHERE finished < now() - make_interval(secs => $1)
                      AND upload IS NULL";
        let stale = "WITH stale AS (
                         UPDATE job_images SET state = 'failed', input = NULL
                         WHERE state = 'queued' AND job_id IN (
                             SELECT id FROM jobs WHERE state = 'queued'
                               AND NOT (fingerprint = ANY($2) AND (kind <> 'bulk' OR $3))
                               AND submitted < now() - make_interval(secs => $1))
                         RETURNING job_id)
                     UPDATE jobs SET state = 'failed', finished = clock_timestamp(),
                            error = CASE WHEN fingerprint = ANY($2)
                                THEN 'no node takes bulk jobs any more \
                                      (their --bulk-queue-limit is 0): ask your administrator'
                                ELSE 'no node serves this version of model ' || model
                                     || ' any more: fetch its client spec and submit again' END,
                            error_code = 'stale_model'
                     WHERE state = 'queued' AND id IN (SELECT job_id FROM stale)";
        let takes_bulk = self.config.takes_bulk();
        let steps: [(&str, &str, &[&(dyn postgres::types::ToSql + Sync)]); 3] = [
            ("unlink ended uploads", unlink, &[]),
            ("expire finished jobs", expire, &[&seconds]),
            (
                "fail jobs nothing here will claim",
                stale,
                &[&seconds, &self.served, &takes_bulk],
            ),
        ];
        for (what, sql, parameters) in steps {
            if let Err(e) = self.database.with(|c| c.execute(sql, parameters)) {
                log::error!("cannot {what} in the job queue: {e}");
            }
        }
    }
}

/// What [`room`] is counted in, on every node: a token's jobs that are queued or running,
/// every token's such bulk jobs, and the token's bulk jobs still kept.
const OCCUPANCY: &str = "SELECT count(*) FILTER (WHERE owner = $1 AND state IN ('queued', 'running')),
                                count(*) FILTER (WHERE kind = 'bulk' AND state IN ('queued', 'running')),
                                count(*) FILTER (WHERE owner = $1 AND kind = 'bulk')
                         FROM jobs";

impl PgJobs {
    /// [`room`] for a job of `owner`'s, as the database counts it now, with `pending` bulk
    /// uploads this node is still receiving.
    fn room_in(
        &self,
        c: &mut impl postgres::GenericClient,
        owner: &Owner,
        kind: JobKind,
        pending: usize,
    ) -> Result<Result<(), StoreError>, postgres::Error> {
        let row = c.query_one(OCCUPANCY, &[&owner.0])?;
        let count = |i| row.get::<_, i64>(i) as usize;
        let now = QueueOccupancy {
            owner_active: count(0),
            bulk_active: count(1) + pending,
            owner_bulk_jobs: count(2),
        };
        Ok(room(&self.config, kind, now))
    }
}

/// Copies a spooled bulk upload into a new large object, in pieces; returns its oid, or why
/// the file could not be read.
fn store_upload(
    tx: &mut Transaction,
    file: &std::path::Path,
) -> Result<Result<u32, StoreError>, postgres::Error> {
    let mut file = match std::fs::File::open(file) {
        Ok(file) => file,
        Err(e) => return Ok(Err(spool_error(e))),
    };
    let oid: u32 = tx.query_one("SELECT lo_create(0)", &[])?.get(0);
    let (mut piece, mut offset) = (vec![0u8; UPLOAD_PIECE], 0i64);
    loop {
        let n = match read_piece(&mut file, &mut piece) {
            Ok(0) => return Ok(Ok(oid)),
            Ok(n) => n,
            Err(e) => return Ok(Err(spool_error(e))),
        };
        tx.execute("SELECT lo_put($1, $2, $3)", &[&oid, &offset, &&piece[..n]])?;
        offset += n as i64;
    }
}

/// Fills `piece` from `file` as far as it can; returns the bytes read (0 at the end).
fn read_piece(file: &mut std::fs::File, piece: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < piece.len() {
        match file.read(&mut piece[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

impl JobStorage for PgJobs {
    fn submit(&self, new: NewJob) -> Result<Status, StoreError> {
        let (kind, images) = (new.inputs.kind(), new.inputs.images());
        let inputs: &[Vec<u8>] = match &new.inputs {
            JobInputs::Images { blobs, .. } => blobs,
            // One row, whose input is the job's large object.
            JobInputs::Bulk { .. } => &[],
        };
        let id = job_id();
        let work_total = kind.work(&new.model, images);
        let capacity = self.config.capacity;
        let mut retried = false;
        let accepted = self.database.with(|c| {
            let mut tx = c.transaction()?;
            // [`Database::with`] runs this again on a new connection when the old one drops,
            // and it may have dropped after the COMMIT below and before its reply: the job,
            // whose id is this submission's own, is then queued already, and is not again.
            if std::mem::replace(&mut retried, true)
                && tx
                    .query_opt("SELECT 1 FROM jobs WHERE id = $1", &[&id])?
                    .is_some()
            {
                return Ok(Ok(()));
            }
            // The upload is written before the lock below, which it would hold for seconds.
            let upload = match &new.inputs {
                JobInputs::Bulk { file, .. } => match store_upload(&mut tx, file)? {
                    Ok(oid) => Some(oid),
                    Err(e) => return Ok(Err(e)),
                },
                JobInputs::Images { .. } => None,
            };
            // One submission at a time across the cluster, so that neither a token's share
            // nor the queue limit, which all tokens share, can be raced past.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('hexray job submission'))",
                &[],
            )?;
            if let Err(e) = self.room_in(&mut tx, &new.owner, kind, 0)? {
                return Ok(Err(e));
            }
            let waiting: i64 = tx
                .query_one("SELECT count(*) FROM jobs WHERE state = 'queued'", &[])?
                .get(0);
            if waiting as usize >= capacity {
                return Ok(Err(StoreError::QueueFull { retry_after: 5 }));
            }
            tx.execute(
                "INSERT INTO jobs (id, owner, model, fingerprint, key_id, images, bootstraps_total,
                                   kind, upload)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &id,
                    &new.owner.0,
                    &new.model.id,
                    &new.model.loaded.spec().fingerprint,
                    &new.inputs.key_id(),
                    &(images as i32),
                    &(work_total as i64),
                    &kind.as_str(),
                    &upload,
                ],
            )?;
            match upload {
                Some(_) => tx.execute(
                    "INSERT INTO job_images (job_id, image) VALUES ($1, 0)",
                    &[&id],
                )?,
                None => tx.execute(
                    "INSERT INTO job_images (job_id, image, input)
                     SELECT $1, (n - 1)::integer, input
                     FROM unnest($2::bytea[]) WITH ORDINALITY AS t(input, n)",
                    &[&id, &inputs],
                )?,
            };
            tx.commit()?;
            Ok(Ok(()))
        })?;
        match accepted {
            Ok(()) => Metrics::add(&self.metrics.jobs_submitted, 1),
            Err(StoreError::QueueFull { .. }) => Metrics::add(&self.metrics.jobs_rejected, 1),
            Err(_) => {}
        }
        accepted?;
        Ok(Status {
            job_id: id,
            model: new.model.id.clone(),
            kind,
            state: JobState::Queued,
            images,
            progress: Progress::new(kind, 0, work_total),
            seconds: None,
            error: None,
            error_code: None,
            node: None,
        })
    }

    fn check_room(&self, owner: &Owner, kind: JobKind, pending: usize) -> Result<(), StoreError> {
        self.database
            .with(|c| self.room_in(c, owner, kind, pending))?
    }

    fn status(&self, owner: &Owner, id: &str) -> Result<Status, StoreError> {
        let row = self
            .database
            .with(|c| {
                c.query_opt(
                    "SELECT j.model, j.state, j.images, j.bootstraps_total, j.error, j.error_code,
                            CASE WHEN j.state <> 'failed' THEN extract(epoch FROM
                                coalesce(j.finished, clock_timestamp()) - j.started)::float8 END,
                            coalesce(sum(i.bootstraps_done), 0)::bigint,
                            string_agg(DISTINCT i.node, ',' ORDER BY i.node), j.kind
                     FROM jobs j LEFT JOIN job_images i ON i.job_id = j.id
                     WHERE j.id = $1 AND j.owner = $2
                     GROUP BY j.id",
                    &[&id, &owner.0],
                )
            })?
            .ok_or_else(|| StoreError::UnknownJob(id.into()))?;
        let state = job_state(row.get(1))?;
        let kind = job_kind(row.get(9))?;
        let code: Option<String> = row.get(5);
        Ok(Status {
            job_id: id.to_owned(),
            model: row.get(0),
            kind,
            state,
            images: row.get::<_, i32>(2) as usize,
            progress: Progress::new(
                kind,
                row.get::<_, i64>(7) as usize,
                row.get::<_, i64>(3) as usize,
            ),
            seconds: row.get(6),
            error: row.get(4),
            error_code: code.filter(|c| ErrorCode::ALL.iter().any(|known| known.as_str() == c)),
            node: row.get(8),
        })
    }

    fn outputs(&self, owner: &Owner, id: &str) -> Result<Vec<u8>, StoreError> {
        let (state, error, outputs, kind) = self
            .database
            .with(|c| {
                let Some(job) = c.query_opt(
                    "SELECT state, error, kind FROM jobs WHERE id = $1 AND owner = $2",
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
                Ok(Some((
                    state,
                    job.get::<_, Option<String>>(1),
                    outputs,
                    job.get::<_, String>(2),
                )))
            })?
            .ok_or_else(|| StoreError::UnknownJob(id.into()))?;
        match job_state(state)? {
            JobState::Done => match job_kind(kind)? {
                JobKind::Interactive => Ok(batch_body::pack(&outputs)),
                JobKind::Bulk => outputs
                    .into_iter()
                    .next()
                    .ok_or_else(|| StoreError::Internal(format!("bulk job {id} has no output"))),
            },
            JobState::Failed => Err(StoreError::JobFailed {
                id: id.into(),
                message: error.unwrap_or_default(),
            }),
            JobState::Queued | JobState::Running => Err(StoreError::NotReady(id.into())),
        }
    }

    fn depth(&self) -> Result<Depth, StoreError> {
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

    fn stop(&self) -> Result<(), StoreError> {
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

/// A stored job kind, which the schema's CHECK keeps to two words.
pub(super) fn job_kind(kind: String) -> Result<JobKind, StoreError> {
    match kind.as_str() {
        "interactive" => Ok(JobKind::Interactive),
        "bulk" => Ok(JobKind::Bulk),
        other => Err(StoreError::Internal(format!("a job of kind {other}"))),
    }
}

/// A stored job state, which the schema's CHECK keeps to four words.
fn job_state(state: String) -> Result<JobState, StoreError> {
    match state.as_str() {
        "queued" => Ok(JobState::Queued),
        "running" => Ok(JobState::Running),
        "done" => Ok(JobState::Done),
        "failed" => Ok(JobState::Failed),
        other => Err(StoreError::Internal(format!("a job in state {other}"))),
    }
}
