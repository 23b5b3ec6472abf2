//! Typed errors. Every message names the field or file position at fault, because the person
//! reading it is usually holding a model file that someone else produced.

use thiserror::Error;

/// A model file that cannot be used.
#[derive(Debug, Error, PartialEq)]
pub enum ModelError {
    #[error("not a HEXray model: the file must start with the magic line `{expected}`")]
    Magic { expected: String },
    #[error("unsupported model format version {found} (this build reads version {supported})")]
    Version { found: String, supported: u32 },
    #[error("model file is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("model field `{field}`: {reason}")]
    Field { field: String, reason: String },
    #[error("model does not compile: {0}")]
    Compile(#[from] CompileError),
}

impl ModelError {
    pub(crate) fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ModelError::Field {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A network for which no safe encrypted circuit exists.
#[derive(Debug, Error, PartialEq)]
pub enum CompileError {
    #[error("layer {layer}: integer overflow while composing linear layers ({what})")]
    Overflow { layer: usize, what: String },
    #[error(
        "stage {stage}, neuron {neuron}: worst-case accumulator range {range} plus noise margins \
         cannot fit the half torus (2^63); the padding bit could overflow"
    )]
    RangeOverflow {
        stage: usize,
        neuron: usize,
        range: i128,
    },
    #[error(
        "the logits span ±{half_width:.1} around their centre in the worst case, over the \
         ±{limit} the model declares (network.output.logit_bound_log2; \
         `Network::fit_logit_bound` picks the smallest that fits)"
    )]
    LogitRange { half_width: f64, limit: f64 },
    #[error("stage {stage}: noise margin ({sigma:.3e} of the torus) leaves no room for values")]
    NoiseOverflow { stage: usize, sigma: f64 },
}

/// An image that cannot be turned into model input.
#[derive(Debug, Error)]
pub enum PreprocessError {
    #[error("cannot decode the image (PNG, JPEG or DICOM expected): {0}")]
    Decode(String),
    #[error(transparent)]
    Dicom(#[from] DicomError),
    #[error("image is {width}×{height} pixels; the model needs at least {min_width}×{min_height}")]
    TooSmall {
        width: u32,
        height: u32,
        min_width: u32,
        min_height: u32,
    },
}

/// A DICOM file that cannot be shown to the model. The messages speak to the person who
/// dropped the file: what it is, and what HEXray would need instead.
#[derive(Debug, Error, PartialEq)]
pub enum DicomError {
    #[error("not a DICOM file: no `DICM` marker at byte 128")]
    NotDicom,
    #[error("cannot read the DICOM file: {0}")]
    Parse(String),
    #[error(
        "this DICOM file holds no image to analyse: its SOP class is {sop_class}{}",
        modality.as_ref().map_or_else(String::new, |m| format!(" (modality {m})"))
    )]
    NoImage {
        /// The SOP class's name, e.g. `Comprehensive SR Storage`.
        sop_class: String,
        modality: Option<String>,
    },
    #[error(
        "the DICOM transfer syntax {name} ({uid}) is not supported; HEXray reads uncompressed, \
         deflated, RLE, JPEG (baseline, extended, lossless) and JPEG 2000 files"
    )]
    TransferSyntax { uid: String, name: String },
    #[error("DICOM attribute {attribute}: {reason}")]
    Attribute {
        attribute: &'static str,
        reason: String,
    },
    #[error(
        "the DICOM image is {width}×{height} pixels; HEXray reads 1 to {} pixels per frame",
        crate::dicom::MAX_PIXELS
    )]
    Size { width: u32, height: u32 },
    #[error("unsupported DICOM image: {0}")]
    Unsupported(String),
    #[error("cannot decode the DICOM pixel data: {0}")]
    Pixels(String),
}
