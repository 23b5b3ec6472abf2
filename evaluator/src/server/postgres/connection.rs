//! How a node reaches PostgreSQL: the URL, and whether and how the link is encrypted.
//!
//! Keys, jobs and encrypted outputs cross the cluster network to the database, so a link to
//! another host is TLS, and the server's certificate is always verified: its chain against a CA
//! and its name against the URL's host (libpq's `verify-full`). rustls has no unverified mode,
//! and HEXray adds none. The URL's `sslmode` says:
//!
//! | `sslmode` | loopback host or socket | another host |
//! |---|---|---|
//! | absent | plain | verified TLS |
//! | `require`, `verify-ca`, `verify-full` | verified TLS | verified TLS |
//! | `disable` | plain | plain, logged as a warning: the operator said so |
//! | `allow`, `prefer` | refused | refused: both fall back to plain text silently |
//!
//! The CA comes from the URL's `sslrootcert` (a PEM file, or `system`), else from the
//! `--database-ca-file` setting, else from the system's bundle
//! (`/etc/ssl/certs/ca-certificates.crt`, Debian's `ca-certificates`).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use postgres::config::{Host, SslMode};
use postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::DatabaseError;
use crate::trusted_cas::{read_cas, SYSTEM_CAS};

/// Where to connect, and how.
pub struct Connection {
    config: Config,
    tls: Option<MakeRustlsConnect>,
}

impl Connection {
    /// Reads a `postgres://` URL and its TLS settings; `ca_file` is the CA setting used when
    /// the URL has no `sslrootcert`. Refuses, in words, a URL that would send data in clear to
    /// another host without saying so.
    ///
    /// ```
    /// use hexray_evaluator::server::postgres::Connection;
    ///
    /// let local = Connection::parse("postgres://hexray@127.0.0.1:5432/hexray", None).unwrap();
    /// assert!(!local.encrypted());
    /// // Another host is TLS, verified against a CA that must be readable.
    /// let remote = "postgres://hexray@db.internal/hexray?sslrootcert=/nonexistent/ca.pem";
    /// let refused = Connection::parse(remote, None).err().unwrap();
    /// assert!(refused.to_string().contains("/nonexistent/ca.pem"));
    /// // Plain text to another host only when the URL says so.
    /// let plain = "postgres://hexray@db.internal/hexray?sslmode=disable";
    /// assert!(!Connection::parse(plain, None).unwrap().encrypted());
    /// let fallback = "postgres://hexray@db.internal/hexray?sslmode=prefer";
    /// assert!(Connection::parse(fallback, None).is_err());
    /// ```
    pub fn parse(url: &str, ca_file: Option<&Path>) -> Result<Self, DatabaseError> {
        let settings = |reason: String| DatabaseError::Settings(reason);
        let Some((base, query)) = ["postgres://", "postgresql://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
            .then(|| url.split_once('?').unwrap_or((url, "")))
        else {
            return Err(settings(
                "the database URL must start with postgres:// (or postgresql://)".into(),
            ));
        };
        let (mut mode, mut root) = (None, None);
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "sslmode" => mode = Some(value.to_owned()),
                "sslrootcert" => root = Some(percent_decoded(value)?),
                _ => kept.push(pair),
            }
        }
        let plain_url = match kept.is_empty() {
            true => base.to_owned(),
            false => format!("{base}?{}", kept.join("&")),
        };
        let mut config = Config::from_str(&plain_url)
            .map_err(|e| settings(format!("the database URL does not parse: {e}")))?;
        let local = config.get_hosts().iter().all(|host| match host {
            Host::Tcp(name) => is_loopback(name),
            #[cfg(unix)]
            Host::Unix(_) => true,
        });
        let encrypted = match mode.as_deref() {
            None => !local,
            Some("require" | "verify-ca" | "verify-full") => true,
            Some("disable") => {
                if !local {
                    log::warn!(
                        "sslmode=disable: keys, jobs and outputs cross the network to the \
                         database unencrypted"
                    );
                }
                false
            }
            Some(mode @ ("allow" | "prefer")) => {
                return Err(settings(format!(
                    "sslmode={mode} falls back to an unencrypted connection without saying so: \
                     use sslmode=verify-full (with sslrootcert or --database-ca-file), or \
                     sslmode=disable to accept plain text"
                )))
            }
            Some(other) => {
                return Err(settings(format!(
                    "sslmode={other} is not one of disable, require, verify-ca, verify-full"
                )))
            }
        };
        let tls = match encrypted {
            false => {
                config.ssl_mode(SslMode::Disable);
                None
            }
            true => {
                config.ssl_mode(SslMode::Require);
                let root = root
                    .map(PathBuf::from)
                    .or_else(|| ca_file.map(Path::to_path_buf))
                    .unwrap_or_else(|| PathBuf::from(SYSTEM_CAS));
                let root = if root.as_os_str() == "system" {
                    PathBuf::from(SYSTEM_CAS)
                } else {
                    root
                };
                Some(verified_tls(&root)?)
            }
        };
        Ok(Connection { config, tls })
    }

    /// Whether the link is TLS.
    pub fn encrypted(&self) -> bool {
        self.tls.is_some()
    }

    /// Opens a connection. Blocks: call it from a thread that drives no async tasks.
    pub fn connect(&self) -> Result<Client, postgres::Error> {
        match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(NoTls),
        }
    }
}

/// `url` with its database replaced by `name`, its server and settings (TLS) kept: for tools
/// and tests that make a scratch database on a server.
///
/// ```
/// use hexray_evaluator::server::postgres::connection::other_database;
///
/// let url = "postgres://u@127.0.0.1:5433/postgres?sslmode=verify-full&sslrootcert=/ca/ca.crt";
/// assert_eq!(
///     other_database(url, "scratch"),
///     "postgres://u@127.0.0.1:5433/scratch?sslmode=verify-full&sslrootcert=/ca/ca.crt"
/// );
/// ```
pub fn other_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(base, query)| (base, Some(query)));
    // The path, which names the database, starts at the first `/` after the host.
    let host = base.find("://").map_or(0, |i| i + 3);
    let server = base[host..].find('/').map_or(base, |i| &base[..host + i]);
    match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    }
}

/// A rustls client that trusts only the CAs in the PEM file `root`, and checks the server's
/// name as well as its chain.
fn verified_tls(root: &Path) -> Result<MakeRustlsConnect, DatabaseError> {
    let mut roots = rustls::RootCertStore::empty();
    let cas = read_cas(root).map_err(|e| DatabaseError::Settings(format!("database: {e}")))?;
    for ca in cas {
        roots.add(ca).map_err(|e| {
            DatabaseError::Settings(format!("database CA file {}: {e}", root.display()))
        })?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| DatabaseError::Settings(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Whether a host name is this machine.
fn is_loopback(name: &str) -> bool {
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A URL query value with its `%XX` escapes decoded (a CA file's path may hold any byte).
fn percent_decoded(value: &str) -> Result<String, DatabaseError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    DatabaseError::Settings(format!("sslrootcert={value}: a bad % escape"))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| DatabaseError::Settings(format!("sslrootcert={value}: not UTF-8")))
}
