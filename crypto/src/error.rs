//! Typed errors for keys and ciphertexts received from elsewhere.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CryptoError {
    #[error("cannot read {what}: {reason}")]
    Deserialize { what: &'static str, reason: String },
    #[error("{what} uses TFHE parameter set `{found}`, but `{expected}` is required")]
    ParameterMismatch {
        what: &'static str,
        expected: String,
        found: String,
    },
    #[error("{what} holds {found} ciphertexts, but the model needs {expected}")]
    Count {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("the batch holds {found} blobs; between 1 and {max} are accepted")]
    BatchSize { found: usize, max: usize },
    #[error("{what} is malformed: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error(transparent)]
    Model(#[from] hexray_model::ModelError),
}
