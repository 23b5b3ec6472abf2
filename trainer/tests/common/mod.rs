//! What the trainer's tests on real data share: where the shared datasets are.

use std::path::PathBuf;

/// `name` under the shared data that CI places beside the checkout (`../shared/data`). A
/// missing file fails the test, on a developer's machine as in CI: these tests train on real
/// data or fail, never pass without having run.
pub fn shared_data(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(name);
    assert!(
        path.exists(),
        "{} is absent: these tests need ../shared/data beside the checkout",
        path.display()
    );
    path
}
