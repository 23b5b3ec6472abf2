//! HEXray's evaluator: loads compiled models and runs encrypted inference on them.
//!
//! - [`model`]: a model file loaded, compiled and tied to its TFHE parameter set;
//! - [`engine`]: encrypted evaluation, one fused dot product and bootstrap per hidden neuron;
//! - [`batch`]: bootstraps in batches that share each load of the bootstrapping key;
//! - [`server`]: the actix-web server: page, API, key store and job queue;
//! - [`client`]: a blocking client of that API, knowing models only by their client specs.

pub mod batch;
pub mod client;
pub mod engine;
pub mod model;
pub mod server;

pub use engine::{evaluate, evaluate_batch, EngineError, EvaluationStats};
pub use model::LoadedModel;
