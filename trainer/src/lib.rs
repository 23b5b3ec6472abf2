//! HEXray's offline trainer.
//!
//! - [`data`]: datasets (MedMNIST `.npz` files and image folders with a `labels.csv`), read
//!   through the client's own preprocessing, and patient-level splits;
//! - [`activation`]: the trainable quadratic activation, per layer, channel or element;
//! - [`loss`]: the distillation loss;
//! - [`metrics`] and [`plots`]: what the reports show.

pub mod activation;
pub mod augment;
pub mod data;
pub mod encrypted;
pub mod export;
pub mod full_resolution;
pub mod loss;
pub mod metrics;
pub mod net;
pub mod pipeline;
pub mod plots;
pub mod report;
pub mod topology;
pub mod train;
