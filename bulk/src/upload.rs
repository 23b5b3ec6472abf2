//! A bulk job's upload: what a client sends the server in one request body.
//!
//! ```text
//! u32 little-endian length, then the evaluation key's bytes
//! the encrypted batch's wire format (`crate::batch`)
//! ```
//!
//! The key travels with every job rather than being registered once, as the interactive path's
//! is: at 1.1 MB it is under 1% of a batch, and a job then needs nothing stored beforehand.
//! Both parts are read one length-prefixed blob at a time, so a server can read an upload from a file it
//! streamed to disk without ever holding the raw bytes.

use std::io::{Read, Write};

use crate::batch::{read_prefixed, write_prefixed, EncryptedBatch, MAX_CIPHERTEXT_BYTES};
use crate::error::BulkError;
use crate::keys::{EvaluationKey, MAX_EVALUATION_KEY_BYTES};

/// The magic line and the JSON header of a batch, at most.
const BATCH_HEADER_BYTES: usize = 64 + 4096;

/// Writes `key` and `batch` as one upload; returns the bytes written.
///
/// ```
/// # let network = hexray_model::testing::tiny_quadratic_network();
/// # let circuit = hexray_model::packed::compile(&network, &hexray_bulk::parameters::contract())?;
/// use hexray_bulk::{upload, ClientKey};
///
/// let client = ClientKey::generate();
/// let batch = client.encrypt(&circuit.input, &[vec![3; circuit.input_len()]])?;
/// let mut body = Vec::new();
/// upload::write(&mut body, &client.evaluation_key()?, &batch)?;
/// assert!(body.len() <= upload::limit(circuit.input_len()));
///
/// let (_key, received) = upload::read(&body[..], circuit.input_len())?;
/// assert_eq!(received.images(), 1);
/// assert_eq!(upload::check(&body[..], circuit.input_len())?, 1);
/// // A body cut short is refused, in words.
/// assert!(upload::read(&body[..body.len() - 1], circuit.input_len()).is_err());
/// assert!(upload::check(&body[..body.len() - 1], circuit.input_len()).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write(
    mut writer: impl Write,
    key: &EvaluationKey,
    batch: &EncryptedBatch,
) -> Result<u64, BulkError> {
    let key_bytes = write_prefixed(&mut writer, &key.to_bytes())
        .map_err(|e| BulkError::Scheme(format!("cannot write: {e}")))?;
    Ok(key_bytes + batch.write_to(writer)?)
}

/// Reads an upload for a circuit of `ciphertexts` inputs, refusing at the first fault; the
/// batch is read as [`EncryptedBatch::read_from`] reads it, and nothing may follow it.
pub fn read(
    mut reader: impl Read,
    ciphertexts: usize,
) -> Result<(EvaluationKey, EncryptedBatch), BulkError> {
    let key = read_key(&mut reader)?;
    Ok((key, EncryptedBatch::read_from(reader, ciphertexts)?))
}

/// Checks an upload as [`read`] does, holding one ciphertext at a time; returns how many
/// images its batch packs.
pub fn check(mut reader: impl Read, ciphertexts: usize) -> Result<usize, BulkError> {
    read_key(&mut reader)?;
    EncryptedBatch::check(reader, ciphertexts)
}

fn read_key(reader: impl Read) -> Result<EvaluationKey, BulkError> {
    let key = read_prefixed(reader, MAX_EVALUATION_KEY_BYTES).map_err(|reason| {
        BulkError::Deserialize {
            what: "evaluation key",
            reason,
        }
    })?;
    EvaluationKey::from_bytes(&key)
}

/// The largest upload a circuit of `ciphertexts` inputs can need: what a server bounds a bulk
/// job's body by, before reading it.
pub fn limit(ciphertexts: usize) -> usize {
    4 + MAX_EVALUATION_KEY_BYTES + BATCH_HEADER_BYTES + ciphertexts * (4 + MAX_CIPHERTEXT_BYTES)
}
