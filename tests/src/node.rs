//! The real `hexray serve` process, for the tests that start, kill and restart it.
//!
//! The binary is the one Cargo built beside the running test (`target/<profile>/hexray`): the
//! evaluator's integration tests, which use this module, have it built before they run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};

use hexray_evaluator::launch;

/// The `hexray` binary of this build, to run.
pub fn hexray() -> Command {
    Command::new(binary())
}

/// The path of the `hexray` binary of this build: a test executable lives in
/// `target/<profile>/deps/`.
pub fn binary() -> PathBuf {
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
    binary
}

/// A free loopback port.
pub fn port() -> u16 {
    launch::free_port().expect("a free loopback port")
}

/// A running `hexray serve`, killed (SIGKILL) and reaped when dropped: a test that fails
/// midway leaves no server behind it, holding a port and a core.
pub struct Server(Child);

impl Server {
    /// Its process id, for a signal of the test's choosing.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Waits for it to exit by itself (after a signal).
    pub fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.0.wait()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // It may have exited already; either way it is gone after this.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `hexray serve` with tokens on `data`, and waits until it answers.
pub fn serve(data: &Path, tokens: &Path, port: u16) -> Server {
    serve_with(data, tokens, port, &[])
}

/// [`serve`] with more flags.
pub fn serve_with(data: &Path, tokens: &Path, port: u16, flags: &[&str]) -> Server {
    let tokens = ["--tokens-file", tokens.to_str().expect("a UTF-8 path")];
    start(data, port, &[&tokens[..], flags].concat())
}

/// Starts this build's `hexray serve` ([`launch::start`]) with `flags` (2 evaluation threads
/// unless they say otherwise), and waits until it answers.
pub fn start(data: &Path, port: u16, flags: &[&str]) -> Server {
    let threads: &[&str] = if flags.contains(&"--threads") {
        &[]
    } else {
        &["--threads", "2"]
    };
    let server = launch::start(&binary(), data, port, &[threads, flags].concat())
        .expect("hexray serve starts");
    Server(server)
}

/// SIGKILL, now: the server gets no chance to tidy up.
pub fn kill(server: Server) {
    drop(server);
}
