//! Why a DICOM file cannot be read, in words for the person who dropped it.

use thiserror::Error;

/// A DICOM file that cannot be shown to the model. The messages speak to the person who
/// dropped the file: what it is, and what HEXray would need instead.
#[derive(Debug, Error, PartialEq)]
pub enum DicomError {
    /// The file has no `DICM` marker, neither after the 128-byte preamble nor at its start.
    #[error("not a DICOM file: no `DICM` marker at byte 128")]
    NotDicom,
    /// The DICOM parser failed; carries its message and sources.
    #[error("cannot read the DICOM file: {0}")]
    Parse(String),
    /// The file is valid DICOM but holds no pixel data, e.g. a structured report.
    #[error(
        "this DICOM file holds no image to analyse: its SOP class is {sop_class}{}",
        modality.as_ref().map_or_else(String::new, |m| format!(" (modality {m})"))
    )]
    NoImage {
        /// The SOP class's name, e.g. `Comprehensive SR Storage`.
        sop_class: String,
        /// The Modality attribute, e.g. `SR`, if present.
        modality: Option<String>,
    },
    /// The pixel data is encoded with a transfer syntax HEXray cannot decode.
    #[error(
        "the DICOM transfer syntax {name} ({uid}) is not supported; HEXray reads uncompressed, \
         deflated, RLE, JPEG (baseline, extended, lossless) and JPEG 2000 files"
    )]
    TransferSyntax {
        /// The transfer syntax UID.
        uid: String,
        /// Its registered name, or "an unknown transfer syntax".
        name: String,
    },
    /// An attribute the decoder needs is missing or inconsistent.
    #[error("DICOM attribute {attribute}: {reason}")]
    Attribute {
        /// The attribute's DICOM name, e.g. `Bits Stored`.
        attribute: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The image is empty or has more pixels per frame than the decoder's limit.
    #[error(
        "the DICOM image is {width}×{height} pixels; HEXray reads 1 to {limit} pixels per frame"
    )]
    Size {
        /// Columns, in pixels.
        width: u32,
        /// Rows, in pixels.
        height: u32,
        /// Most pixels per frame read: [`crate::MAX_PIXELS`].
        limit: u64,
    },
    /// A well-formed image of a kind HEXray does not read (bit depth, colour model, codec feature).
    #[error("unsupported DICOM image: {0}")]
    Unsupported(String),
    /// The pixel data is truncated or corrupt, or does not match the declared geometry.
    #[error("cannot decode the DICOM pixel data: {0}")]
    Pixels(String),
}
