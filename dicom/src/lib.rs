#![warn(missing_docs)]
//! DICOM (Part 10) files → the 8-bit grayscale image that HEXray's preprocessing
//! (`hexray_model::preprocess`) takes.
//!
//! X-ray systems and PACS export DICOM, not PNG, and browsers cannot show it. The browser (via
//! wasm), the command line and the trainer's folder loader all read it here, so a file gives
//! the same pixels everywhere.
//!
//! The first frame is decoded (`codec`: uncompressed, deflated, RLE, JPEG baseline, extended
//! (8 bits, and 12 bits by `jpeg12`) and lossless, JPEG 2000) and rendered as a radiologist's
//! viewer would show it (`pixels`): stored bits masked and sign-extended, Rescale
//! Slope/Intercept or the Modality LUT, then the VOI LUT Sequence, else the first Window
//! Center/Width, else the frame's own range, and MONOCHROME1 inverted. Colour images become
//! luma as a colour PNG does.
//!
//! What the file says about itself that could make the model's answer meaningless (another
//! modality, another body part, more frames) comes back as warnings, not errors: the person
//! reading the result decides.

mod codec;
mod error;
mod jpeg12;
mod pixels;

use dicom_core::dictionary::{UidDictionary, UidDictionaryEntry};
use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::Tag;
use dicom_dictionary_std::{tags, uids, StandardSopClassDictionary};
use dicom_object::file::ReadPreamble;
use dicom_object::mem::InMemElement;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use image::GrayImage;
use serde::Serialize;

use codec::{Codec, Geometry};
pub use error::DicomError;
use pixels::{Colour, Lut, ModalityTransform, SampleFormat, Voi, WindowFunction};

/// The largest image read, in pixels per frame: 50 megapixels, over five times a large
/// detector's, so that a forged Rows × Columns cannot exhaust the browser's memory.
pub const MAX_PIXELS: u64 = 50_000_000;

/// The most bytes a deflated data set may inflate to: a few times the largest image
/// [`MAX_PIXELS`] allows at 16 bits, and far less than a browser tab's memory. Without a cap, a
/// small file could inflate a thousandfold (a "zip bomb") in the wasm worker.
pub const MAX_INFLATED_BYTES: u64 = 4 * 2 * MAX_PIXELS;

/// Modalities of plain radiography: computed (CR) and digital (DX) radiography, film (RG),
/// `DR`, which is not a DICOM code but some DX systems write it, and `OT` (other), what
/// digitised films and screenshots usually carry.
const RADIOGRAPHY: [&str; 5] = ["CR", "DX", "DR", "RG", "OT"];

/// Body Part Examined values (upper case, in part) that mean the chest.
const CHEST: [&str; 4] = ["CHEST", "THORAX", "TORAX", "LUNG"];

/// A decoded DICOM image and what the page shows about it.
#[derive(Clone, Debug)]
pub struct DicomImage {
    /// The first frame as displayed: 0 black, 255 white.
    pub luma: GrayImage,
    /// The file's own description of the image, and warnings, for the page to show.
    pub info: DicomInfo,
}

/// What a DICOM file says about itself, for the person checking they dropped the right image.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DicomInfo {
    /// As stored (PN: `family^given^middle^prefix^suffix`).
    pub patient_name: Option<String>,
    /// `YYYY-MM-DD` when the file holds a valid DA value, else as stored.
    pub study_date: Option<String>,
    /// Modality code as stored, e.g. `DX` or `CT`.
    pub modality: Option<String>,
    /// Body Part Examined as stored, e.g. `CHEST`.
    pub body_part: Option<String>,
    /// The transfer syntax's name, e.g. `RLE Lossless`.
    pub transfer_syntax: String,
    /// Significant bits per sample (Bits Stored; Bits Allocated if absent).
    pub bits_stored: u16,
    /// As stored, e.g. `MONOCHROME1`.
    pub photometric: String,
    /// Number of frames in the file, at least 1; only the first is decoded.
    pub frames: u32,
    /// Why the result may not apply to this file; empty for a chest radiograph.
    pub warnings: Vec<String>,
}

/// Whether `bytes` are a DICOM Part 10 file: `DICM` after the 128-byte preamble, or at the
/// start of a file written without the preamble.
pub fn is_dicom(bytes: &[u8]) -> bool {
    bytes.get(128..132) == Some(b"DICM") || bytes.starts_with(b"DICM")
}

