#![warn(missing_docs)]
//! HEXray's TFHE layer, built only on TFHE-rs's published parameter sets.
//!
//! - [`params`]: the two standard 2^-128 parameter sets HEXray can run on, and the noise
//!   variances the compiler needs, computed with TFHE-rs's own noise formulas;
//! - [`keys`]: client key generation, compressed server keys and their size-limited,
//!   parameter-checked serialization;
//! - [`ciphertext`]: seeded encryption of a preprocessed image and decryption of the outputs;
//! - [`lwe`]: what the server computes on ciphertexts: clear-weight dot products, lookup
//!   tables and batched keyswitch + bootstrap;
//! - [`batch_body`]: several blobs (a batch of images or outputs) in one HTTP body.
//!
//! This is the only crate that names TFHE-rs: `hexray-engine` composes [`lwe`]'s operations
//! into a network without seeing TFHE-rs's types, and a client needs nothing but this crate.

pub mod batch_body;
pub mod ciphertext;
mod envelope;
pub mod error;
pub mod keys;
pub mod lwe;
pub mod params;

pub use ciphertext::{EncryptedImage, EncryptedOutput};
pub use error::CryptoError;
pub use keys::{ClientKey, CompressedServerKey, ServerKey};
pub use lwe::{Ciphertext, Ciphertexts, LookupTable};
pub use params::ParameterSet;
