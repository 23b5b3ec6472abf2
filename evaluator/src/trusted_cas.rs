//! The CAs that a TLS peer's certificate is verified against, from a PEM file: the database's,
//! for a node ([`crate::server::postgres::connection`]), and the server's, for the command-line
//! client ([`crate::client`]). Hospitals run their own CAs, so either side can name a file;
//! without one, the system's bundle is used.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use thiserror::Error;

/// Debian's bundle of the system's trusted CAs (the `ca-certificates` package), used when no
/// other file is named.
pub const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A CA file that cannot serve.
#[derive(Debug, Error)]
#[error("cannot read the CA file {path}: {reason}")]
pub struct CaFileError {
    path: String,
    reason: String,
}

/// Every certificate in the PEM file at `path`; an error if it cannot be read or holds none.
pub fn read_cas(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaFileError> {
    let unreadable = |reason: &dyn std::fmt::Display| CaFileError {
        path: path.display().to_string(),
        reason: reason.to_string(),
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(&e))?;
    if certificates.is_empty() {
        return Err(unreadable(&"it holds no certificate"));
    }
    Ok(certificates)
}
