#![warn(missing_docs)]
//! The HEXray contract shared by the trainer, the evaluator and the browser client.
//!
//! Everything that two parties must agree on bit for bit lives here and nowhere else:
//! - [`format`](mod@format): the versioned model file and its validation;
//! - [`client_spec`]: the public part of a model, all a client gets: no weights;
//! - [`preprocess`]: the one function that turns an image into quantized input integers;
//! - [`dicom`]: DICOM files, decoded to the grayscale image preprocessing starts from;
//! - [`compile`](mod@compile): range analysis and the per-layer encoding (scale, offsets, noise) of the circuit;
//! - [`table`]: the lookup table each hidden neuron's bootstrap applies;
//! - [`simulate`]: the plaintext evaluation of the circuit, exact or with TFHE's noise.
//!
//! The crate has no TFHE dependency, so it builds for `wasm32-unknown-unknown` as it is. The
//! cryptographic parameters reach it as plain numbers ([`FheParameters`]).

pub mod activation;
pub mod client_spec;
pub mod compile;
pub mod dicom;
pub mod error;
pub mod format;
pub mod linear;
pub mod preprocess;
pub mod simulate;
pub mod table;
#[doc(hidden)]
pub mod testing;

pub use client_spec::{ClientSpec, Diagnosis};
pub use compile::{compile, Circuit, Neuron, Stage};
pub use error::{CompileError, DicomError, ModelError, PreprocessError};
pub use format::{CompiledModel, FheParameters, Network};
