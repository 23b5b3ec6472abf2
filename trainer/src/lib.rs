//! HEXray's offline trainer: dataset → ReLU teacher → quadratic student → quantized student →
//! model file, with the reports that say how each step fared. The `hexray-trainer` binary
//! (`src/bin/hexray-trainer/`) drives it: `train`, `ablation`, `pareto`, `stability`,
//! `full-resolution` and `transfer`.
//!
//! The modules, roughly from the data to the reports:
//! - [`data`]: datasets (MedMNIST `.npz` files and image folders with a `labels.csv`), read
//!   through the client's own preprocessing, and patient-level splits;
//! - [`augment`]: the teacher's augmentation, and full-resolution copies of MedMNIST images;
//! - [`adults`]: the small adult set, as the same images again or as new renderings of its
//!   files;
//! - [`full_resolution`]: the full-resolution X-rays, read as the product reads a dropped file;
//! - [`topology`]: the shape of the network the server evaluates, and so its cost;
//! - [`activation`]: the trainable quadratic activation, per layer, channel or element;
//! - [`net`]: the network both teacher and student are made of, and its float forward pass;
//! - [`loss`]: the distillation loss;
//! - [`export`]: the quantization-aware network turned into the integers of a model file;
//! - [`train`]: the training loops, with every step of the method a switch in its recipe;
//! - [`pipeline`]: the whole method end to end, and the scores of each stage;
//! - [`crossval`]: patient-level cross-validation on a small set, with Wilson intervals;
//! - [`encrypted`]: encrypted inference on test images, the ground truth for the simulator;
//! - [`metrics`], [`report`] and [`plots`]: what a person reads after a run.

pub mod activation;
pub mod adults;
pub mod augment;
pub mod crossval;
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
