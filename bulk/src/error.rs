//! Typed errors for keys, batches and circuits received from elsewhere.

use thiserror::Error;

/// Why a key, batch or circuit could not be used on the bulk path.
#[derive(Debug, Error)]
pub enum BulkError {
    /// A blob is malformed, truncated or over its size limit.
    #[error("cannot read {what}: {reason}")]
    Deserialize {
        /// The kind of blob, e.g. "encrypted batch".
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A key, batch or circuit belongs to another parameter set.
    #[error("{what} uses bulk parameter set `{found}`, but `{expected}` is required")]
    ParameterMismatch {
        /// The kind of blob, e.g. "evaluation key".
        what: &'static str,
        /// The parameter set this build uses.
        expected: String,
        /// What the blob declares, truncated.
        found: String,
    },
    /// A batch holds a different number of ciphertexts or images than the circuit takes.
    #[error("{what} holds {found} {unit}, but {expected} are needed")]
    Count {
        /// The kind of blob, e.g. "encrypted batch".
        what: &'static str,
        /// What is counted: "ciphertexts" or "images".
        unit: &'static str,
        /// How many the circuit needs (at most, for images).
        expected: usize,
        /// How many the blob holds.
        found: usize,
    },
    /// An image's pixels are not the circuit's input: wrong length or out of range.
    #[error("image {index}: {reason}")]
    Image {
        /// Position of the image in the batch.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The BFV library refused an operation; carries its message.
    #[error("BFV: {0}")]
    Scheme(String),
}

impl From<fhe::Error> for BulkError {
    fn from(e: fhe::Error) -> Self {
        BulkError::Scheme(e.to_string())
    }
}
