//! HEXray's offline trainer.
//!
//! - [`data`]: datasets (MedMNIST `.npz` files and image folders with a `labels.csv`), read
//!   through the client's own preprocessing, and patient-level splits.
//!
//! Training itself (ReLU teacher, quadratic student, distillation, quantization- and
//! noise-aware fine-tuning, export) follows in issue 3.

pub mod data;
