//! A node's workers on the shared queue: they claim images, evaluate them, renew their lease
//! while they do, and write the outputs or the failure.
//!
//! The unit of work is an image (a bulk job's whole batch is one): a node's worker claims up to as many queued images of the
//! oldest job as the node has free cores (`SELECT … FOR UPDATE SKIP LOCKED`, so nodes never wait
//! on each other), which splits a batch larger than one node across nodes by image. A claim
//! carries a lease that the worker renews, with the bootstraps done, about once a second while
//! it evaluates. A node that dies stops renewing; once its lease has run out, any node claims
//! the images again.
//!
//! Each claim bumps the image's `attempt`, and every later write names the attempt it holds, so
//! a node whose claim lapsed (it froze, then woke) can write nothing. A claim's outputs are
//! written in one transaction with their state change, and the job is marked done in the same
//! transaction as its last image: a job finishes exactly once, with every output once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hexray_crypto::EncryptedImage;

use super::jobs::{job_kind, PgJobs, UPLOAD_PIECE};
use super::Database;
use crate::server::auth::Owner;
use crate::server::error::job_failure;
use crate::server::evaluation::Evaluator;
use crate::server::jobs::{spool_error, JobKind};
use crate::server::metrics::Metrics;
use crate::server::models::ServedModel;
use crate::server::store_error::StoreError;

/// How often an idle worker looks for work.
const POLL: Duration = Duration::from_millis(250);

/// The most often a claim writes its progress (and renews its lease).
const PROGRESS_PERIOD: Duration = Duration::from_secs(1);

/// A node's hold on some images of one job.
struct Claim {
    job: String,
    owner: Owner,
    kind: JobKind,
    /// The registered key of an interactive job.
    key_id: Option<String>,
    /// A bulk job's upload (a large object); its one row has no input.
    upload: Option<u32>,
    model: Arc<ServedModel>,
    /// The images' places in the batch, the attempt each claim is, and their inputs.
    images: Vec<i32>,
    attempts: Vec<i32>,
    inputs: Vec<Option<Vec<u8>>>,
}

/// What a node's workers share: the queue, the node's evaluator, the models it serves (by
/// fingerprint: a node claims only jobs for models it serves in the same version), and the
/// images it is evaluating, so it claims no more than its free cores.
pub(super) struct Workers {
    pub(super) jobs: Weak<PgJobs>,
    pub(super) database: Arc<Database>,
    pub(super) evaluator: Arc<Evaluator>,
    pub(super) models: HashMap<String, Arc<ServedModel>>,
    pub(super) node: String,
    /// Where a bulk upload is copied to be read (the data directory's spool).
    pub(super) spool: std::path::PathBuf,
    /// Whether this node takes bulk jobs: with `--bulk-queue-limit 0` it claims none of those
    /// other nodes accepted, as it copies no upload into its spool.
    pub(super) bulk: bool,
    pub(super) threads: usize,
    pub(super) lease: Duration,
    pub(super) in_flight: Mutex<usize>,
}

/// Images a claim may take: queued, or running under a lease that has run out.
const CLAIMABLE: &str = "(i.state = 'queued' OR (i.state = 'running' AND i.lease_until < now()))";

impl Workers {
    /// Claims and evaluates work until the node's queue is dropped or stopped.
    pub(super) fn run(self: Arc<Self>) {
        loop {
            let free = self.reserve();
            if free == 0 {
                std::thread::sleep(POLL);
                continue;
            }
            let claimed = match self.jobs.upgrade() {
                Some(jobs) => {
                    let _claiming = jobs.claiming.lock().expect("claiming lock");
                    if jobs.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    self.claim(free)
                }
                None => return, // The node's server was dropped.
            };
            let taken = match &claimed {
                Ok(Some(claim)) => claim.images.len(),
                _ => 0,
            };
            self.release(free - taken);
            match claimed {
                Ok(Some(claim)) => {
                    self.evaluate(&claim);
                    self.release(taken);
                }
                Ok(None) => std::thread::sleep(POLL),
                Err(e) => {
                    log::error!("cannot claim work: {e}");
                    std::thread::sleep(POLL * 4);
                }
            }
        }
    }

    /// Reserves this node's free cores for one claim; returns how many.
    fn reserve(&self) -> usize {
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
        let free = self.threads.saturating_sub(*in_flight);
        *in_flight += free;
        free
    }

