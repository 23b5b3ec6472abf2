#![warn(missing_docs)]
//! HEXray's engine: encrypted inference on a compiled model, and nothing else. The server, the
//! `hexray` command line (both in `hexray-evaluator`) and the trainer's encrypted reports are
//! built on it; it has no HTTP server and no async runtime.
//!
//! - [`model`]: a model file loaded, compiled and tied to its TFHE parameter set;
//! - [`evaluate`](mod@evaluate): encrypted evaluation, one fused dot product and bootstrap per
//!   hidden neuron, the bootstraps batched so that they share each load of the bootstrapping
//!   key.
//!
//! The ciphertext operations themselves are `hexray-crypto`'s ([`hexray_crypto::lwe`]): this
//! crate names no TFHE-rs type, only stages, batches and threads.

pub mod evaluate;
pub mod model;

pub use evaluate::{evaluate, evaluate_batch, EngineError, EvaluationStats};
pub use model::{LoadError, LoadedModel};
