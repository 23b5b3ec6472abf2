//! Starting a `hexray serve` process on loopback and waiting until it answers: the one
//! launcher that the tests (through `hexray-test-kit`) and `hexray-bench cluster` share, so
//! that both start a node the same way and neither hands a client a server still starting.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::client::ApiClient;

/// How long a node may take to answer its health route.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum LaunchError {
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("hexray serve exited while starting ({0}); run it by hand to see why")]
    Exited(ExitStatus),
    #[error("hexray serve did not answer /api/v1/health within {} s", START_TIMEOUT.as_secs())]
    Timeout,
}

/// A free loopback port, as the system hands one out.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs `binary serve` on `127.0.0.1:port` with data directory `data`, no page (the tests and
/// benchmarks drive the API alone) and `flags`, its output discarded, and returns it once
/// `/api/v1/health` answers. A node that exits or never answers is killed and reported.
pub fn start(
    binary: &Path,
    data: &Path,
    port: u16,
    flags: &[impl AsRef<OsStr>],
) -> Result<Child, LaunchError> {
    let mut child = Command::new(binary)
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data)
        .args(["--web-dir", "/nonexistent"])
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| LaunchError::Spawn {
            binary: binary.display().to_string(),
            source,
        })?;
    let health = ApiClient::new(&format!("http://127.0.0.1:{port}"), None);
    let started = Instant::now();
    while health.request("/api/v1/health", None).is_err() {
        let failed = match child.try_wait() {
            Ok(Some(status)) => Some(LaunchError::Exited(status)),
            _ if started.elapsed() > START_TIMEOUT => Some(LaunchError::Timeout),
            _ => None,
        };
        if let Some(error) = failed {
            let _ = child.kill();
            let _ = child.wait();
            return Err(error);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}
