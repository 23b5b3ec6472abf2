//! Typed errors for keys and ciphertexts received from elsewhere.

use thiserror::Error;

/// Why a key, ciphertext or batch could not be used.
#[derive(Debug, Error)]
pub enum CryptoError {
    /// A blob is over its size limit, or TFHE-rs's safe deserialization refused it.
    #[error("cannot read {what}: {reason}")]
    Deserialize {
        /// The kind of blob, e.g. "client key".
        what: &'static str,
        /// The size limit exceeded, or TFHE-rs's error message.
        reason: String,
    },
    /// A blob would be over the size limit its reader enforces, so it is not written.
    #[error("cannot write {what}: {reason}")]
    Serialize {
        /// The kind of blob, e.g. "encrypted image".
        what: &'static str,
        /// The size limit exceeded, or TFHE-rs's error message.
        reason: String,
    },
    /// A key, ciphertext or model belongs to another (or an unsupported) parameter set.
    #[error("{what} uses TFHE parameter set `{found}`, but `{expected}` is required")]
    ParameterMismatch {
        /// The kind of blob, e.g. "server key".
        what: &'static str,
        /// Name(s) of the accepted parameter set(s).
        expected: String,
        /// What the blob declares, truncated.
        found: String,
    },
    /// A ciphertext list has a different length than the model's inputs or outputs.
    #[error("{what} holds {found} ciphertexts, but the model needs {expected}")]
    Count {
        /// The kind of blob, e.g. "encrypted image".
        what: &'static str,
        /// Number of ciphertexts the model needs.
        expected: usize,
        /// Number of ciphertexts received.
        found: usize,
    },
    /// A batch body ([`crate::batch_body`]) holds no blob, or more than the receiver accepts.
    #[error("the batch holds {found} blobs; between 1 and {max} are accepted")]
    BatchSize {
        /// Number of blobs in the batch.
        found: usize,
        /// Largest number of blobs accepted.
        max: usize,
    },
    /// A blob deserialized but its shape is inconsistent (lengths, moduli, framing).
    #[error("{what} is malformed: {reason}")]
    Malformed {
        /// The kind of blob, e.g. "encrypted output".
        what: &'static str,
        /// Which check failed.
        reason: String,
    },
    /// The model side refused the input, e.g. an input outside the spec's shape or bits.
    #[error(transparent)]
    Model(#[from] hexray_model::ModelError),
}
