//! The real `hexray serve` process, for the tests that start, kill and restart it.
//!
//! The binary is the one Cargo built beside the running test (`target/<profile>/hexray`): the
//! evaluator's integration tests, which use this module, have it built before they run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hexray_evaluator::client::ApiClient;

/// The `hexray` binary of this build: a test executable lives in `target/<profile>/deps/`.
pub fn hexray() -> Command {
    let exe = std::env::current_exe().expect("the test executable's path");
    let binary: PathBuf = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test executable inside target/<profile>/deps")
        .join("hexray");
    assert!(
        binary.is_file(),
        "{} is missing: run the evaluator's tests (cargo test -p hexray-evaluator), which build it",
        binary.display()
    );
    Command::new(binary)
}

/// A free loopback port.
pub fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `hexray serve` with tokens on `data`, and waits until it answers.
pub fn serve(data: &Path, tokens: &Path, port: u16) -> Child {
    serve_with(data, tokens, port, &[])
}

/// [`serve`] with more flags.
pub fn serve_with(data: &Path, tokens: &Path, port: u16, flags: &[&str]) -> Child {
    let tokens = ["--tokens-file", tokens.to_str().expect("a UTF-8 path")];
    start(data, port, &[&tokens[..], flags].concat())
}

/// Starts `hexray serve` on loopback with `flags` (2 evaluation threads unless they say
/// otherwise), and waits until it answers.
pub fn start(data: &Path, port: u16, flags: &[&str]) -> Child {
    let threads: &[&str] = if flags.contains(&"--threads") {
        &[]
    } else {
        &["--threads", "2"]
    };
    let child = hexray()
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data)
        .args(["--web-dir", "/nonexistent"])
        .args(threads)
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("hexray serve starts");
    let health = ApiClient::new(&format!("http://127.0.0.1:{port}"), None);
    let start = Instant::now();
    while health.request("/api/v1/health", None).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

/// SIGKILL: the server gets no chance to tidy up.
pub fn kill(mut server: Child) {
    server.kill().unwrap();
    server.wait().unwrap();
}