/// Refuses a deflated data set that inflates to more than [`MAX_INFLATED_BYTES`], before
/// dicom-rs inflates it whole. `body` starts at `DICM`; the file meta group is never deflated.
fn check_inflated_size(body: &[u8]) -> Result<(), DicomError> {
    use std::io::Read;
    let mut rest = body;
    let Ok(meta) = dicom_object::meta::FileMetaTable::from_reader(&mut rest) else {
        return Ok(()); // dicom-rs says what is wrong with it, in its own words.
    };
    if meta.transfer_syntax() != uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN {
        return Ok(());
    }
    let inflated = std::io::copy(
        &mut flate2::read::DeflateDecoder::new(rest).take(MAX_INFLATED_BYTES + 1),
        &mut std::io::sink(),
    )
    .map_err(|e| DicomError::Parse(format!("the deflated data set does not inflate: {e}")))?;
    if inflated > MAX_INFLATED_BYTES {
        return Err(DicomError::Unsupported(format!(
            "the deflated data set inflates to over {MAX_INFLATED_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Decodes the first frame of a DICOM Part 10 file.
///
/// Anything that is not a readable image comes back as a [`DicomError`] whose message is meant
/// for the person who dropped the file; no input makes it panic.
///
/// ```
/// use hexray_dicom::{is_dicom, read, DicomError};
///
/// let png = b"\x89PNG\r\n\x1a\n";
/// assert!(!is_dicom(png));
/// assert_eq!(read(png).unwrap_err(), DicomError::NotDicom);
///
/// // A `DICM` marker after the preamble, then nothing a parser can read.
/// let mut truncated = vec![0u8; 128];
/// truncated.extend_from_slice(b"DICM\x02\x00");
/// assert!(is_dicom(&truncated));
/// assert!(matches!(read(&truncated), Err(DicomError::Parse(_))));
/// ```
pub fn read(bytes: &[u8]) -> Result<DicomImage, DicomError> {
    let body = if bytes.get(128..132) == Some(b"DICM") {
        &bytes[128..]
    } else if bytes.starts_with(b"DICM") {
        bytes
    } else {
        return Err(DicomError::NotDicom);
    };
    check_inflated_size(body)?;
    let object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(body)
        .map_err(|e| DicomError::Parse(with_sources(&e)))?;
    let file = File(&object);

    let modality = file.text(tags::MODALITY);
    let Some(pixel_data) = file.element(tags::PIXEL_DATA) else {
        let sop_class = file
            .text(tags::SOP_CLASS_UID)
            .unwrap_or_else(|| object.meta().media_storage_sop_class_uid().to_owned());
        let sop_class = match StandardSopClassDictionary.by_uid(&sop_class) {
            Some(entry) => entry.name().to_owned(),
            None if sop_class.is_empty() => "not given".to_owned(),
            None => sop_class,
        };
        return Err(DicomError::NoImage {
            sop_class,
            modality,
        });
    };
    let uid = object.meta().transfer_syntax();
    let syntax = TransferSyntaxRegistry
        .get(uid)
        .map_or("an unknown transfer syntax", |ts| ts.name())
        .to_owned();
    let Some(codec) = codec::codec(uid) else {
        return Err(DicomError::TransferSyntax {
            uid: uid.to_owned(),
            name: syntax,
        });
    };

    let geometry = Geometry {
        rows: file.required(tags::ROWS, "Rows")?,
        columns: file.required(tags::COLUMNS, "Columns")?,
        samples_per_pixel: file.number(tags::SAMPLES_PER_PIXEL).unwrap_or(1),
        bits_allocated: file.required(tags::BITS_ALLOCATED, "Bits Allocated")?,
    };
    let pixels = u64::from(geometry.rows) * u64::from(geometry.columns);
    if pixels > MAX_PIXELS || pixels == 0 {
        return Err(DicomError::Size {
            width: geometry.columns,
            height: geometry.rows,
            limit: MAX_PIXELS,
        });
    }
    if ![8, 16].contains(&geometry.bits_allocated) {
        return Err(DicomError::Unsupported(format!(
            "{} bits allocated per sample; radiographs have 8 or 16",
            geometry.bits_allocated
        )));
    }
    let bits_stored = file
        .number(tags::BITS_STORED)
        .unwrap_or(geometry.bits_allocated);
    let format = SampleFormat {
        bits_allocated: geometry.bits_allocated,
        bits_stored,
        high_bit: file
            .number(tags::HIGH_BIT)
            .unwrap_or(bits_stored.saturating_sub(1)),
        signed: file.number::<u16>(tags::PIXEL_REPRESENTATION) == Some(1),
    };
    if format.bits_stored == 0
        || format.high_bit >= format.bits_allocated
        || format.high_bit + 1 < format.bits_stored
    {
        return Err(DicomError::Attribute {
            attribute: "Bits Stored",
            reason: format!(
                "{} bits stored with high bit {} do not fit {} bits allocated",
                format.bits_stored, format.high_bit, format.bits_allocated
            ),
        });
    }
    let photometric = file
        .text(tags::PHOTOMETRIC_INTERPRETATION)
        .ok_or(DicomError::Attribute {
            attribute: "Photometric Interpretation",
            reason: "missing".into(),
        })?;
    let frames = file.number(tags::NUMBER_OF_FRAMES).unwrap_or(1u32).max(1);
    let body_part = file.text(tags::BODY_PART_EXAMINED);
    let mut warnings = warnings(frames, modality.as_deref(), body_part.as_deref());

    let monochrome = match (geometry.samples_per_pixel, photometric.as_str()) {
        (1, "MONOCHROME1") => Some(true),
        (1, "MONOCHROME2") => Some(false),
        (3, "RGB" | "YBR_FULL") => None,
        // Compressed colour: the codec's output is RGB whatever the Photometric
        // Interpretation says the compressed samples were.
        (3, _) if matches!(codec, Codec::Jpeg | Codec::Jpeg2000) => None,
        (samples, other) => {
            return Err(DicomError::Unsupported(format!(
                "photometric interpretation {other} with {samples} sample(s) per pixel"
            )))
        }
    };
    if monochrome.is_none() && geometry.bits_allocated != 8 {
        return Err(DicomError::Unsupported(format!(
            "colour with {} bits per sample",
            geometry.bits_allocated
        )));
    }

    let frame = match (codec, pixel_data.value()) {
        (Codec::Native, Value::Primitive(value)) => codec::native(
            &value.to_bytes(),
            geometry,
            file.number::<u16>(tags::PLANAR_CONFIGURATION) == Some(1),
        )?,
        (Codec::Native, _) => {
            return Err(DicomError::Pixels(
                "the transfer syntax is uncompressed but the pixel data is encapsulated".into(),
            ))
        }
        (_, Value::PixelSequence(sequence)) => {
            let data = codec::first_frame(sequence.fragments(), sequence.offset_table(), frames)?;
            match codec {
                Codec::Rle => codec::rle(&data, geometry)?,
                Codec::Jpeg => codec::jpeg(&data, geometry)?,
                _ => codec::jpeg2000(&data, geometry)?,
            }
        }
        (_, _) => {
            return Err(DicomError::Pixels(format!(
                "{syntax} pixel data must be encapsulated"
            )))
        }
    };

    let luma = match monochrome {
        Some(invert) => {
            let (modality_transform, voi) = file.transforms(format.signed, &mut warnings)?;
            pixels::monochrome(
                &frame.samples,
                geometry.columns,
                geometry.rows,
                format,
                &modality_transform,
                voi,
                invert,
            )
        }
        None => {
            let colour = match frame.rgb || photometric == "RGB" {
                true => Colour::Rgb,
                false => Colour::YbrFull,
            };
            pixels::colour(
                &frame.samples,
                geometry.columns,
                geometry.rows,
                colour,
                frame.planar,
            )
        }
    };
    let info = DicomInfo {
        patient_name: file.text(tags::PATIENT_NAME),
        study_date: file.text(tags::STUDY_DATE).map(|d| iso_date(&d)),
        modality,
        body_part,
        transfer_syntax: syntax,
        bits_stored: format.bits_stored,
        photometric,
        frames,
        warnings,
    };
    Ok(DicomImage { luma, info })
}

/// What makes the model's answer doubtful for this file, in words: more frames than the one
/// analysed, another modality than plain radiography, another body part than the chest.
fn warnings(frames: u32, modality: Option<&str>, body_part: Option<&str>) -> Vec<String> {
    let mut warnings = Vec::new();
    if frames > 1 {
        warnings.push(format!("{frames} frames; the first is analysed"));
    }
    if let Some(m) = modality.filter(|m| !RADIOGRAPHY.contains(m)) {
        warnings.push(format!(
            "Modality {m}: this model was trained on chest radiographs (CR/DX); the result \
             may be meaningless"
        ));
    }
    if let Some(part) = body_part.filter(|p| !CHEST.iter().any(|c| p.to_uppercase().contains(c))) {
        warnings.push(format!(
            "Body Part Examined {part}: this model was trained on chest radiographs; the \
             result may be meaningless"
        ));
    }
    warnings
}

/// A DA value (`YYYYMMDD`) as `YYYY-MM-DD`; anything else unchanged.
fn iso_date(date: &str) -> String {
    match date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()) {
        true => format!("{}-{}-{}", &date[..4], &date[4..6], &date[6..]),
        false => date.to_owned(),
    }
}

/// An error and its causes, as one line: dicom-rs's errors put the detail in their sources.
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// Attribute access on a data set (the file or a sequence item), lenient where DICOM files in
/// the wild are: a missing or unreadable optional attribute is absent.
struct File<'a>(&'a InMemDicomObject);

impl<'a> File<'a> {
    fn element(&self, tag: Tag) -> Option<&'a InMemElement> {
        self.0.element_opt(tag).ok().flatten()
    }

    /// A text value without DICOM's space and NUL padding; `None` if empty.
    fn text(&self, tag: Tag) -> Option<String> {
        let text = self.element(tag)?.to_str().ok()?;
        let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
        (!text.is_empty()).then(|| text.to_owned())
    }

    /// An integer value, `None` if absent or out of `T`'s range.
    fn number<T: TryFrom<i64>>(&self, tag: Tag) -> Option<T> {
        T::try_from(self.element(tag)?.to_int::<i64>().ok()?).ok()
    }

    fn required<T: TryFrom<i64>>(
        &self,
        tag: Tag,
        attribute: &'static str,
    ) -> Result<T, DicomError> {
        self.number(tag).ok_or(DicomError::Attribute {
            attribute,
            reason: "missing or not a number".into(),
        })
    }

    /// The first value of a multi-valued decimal attribute (Window Center, Width).
    fn first_decimal(&self, tag: Tag) -> Option<f64> {
        self.element(tag)?.to_multi_float64().ok()?.first().copied()
    }

    /// The first item of a sequence.
    fn first_item(&self, tag: Tag) -> Option<File<'a>> {
        Some(File(self.element(tag)?.value().items()?.first()?))
    }

    /// The modality and VOI transforms. `None` for the VOI means the frame's own range. A VOI
    /// LUT is preferred to a window, as pydicom does: it is the vendor's chosen rendering.
    fn transforms(
        &self,
        signed: bool,
        warnings: &mut Vec<String>,
    ) -> Result<(ModalityTransform, Option<Voi>), DicomError> {
        let modality = match self.first_item(tags::MODALITY_LUT_SEQUENCE) {
            Some(item) => ModalityTransform::Lut(item.lut("Modality LUT Sequence", signed)?),
            None => ModalityTransform::Rescale {
                slope: self.first_decimal(tags::RESCALE_SLOPE).unwrap_or(1.0),
                intercept: self.first_decimal(tags::RESCALE_INTERCEPT).unwrap_or(0.0),
            },
        };
        // A Modality LUT's output is unsigned (PS3.3 C.11.1.1); rescaled values may be negative.
        let voi_signed = signed || matches!(modality, ModalityTransform::Rescale { .. });
        if let Some(item) = self.first_item(tags::VOILUT_SEQUENCE) {
            let lut = item.lut("VOI LUT Sequence", voi_signed)?;
            return Ok((modality, Some(Voi::Lut(lut))));
        }
        let (Some(center), Some(width)) = (
            self.first_decimal(tags::WINDOW_CENTER),
            self.first_decimal(tags::WINDOW_WIDTH),
        ) else {
            return Ok((modality, None));
        };
        let function = match self.text(tags::VOILUT_FUNCTION).as_deref() {
            Some("LINEAR_EXACT") => WindowFunction::LinearExact,
            Some("SIGMOID") => WindowFunction::Sigmoid,
            _ => WindowFunction::Linear,
        };
        let voi = Voi::window(center, width, function);
        if voi.is_none() {
            warnings.push(format!(
                "Window Center {center} / Width {width} is not a valid window; the image's \
                 full range is shown instead"
            ));
        }
        Ok((modality, voi))
    }

    /// A LUT from a Modality or VOI LUT Sequence item (PS3.3 C.11.1.1). LUT Descriptor's
    /// first mapped value is signed when the LUT's input can be negative, whatever VR the file
    /// gave it.
    fn lut(&self, attribute: &'static str, signed_input: bool) -> Result<Lut, DicomError> {
        let invalid = |reason: &str| DicomError::Attribute {
            attribute,
            reason: reason.into(),
        };
        let descriptor: Vec<i64> = self
            .element(tags::LUT_DESCRIPTOR)
            .and_then(|e| e.to_multi_int().ok())
            .filter(|d: &Vec<i64>| d.len() == 3)
            .ok_or_else(|| invalid("LUT Descriptor must hold three numbers"))?;
        // US: 1 to 65535 entries, 0 standing for 65536. Checked before any cast: on wasm32,
        // 2^32 as usize would wrap to 0.
        let entries = match descriptor[0] {
            0 => 65536,
            n @ 1..=65535 => n as usize,
            _ => {
                return Err(invalid(
                    "LUT Descriptor's number of entries must be 0 to 65535",
                ))
            }
        };
        let first = match descriptor[1] {
            f if signed_input && f > i64::from(i16::MAX) => f - 65536,
            f => f,
        };
        let bits = u16::try_from(descriptor[2])
            .ok()
            .filter(|b| (1..=16).contains(b))
            .ok_or_else(|| invalid("LUT Descriptor's bits per entry must be 1 to 16"))?;
        let data: Vec<u16> = match self.element(tags::LUT_DATA).map(|e| e.value()) {
            Some(Value::Primitive(PrimitiveValue::U16(values))) => values.to_vec(),
            Some(Value::Primitive(PrimitiveValue::I16(values))) => {
                values.iter().map(|&v| v as u16).collect()
            }
            // Read without a VR (implicit VR, or VR UN): 16-bit words, little-endian.
            Some(Value::Primitive(PrimitiveValue::U8(bytes))) => bytes
                .chunks_exact(2)
                .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
                .collect(),
            _ => return Err(invalid("LUT Data is missing or not 16-bit words")),
        };
        if data.len() < entries {
            return Err(invalid("LUT Data is shorter than LUT Descriptor says"));
        }
        Ok(Lut {
            first: first as i32,
            bits,
            data: data[..entries].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dicom_files_are_told_apart_by_their_marker() {
        let mut preamble = vec![0u8; 128];
        preamble.extend_from_slice(b"DICM");
        assert!(is_dicom(&preamble));
        assert!(is_dicom(b"DICM\x02\x00\x00\x00"));
        assert!(!is_dicom(b"\x89PNG\r\n\x1a\n"));
        assert!(!is_dicom(&[0u8; 200]));
        assert_eq!(read(b"not dicom").unwrap_err(), DicomError::NotDicom);
    }

    #[test]
    fn chest_radiographs_get_no_warning_and_others_do() {
        assert!(warnings(1, Some("DX"), Some("CHEST")).is_empty());
        assert!(warnings(1, Some("CR"), Some("Thorax pa")).is_empty());
        assert!(warnings(1, None, None).is_empty());
        let w = warnings(3, Some("MR"), Some("KNEE"));
        assert_eq!(w.len(), 3);
        assert_eq!(w[0], "3 frames; the first is analysed");
        assert!(w[1].starts_with("Modality MR: ") && w[2].starts_with("Body Part Examined KNEE: "));
    }

    #[test]
    fn a_lut_descriptor_counting_past_65535_entries_is_refused_not_wrapped() {
        use dicom_core::{DataElement, VR};
        // As a 64-bit value (VR SV) can state it: 2^32 entries, whose cast wraps to 0 on
        // wasm32; and counts just past the range.
        for entries in [1i64 << 32, 65536, -1] {
            let mut item = InMemDicomObject::new_empty();
            item.put(DataElement::new(
                tags::LUT_DESCRIPTOR,
                VR::SV,
                PrimitiveValue::I64(vec![entries, 0, 16].into()),
            ));
            item.put(DataElement::new(
                tags::LUT_DATA,
                VR::OW,
                PrimitiveValue::U16(vec![0; 16].into()),
            ));
            let error = File(&item).lut("Modality LUT Sequence", false).unwrap_err();
            assert!(
                error.to_string().contains("number of entries"),
                "{entries}: {error}"
            );
        }
    }

    #[test]
    fn dates_are_iso() {
        assert_eq!(iso_date("20240131"), "2024-01-31");
        assert_eq!(iso_date("2024.01.31"), "2024.01.31");
    }
}
