//! HEXray's evaluator: loads compiled models and runs encrypted inference on them.
//!
//! - [`model`]: a model file loaded, compiled and tied to its TFHE parameter set;
//! - [`engine`]: encrypted evaluation, one fused dot product and bootstrap per hidden neuron;
//! - [`batch`]: bootstraps in batches that share each load of the bootstrapping key.

pub mod batch;
pub mod engine;
pub mod model;

pub use engine::{evaluate, EngineError, EvaluationStats};
pub use model::LoadedModel;
