//! What the trainer's tests on real data share: where the shared datasets are.

use std::path::PathBuf;

/// `name` under the shared data CI places beside the checkout (`../shared/data`), or `None`,
/// said on stderr, where it is absent (a checkout without `../shared`): these tests train on
/// real data or not at all.
pub fn shared_data(name: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(name);
    if !path.exists() {
        // CI always has the data, so there a missing file is a failure, never a silent pass.
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is absent, and CI must have it",
            path.display()
        );
        eprintln!(
            "skipped: {} is absent (CI places ../shared/data beside the checkout)",
            path.display()
        );
        return None;
    }
    Some(path)
}
