#![warn(missing_docs)]
//! HEXray's bulk path: thousands of X-rays per job by element-wise packing (Zhang et al.), in
//! BFV (fhe.rs). Slot k of every ciphertext belongs to image k, so one evaluation of the
//! network serves every image of a batch, with only additions, scalar products and one square
//! per activation. The interactive path (`hexray-crypto`, TFHE) stays the one for a few images.
//!
//! This crate is the only one that names fhe.rs. Its modules build on one another in order:
//! - [`error`]: the typed errors;
//! - [`parameters`]: the one parameter set, and its numbers for the compiler;
//! - [`batch`]: packed ciphertexts and their streamed wire format;
//! - [`keys`]: the client's secret key (packing, encryption, decryption) and the server's
//!   evaluation key;
//! - [`upload`]: a bulk job's request body, the evaluation key then the batch;
//! - [`evaluate`](mod@evaluate): the packed circuit run on a batch.
//!
//! The circuit itself, with its range proof and its exact evaluation, is the contract's
//! (`hexray_model::packed`): decrypting [`evaluate`]'s results gives what
//! `PackedCircuit::evaluate` gives, bit for bit.

pub mod batch;
pub mod error;
pub mod evaluate;
pub mod keys;
pub mod parameters;
pub mod upload;

pub use batch::{EncryptedBatch, EncryptedOutputs};
pub use error::BulkError;
pub use evaluate::evaluate;
pub use keys::{ClientKey, EvaluationKey};
