//! The progress bar `hexray run` and `hexray-bench engine` show while bootstraps run: one
//! encrypted image takes seconds, and a bar that counts bootstraps says how many.

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar counting `total` bootstraps.
pub fn bootstrap_bar(total: usize) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} bootstraps, {per_sec}, eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar
}
