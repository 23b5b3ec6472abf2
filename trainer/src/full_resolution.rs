//! How a model fares on the files clinicians drop: full-resolution X-rays read by the product's
//! own preprocessing, rather than MedMNIST's pre-shrunk 28×28 copies.
//!
//! Two checks, both on the exact simulation of the compiled circuit:
//! - *agreement*: a file and its MedMNIST-style copy (the centred square shrunk with a bicubic
//!   filter, [`medmnist_copy`]) should get the same class. A model that learned only
//!   MedMNIST's pipeline, not the images, disagrees;
//! - *transfer*: on a labelled folder the model never saw (the Actualmed COVID-19 X-rays), the
//!   share of normal images called normal, and of the others not called normal.

use std::path::Path;

use hexray_model::network::InputSpec;
use hexray_model::preprocess::{decode, preprocess_luma};
use hexray_model::simulate;
use hexray_model::simulate::Prediction;
use hexray_model::Circuit;
use image::imageops::{self, FilterType};
use image::GrayImage;

use crate::data::{list_folder, DataError, FolderEntry};

/// MedMNIST's own way to a small image: the centred square, shrunk to `side` with a bicubic
/// filter.
///
/// ```
/// let wide = image::GrayImage::new(300, 200);
/// let copy = hexray_trainer::full_resolution::medmnist_copy(&wide, 28);
/// assert_eq!(copy.dimensions(), (28, 28));
/// ```
pub fn medmnist_copy(luma: &GrayImage, side: u32) -> GrayImage {
    let (w, h) = luma.dimensions();
    let square = w.min(h);
    let centre = imageops::crop_imm(luma, (w - square) / 2, (h - square) / 2, square, square);
    imageops::resize(&centre.to_image(), side, side, FilterType::CatmullRom)
}

/// One file's predictions, by the product's preprocessing and from its MedMNIST-style copy.
#[derive(Clone, Debug)]
pub struct FileCheck {
    pub entry: FolderEntry,
    pub full: Prediction,
    pub copy: Prediction,
}

impl FileCheck {
    /// Whether both ways give the same class.
    pub fn agrees(&self) -> bool {
        self.full.class() == self.copy.class()
    }
}

/// Both predictions for one image file (PNG, JPEG or DICOM).
pub fn check_file(
    bytes: &[u8],
    circuit: &Circuit,
    spec: &InputSpec,
) -> Result<(Prediction, Prediction), String> {
    let luma = decode(bytes).map_err(|e| e.to_string())?.luma;
    let copy = preprocess_luma(medmnist_copy(&luma, spec.width.max(spec.height)), spec)
        .map_err(|e| e.to_string())?;
    let full = preprocess_luma(luma, spec).map_err(|e| e.to_string())?;
    let simulate = |input: &ndarray::Array3<i64>| simulate::exact(circuit, input.view());
    Ok((
        simulate(&full).map_err(|e| e.to_string())?,
        simulate(&copy).map_err(|e| e.to_string())?,
    ))
}

/// Every image `csv` lists (see [`crate::data::load_folder`]), checked both ways.
pub fn check_folder(
    csv: &Path,
    classes: &[&str],
    circuit: &Circuit,
    spec: &InputSpec,
) -> Result<Vec<FileCheck>, DataError> {
    list_folder(csv, classes)?
        .into_iter()
        .map(|entry| {
            let bytes = entry.read(csv)?;
            let (full, copy) =
                check_file(&bytes, circuit, spec).map_err(|reason| entry.error(csv, reason))?;
            Ok(FileCheck { entry, full, copy })
        })
        .collect()
}
