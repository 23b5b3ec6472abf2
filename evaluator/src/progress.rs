//! The progress bars of long work: `hexray run` and `hexray-bench engine` count bootstraps
//! (one encrypted image takes seconds), and `hexray bulk` counts the packed neurons a server
//! has evaluated.

use indicatif::{ProgressBar, ProgressStyle};

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