    fn release(&self, cores: usize) {
        *self.in_flight.lock().expect("in-flight lock") -= cores;
    }

    /// Claims up to `free` images of the oldest job with work left, for a model this node
    /// serves.
    fn claim(&self, free: usize) -> Result<Option<Claim>, StoreError> {
        let fingerprints: Vec<&str> = self.models.keys().map(String::as_str).collect();
        let lease = self.lease.as_secs_f64();
        let claimed = self.database.with(|c| {
            let mut tx = c.transaction()?;
            let Some(first) = tx.query_opt(
                &format!(
                    "SELECT i.job_id FROM job_images i JOIN jobs j ON j.id = i.job_id
                     WHERE j.state IN ('queued', 'running') AND j.fingerprint = ANY($1)
                       AND (j.kind <> 'bulk' OR $2) AND {CLAIMABLE}
                     ORDER BY j.submitted, j.id, i.image
                     LIMIT 1
                     FOR UPDATE OF i SKIP LOCKED"
                ),
                &[&fingerprints, &self.bulk],
            )?
            else {
                return Ok(None);
            };
            let job: String = first.get(0);
            // The picked images are materialised first: as a subquery of the UPDATE, the
            // planner may run the LIMIT again for each row and claim more than `free`.
            let rows = tx.query(
                &format!(
                    "WITH picked AS MATERIALIZED (
                         SELECT i.image FROM job_images i
                         WHERE i.job_id = $1 AND {CLAIMABLE}
                         ORDER BY i.image LIMIT $4 FOR UPDATE SKIP LOCKED)
                     UPDATE job_images j SET state = 'running', node = $2, attempt = attempt + 1,
                            lease_until = now() + make_interval(secs => $3), bootstraps_done = 0
                     FROM picked WHERE j.job_id = $1 AND j.image = picked.image
                     RETURNING j.image, j.attempt, j.input"
                ),
                &[&job, &self.node, &lease, &(free as i64)],
            )?;
            // The job may have failed since the first query read it: then claim nothing.
            let Some(meta) = tx.query_opt(
                "UPDATE jobs SET state = 'running', started = coalesce(started, now())
                 WHERE id = $1 AND state IN ('queued', 'running')
                 RETURNING owner, key_id, fingerprint, kind, upload",
                &[&job],
            )?
            else {
                return Ok(None); // Rolled back with the transaction.
            };
            tx.commit()?;
            Ok(Some((job, meta, rows)))
        })?;
        let Some((job, meta, mut rows)) = claimed else {
            return Ok(None);
        };
        rows.sort_by_key(|row| row.get::<_, i32>(0));
        let fingerprint: String = meta.get(2);
        Ok(Some(Claim {
            job,
            owner: Owner(meta.get(0)),
            kind: job_kind(meta.get(3))?,
            key_id: meta.get(1),
            upload: meta.get(4),
            model: self.models[&fingerprint].clone(),
            images: rows.iter().map(|r| r.get(0)).collect(),
            attempts: rows.iter().map(|r| r.get(1)).collect(),
            inputs: rows.iter().map(|r| r.get(2)).collect(),
        }))
    }

    /// Evaluates a claim while renewing its lease, then records its outputs or its failure.
    fn evaluate(&self, claim: &Claim) {
        let done = AtomicUsize::new(0);
        let (stop, stopped) = channel::<()>();
        let result = std::thread::scope(|scope| {
            let done = &done;
            scope.spawn(move || loop {
                match stopped.recv_timeout(PROGRESS_PERIOD.min(self.lease / 3)) {
                    Err(RecvTimeoutError::Timeout) => {
                        if let Err(e) = self.renew(claim, done.load(Ordering::Relaxed)) {
                            log::warn!("cannot renew the claim on job {}: {e}", claim.job);
                        }
                    }
                    _ => return,
                }
            });
            let result = self.outputs(claim, done);
            drop(stop);
            result
        });
        let recorded = match result {
            Ok(outputs) => self.complete(claim, &outputs),
            // This node's disk, not the job: the claim lapses, for this node or another to
            // take again.
            Err(StoreError::StorageFull) => {
                log::error!(
                    "job {}: this node's spool is full; its claim will lapse",
                    claim.job
                );
                Ok(())
            }
            Err(error) => self.fail(claim, error),
        };
        if let Err(e) = recorded {
            log::error!(
                "cannot record images {:?} of job {}: {e}; they will be claimed again",
                claim.images,
                claim.job
            );
        }
    }

    fn outputs(&self, claim: &Claim, done: &AtomicUsize) -> Result<Vec<Vec<u8>>, StoreError> {
        let progress = || {
            done.fetch_add(1, Ordering::Relaxed);
        };
        let Some(key_id) = &claim.key_id else {
            let upload = self.upload(claim)?;
            let outputs = self.evaluator.run_bulk(&claim.model, upload, &progress)?;
            return Ok(vec![outputs]);
        };
        let set = claim.model.loaded.parameter_set();
        let len = claim.model.loaded.circuit().input_len();
        let inputs = claim
            .inputs
            .iter()
            .map(|bytes| {
                let bytes = bytes
                    .as_deref()
                    .ok_or_else(|| StoreError::Internal("a stored input is missing".into()))?;
                EncryptedImage::from_bytes(bytes, set, len).map_err(|e| {
                    StoreError::Internal(format!("a stored input no longer reads: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.evaluator
            .run(&claim.model, &claim.owner, key_id, inputs, &progress)
    }

    /// A bulk claim's upload, copied from its large object in pieces to a file in the spool
    /// (removed when it is closed), so that it is read as the route read it: one ciphertext at
    /// a time, never whole in memory.
    fn upload(&self, claim: &Claim) -> Result<std::fs::File, StoreError> {
        use std::io::{Seek, Write};
        let oid = claim
            .upload
            .ok_or_else(|| StoreError::Internal(format!("bulk job {} has no upload", claim.job)))?;
        let mut file = tempfile::tempfile_in(&self.spool).map_err(spool_error)?;
        let copied = self.database.with(|c| {
            // Run again after a lost connection: the copy starts over.
            if let Err(e) = file.rewind().and_then(|()| file.set_len(0)) {
                return Ok(Err(spool_error(e)));
            }
            let mut offset = 0i64;
            loop {
                let piece: Vec<u8> = c
                    .query_one(
                        "SELECT lo_get($1, $2, $3)",
                        &[&oid, &offset, &(UPLOAD_PIECE as i32)],
                    )?
                    .get(0);
                if piece.is_empty() {
                    return Ok(Ok(()));
                }
                if let Err(e) = file.write_all(&piece) {
                    return Ok(Err(spool_error(e)));
                }
                offset += piece.len() as i64;
            }
        })?;
        copied?;
        file.rewind().map_err(spool_error)?;
        Ok(file)
    }

    /// The bootstraps done, shared out over the claim's images (the first ones take the
    /// remainder), so a job's progress is the sum over its images.
    fn shares(claim: &Claim, done: usize) -> Vec<i64> {
        let n = claim.images.len();
        (0..n)
            .map(|i| (done / n + usize::from(i < done % n)) as i64)
            .collect()
    }

    /// Extends the claim's lease and records its progress, for the attempts it still holds.
    fn renew(&self, claim: &Claim, done: usize) -> Result<(), StoreError> {
        let lease = self.lease.as_secs_f64();
        let shares = Self::shares(claim, done);
        let renewed = self.database.with(|c| {
            c.execute(
                "UPDATE job_images i
                 SET lease_until = now() + make_interval(secs => $4), bootstraps_done = c.done
                 FROM unnest($2::integer[], $3::integer[], $5::bigint[]) AS c(image, attempt, done)
                 WHERE i.job_id = $1 AND i.image = c.image AND i.attempt = c.attempt
                   AND i.state = 'running'",
                &[&claim.job, &claim.images, &claim.attempts, &lease, &shares],
            )
        })?;
        if renewed < claim.images.len() as u64 {
            log::warn!(
                "job {}: this node's claim lapsed and was taken again; its results will be dropped",
                claim.job
            );
        }
        Ok(())
    }

    /// Writes the outputs and the images' state change in one transaction, if this node still
    /// holds every attempt it claimed, and marks the job done with its last image. Locks are
    /// taken images first, then the job, in the same order as a claim, so the two never wait
    /// on each other in a cycle.
    fn complete(&self, claim: &Claim, outputs: &[Vec<u8>]) -> Result<(), StoreError> {
        // An interactive image's bootstraps, or a bulk batch's neurons.
        let per_image = claim.kind.work(&claim.model, 1) as i64;
        let finished = self.database.with(|c| {
            let mut tx = c.transaction()?;
            let written = tx.execute(
                "UPDATE job_images i
                 SET state = 'done', output = c.output, input = NULL, lease_until = NULL,
                     bootstraps_done = $5
                 FROM unnest($2::integer[], $3::integer[], $4::bytea[]) AS c(image, attempt, output)
                 WHERE i.job_id = $1 AND i.image = c.image AND i.attempt = c.attempt
                   AND i.state = 'running'",
                &[
                    &claim.job,
                    &claim.images,
                    &claim.attempts,
                    &outputs,
                    &per_image,
                ],
            )?;
            if written < claim.images.len() as u64 {
                return Ok(Completion::Lapsed); // Another node owns these images now.
            }
            // One completion per job at a time, counting after the previous one committed:
            // whoever writes the last image sees it.
            let state: Option<String> = tx
                .query_opt(
                    "SELECT state FROM jobs WHERE id = $1 FOR UPDATE",
                    &[&claim.job],
                )?
                .map(|r| r.get(0));
            if !matches!(state.as_deref(), Some("queued" | "running")) {
                return Ok(Completion::Ended); // Failed meanwhile, or expired and deleted.
            }
            let left: i64 = tx
                .query_one(
                    "SELECT count(*) FROM job_images WHERE job_id = $1 AND state <> 'done'",
                    &[&claim.job],
                )?
                .get(0);
            if left == 0 {
                tx.execute(
                    "UPDATE jobs SET state = 'done', finished = clock_timestamp() WHERE id = $1",
                    &[&claim.job],
                )?;
            }
            tx.commit()?;
            Ok(if left == 0 {
                Completion::Job
            } else {
                Completion::Images
            })
        })?;
        match finished {
            Completion::Job => {
                Metrics::add(&self.evaluator.metrics.jobs_completed, 1);
                log::info!("job {} done (its last images on this node)", claim.job);
            }
            Completion::Images => {}
            Completion::Lapsed => log::warn!(
                "job {}: images {:?} were evaluated here but their claim lapsed; dropped",
                claim.job,
                claim.images
            ),
            Completion::Ended => log::info!(
                "job {} ended while images {:?} were evaluated here; dropped",
                claim.job,
                claim.images
            ),
        }
        Ok(())
    }

    /// Fails the job, if this node still holds its claim: its images that are not done can
    /// no longer be claimed, and their inputs are dropped. Images first, then the job, as
    /// everywhere.
    fn fail(&self, claim: &Claim, error: StoreError) -> Result<(), StoreError> {
        let (code, message) = job_failure(error);
        let code = code.as_str();
        let failed = self.database.with(|c| {
            let mut tx = c.transaction()?;
            let held = tx.execute(
                "UPDATE job_images i SET lease_until = NULL
                 FROM unnest($2::integer[], $3::integer[]) AS c(image, attempt)
                 WHERE i.job_id = $1 AND i.image = c.image AND i.attempt = c.attempt
                   AND i.state = 'running'",
                &[&claim.job, &claim.images, &claim.attempts],
            )?;
            if held < claim.images.len() as u64 {
                return Ok(false); // A lapsed claim: the node that holds it now decides.
            }
            tx.execute(
                "UPDATE job_images SET state = 'failed', input = NULL
                 WHERE job_id = $1 AND state <> 'done'",
                &[&claim.job],
            )?;
            let n = tx.execute(
                "UPDATE jobs SET state = 'failed', finished = clock_timestamp(),
                        error = $2, error_code = $3
                 WHERE id = $1 AND state IN ('queued', 'running')",
                &[&claim.job, &message, &code],
            )?;
            tx.commit()?;
            Ok(n == 1)
        })?;
        if failed {
            Metrics::add(&self.evaluator.metrics.jobs_failed, 1);
            log::warn!("job {} failed: {message}", claim.job);
        }
        Ok(())
    }
}

/// What recording a claim's outputs came to.
enum Completion {
    /// The job's last images: it is done.
    Job,
    /// Some of its images; others are still to come.
    Images,
    /// The claim had lapsed, and another node holds the images.
    Lapsed,
    /// The job failed or was removed meanwhile.
    Ended,
}
