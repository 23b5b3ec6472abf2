//! A job on a remote server as the command-line clients run one: submitted, followed with a
//! progress bar to its end, and its encrypted outputs fetched.
//!
//! The client holds the only key that decrypts a job, so a job given up on is lost for good. A
//! server without a database loses its jobs when it restarts; the client, which waits through
//! the restart ([`ApiClient::follow`]), then finds the job unknown and submits it once more, as
//! the page does. So too for a job under a registered key (`hexray analyze`'s; a bulk upload
//! carries its own) that failed because the server no longer had that key, expired or deleted
//! between the submission and the evaluation: `submit` uploads the key again when the server
//! lacks it ([`ApiClient::submit_under_key`]). Once for each: a job lost twice says something
//! is wrong with the server.

use crate::client::{ApiClient, ClientError};
use crate::progress;
use crate::server::jobs::{JobState, Status};

/// A job that ended well.
pub struct Finished {
    /// Its last status.
    pub status: Status,
    /// Its packed encrypted outputs, as `GET /api/v1/jobs/{id}/outputs` sends them.
    pub outputs: Vec<u8>,
}

/// Submits a job with `submit` (which returns its id), follows it with a bar counting `unit`,
/// and fetches its outputs; a job the server lost meanwhile, or could not run for want of its
/// key, is submitted again, once for each reason. A job that failed on the server is
/// [`ClientError::Failed`].
pub fn run(
    api: &ApiClient,
    unit: &str,
    mut submit: impl FnMut() -> Result<String, ClientError>,
) -> Result<Finished, ClientError> {
    let mut recovered = Vec::new();
    loop {
        let job = submit()?;
        let error = match finish(api, &job, unit) {
            Err(e) => e,
            finished => return finished,
        };
        let (code, why) = match error.code() {
            Some("unknown_job") => ("unknown_job", "the server lost it (restarted?)"),
            Some("unknown_key") => ("unknown_key", "the server no longer had its key"),
            _ => return Err(error),
        };
        if recovered.contains(&code) {
            eprintln!("job {job}: {why}, after it was submitted again once: giving up");
            return Err(error);
        }
        eprintln!("job {job}: {why}; submitting its images again");
        recovered.push(code);
    }
}

/// Follows `job` to its end and fetches its outputs.
fn finish(api: &ApiClient, job: &str, unit: &str) -> Result<Finished, ClientError> {
    let status = progress::follow_job(api, job, unit)?;
    if status.state != JobState::Done {
        return Err(ClientError::Failed {
            job: job.to_owned(),
            error: status.error.unwrap_or_else(|| "no reason given".into()),
            code: status.error_code,
        });
    }
    Ok(Finished {
        outputs: api.outputs(job)?,
        status,
    })
}
