//! The progress bars of long work: `hexray run` and `hexray-bench engine` count bootstraps
//! (one encrypted image takes seconds), and `hexray analyze` and `hexray bulk` follow a
//! server's job by its bootstraps or packed neurons.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::client::{ApiClient, ClientError};
use crate::server::jobs::Status;

/// A progress bar counting `total` bootstraps.
pub fn bootstrap_bar(total: usize) -> ProgressBar {
    bar(total, "bootstraps")
}

/// A progress bar counting `total` of `unit`.
pub fn bar(total: usize, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{msg}} [{{bar:40}}] {{pos}}/{{len}} {unit}, {{per_sec}}, eta {{eta}}"
        ))
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Follows `job` on `api` until it ends (an hour at most), with a bar counting its `unit`s as
/// the server reports them; returns its last status.
pub fn follow_job(api: &ApiClient, job: &str, unit: &str) -> Result<Status, ClientError> {
    let bar = bar(0, unit);
    bar.set_message(format!("job {job}"));
    let status = api.follow(job, Duration::from_secs(3600), |status| {
        let (done, total) = status.progress.counts();
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    status
}
