#![warn(missing_docs)]
//! The HEXray contract shared by the trainer, the evaluator and the browser client.
//!
//! Everything that two parties must agree on bit for bit lives here and nowhere else. The
//! modules build on one another in this order, and import only from those before them:
//! - [`error`]: the typed errors every module returns;
//! - [`hex`]: bytes as lowercase hex, the one way digests and ids are written;
//! - [`parameters`]: the TFHE and BFV parameter sets as the numbers the compilers need;
//! - [`network`]: the schema of a trained network, its shapes and its validation;
//! - [`circuit`]: the network compiled into stages of dot products and bootstraps, with the
//!   phase and table arithmetic the engine and the simulator share;
//! - [`simulate`]: the plaintext evaluation of the circuit, exact or with TFHE's noise;
//! - [`packed`]: the same network compiled for the bulk path (BFV, one image per slot), with
//!   its range proof and its exact evaluation;
//! - [`file`](mod@file): the versioned model file, its magic line and its verification;
//! - [`client_spec`]: the public part of a model, all a client gets: no weights;
//! - [`bulk_spec`]: the public part of a model for the bulk path: parameters and decoding,
//!   no weights;
//! - [`borderline`]: the margin below which another encryption could change a result's class,
//!   measured on the circuit with the noisy simulator;
//! - [`preprocess`]: the one function that turns an image (PNG, JPEG or DICOM) into quantized
//!   input integers. DICOM files are read by the `hexray-dicom` crate, which needs nothing of
//!   the model.
//!
//! `tests/layering.rs` holds the modules to this order.
//!
//! The crate has no TFHE dependency, so it builds for `wasm32-unknown-unknown` as it is. The
//! cryptographic parameters reach it as plain numbers ([`FheParameters`]).

pub mod borderline;
pub mod bulk_spec;
pub mod circuit;
pub mod client_spec;
pub mod error;
pub mod file;
pub mod hex;
pub mod network;
pub mod packed;
pub mod parameters;
pub mod preprocess;
pub mod simulate;
#[doc(hidden)]
pub mod testing;

pub use circuit::{compile, Circuit, Neuron, Stage};
pub use client_spec::{ClientSpec, Diagnosis};
pub use error::{CompileError, ModelError, PreprocessError};
pub use file::CompiledModel;
pub use network::Network;
pub use parameters::{BulkParameters, FheParameters};
