//! The first frame's samples, whatever the transfer syntax compressed them with.
//!
//! The codecs are called here rather than through dicom-pixeldata: its RLE and JPEG 2000
//! adapters index out of bounds (a panic, which in the browser kills the module) when an RLE
//! segment decodes short or a JPEG/JPEG 2000 codestream is larger than Rows × Columns. Here
//! every size is checked against the data set before a sample is written.

use std::borrow::Cow;

use dicom_dictionary_std::uids;

use super::jpeg12;
use crate::error::DicomError;

/// How a transfer syntax stores pixel data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Codec {
    Native,
    Rle,
    Jpeg,
    Jpeg2000,
}

/// Explicit VR Big Endian: retired from the standard (so dicom-rs marks its constant
/// deprecated), but archives still hold such files.
const EXPLICIT_VR_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";

/// The transfer syntaxes HEXray reads, each tested on a real file (`dicom/tests/decode.rs`).
pub(crate) fn codec(transfer_syntax: &str) -> Option<Codec> {
    Some(match transfer_syntax {
        uids::IMPLICIT_VR_LITTLE_ENDIAN
        | uids::EXPLICIT_VR_LITTLE_ENDIAN
        | EXPLICIT_VR_BIG_ENDIAN
        | uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN => Codec::Native,
        uids::RLE_LOSSLESS => Codec::Rle,
        uids::JPEG_BASELINE8_BIT
        | uids::JPEG_EXTENDED12_BIT
        | uids::JPEG_LOSSLESS
        | uids::JPEG_LOSSLESS_SV1 => Codec::Jpeg,
        uids::JPEG2000_LOSSLESS | uids::JPEG2000 => Codec::Jpeg2000,
        _ => return None,
    })
}

/// What the data set says a frame is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Geometry {
    pub rows: u32,
    pub columns: u32,
    pub samples_per_pixel: u16,
    /// 8 or 16.
    pub bits_allocated: u16,
}

impl Geometry {
    fn pixels(&self) -> usize {
        self.rows as usize * self.columns as usize
    }

    fn samples(&self) -> usize {
        self.pixels() * usize::from(self.samples_per_pixel)
    }

    fn bytes_per_sample(&self) -> usize {
        usize::from(self.bits_allocated / 8)
    }
}

/// One decoded frame: `samples_per_pixel` raw samples per pixel, pixel by pixel unless
/// `planar` (native data with PlanarConfiguration 1).
#[derive(Debug)]
pub(crate) struct Frame {
    pub samples: Vec<u16>,
    pub planar: bool,
    /// The codec already turned colour into RGB (JPEG's YCbCr, JPEG 2000's RCT/ICT), whatever
    /// the Photometric Interpretation says the compressed data was.
    pub rgb: bool,
}

/// Native pixel data: the bytes of frame 0 as dicom-rs holds them (native byte order, which
/// is little-endian on every target HEXray builds for), or more bytes for more frames.
pub(crate) fn native(bytes: &[u8], geometry: Geometry, planar: bool) -> Result<Frame, DicomError> {
    let size = geometry.samples() * geometry.bytes_per_sample();
    let frame = bytes.get(..size).ok_or_else(|| {
        pixel_error(format!(
            "the pixel data holds {} bytes; one {}×{} frame needs {size}",
            bytes.len(),
            geometry.columns,
            geometry.rows
        ))
    })?;
    let samples = match geometry.bits_allocated {
        8 => frame.iter().map(|&b| u16::from(b)).collect(),
        _ => frame
            .chunks_exact(2)
            .map(|pair| u16::from_ne_bytes([pair[0], pair[1]]))
            .collect(),
    };
    Ok(Frame {
        samples,
        planar,
        rgb: false,
    })
}

/// The compressed bytes of frame 0 in encapsulated pixel data (PS3.5 A.4): all fragments for a
/// single frame; for several frames, the first fragment if there is one per frame, else the
/// fragments before the basic offset table's second entry.
pub(crate) fn first_frame<'a>(
    fragments: &'a [Vec<u8>],
    offset_table: &[u32],
    frames: u32,
) -> Result<Cow<'a, [u8]>, DicomError> {
    let Some(first) = fragments.first() else {
        return Err(pixel_error("the encapsulated pixel data has no fragments"));
    };
    if frames > 1 && fragments.len() == frames as usize {
        return Ok(first.into());
    }
    let end = match (frames > 1, offset_table.get(1)) {
        (false, _) => u64::MAX,
        (true, Some(&end)) => u64::from(end),
        (true, None) => {
            return Err(pixel_error(format!(
                "{frames} frames in {} fragments and no offset table: the first frame cannot \
                 be told apart",
                fragments.len()
            )))
        }
    };
    // Offsets count each fragment's 8-byte item header.
    let mut position = 0u64;
    let mut frame = Vec::new();
    for fragment in fragments.iter().take_while(|f| {
        let start = position;
        position += f.len() as u64 + 8;
        start < end
    }) {
        frame.extend_from_slice(fragment);
    }
    Ok(frame.into())
}

/// RLE Lossless (PS3.5 Annex G): a 64-byte header of segment offsets, then one PackBits
/// segment per byte of each sample, most significant byte first.
pub(crate) fn rle(data: &[u8], geometry: Geometry) -> Result<Frame, DicomError> {
    let word = |i: usize| {
        data.get(4 * i..4 * i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(0).ok_or_else(|| pixel_error("the RLE header is truncated"))?;
    let bytes_per_sample = geometry.bytes_per_sample();
    let expected = usize::from(geometry.samples_per_pixel) * bytes_per_sample;
    // At most 15 segments fit the header.
    if count != expected || count > 15 || data.len() < 64 {
        return Err(pixel_error(format!(
            "the RLE frame has {count} segments; {expected} expected"
        )));
    }
    let pixels = geometry.pixels();
    let spp = usize::from(geometry.samples_per_pixel);
    let mut samples = vec![0u16; geometry.samples()];
    for segment in 0..count {
        let start = word(segment + 1).expect("the 64-byte header holds 15 offsets");
        let end = match segment + 1 < count {
            true => word(segment + 2).expect("the 64-byte header holds 15 offsets"),
            false => data.len(),
        };
        let bytes = data
            .get(start..end)
            .filter(|_| start >= 64)
            .ok_or_else(|| pixel_error(format!("RLE segment {segment} lies outside the frame")))?;
        let decoded = packbits(bytes, pixels)
            .ok_or_else(|| pixel_error(format!("RLE segment {segment} is truncated")))?;
        let (sample, byte) = (segment / bytes_per_sample, segment % bytes_per_sample);
        let shift = 8 * (bytes_per_sample - 1 - byte);
        for (pixel, &b) in decoded.iter().enumerate() {
            samples[pixel * spp + sample] |= u16::from(b) << shift;
        }
    }
    Ok(Frame {
        samples,
        planar: false,
        rgb: false,
    })
}

/// The first `n` bytes a PackBits segment decodes to, or `None` if it decodes to fewer.
fn packbits(src: &[u8], n: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while out.len() < n && i < src.len() {
        let header = src[i] as i8;
        i += 1;
        match header {
            0..=127 => {
                let run = src.get(i..i + header as usize + 1)?;
                out.extend_from_slice(run);
                i += run.len();
            }
            -127..=-1 => {
                let &value = src.get(i)?;
                out.resize(out.len() + (1 - header as isize) as usize, value);
                i += 1;
            }
            -128 => {} // a no-op by definition
        }
    }
    (out.len() >= n).then(|| {
        out.truncate(n);
        out
    })
}

/// Baseline, extended and lossless JPEG (ISO 10918-1): 12-bit lossy JPEG (JPEG Extended,
/// process 4) by `jpeg12`, everything else by `jpeg-decoder`, which refuses 12-bit DCT samples.
pub(crate) fn jpeg(data: &[u8], geometry: Geometry) -> Result<Frame, DicomError> {
    use jpeg_decoder::{Decoder, Error, PixelFormat, UnsupportedFeature};
    if jpeg12::is_12_bit_dct(data) {
        return jpeg_12_bit(data, geometry);
    }
    let failed = |e: Error| match e {
        Error::Unsupported(UnsupportedFeature::SamplePrecision(bits)) => {
            DicomError::Unsupported(format!(
                "{bits}-bit lossy JPEG: lossy JPEG holds 8 or 12 bits per sample; export the \
                 image uncompressed or as lossless JPEG"
            ))
        }
        other => pixel_error(format!("JPEG: {other}")),
    };
    let mut decoder = Decoder::new(data);
    decoder.read_info().map_err(failed)?;
    let info = decoder.info().expect("read_info succeeded");
    let (components, wide) = match info.pixel_format {
        PixelFormat::L8 => (1, false),
        PixelFormat::L16 => (1, true),
        PixelFormat::RGB24 => (3, false),
        PixelFormat::CMYK32 => (4, false),
    };
    check_size(
        "JPEG",
        (u32::from(info.width), u32::from(info.height), components),
        geometry,
    )?;
    if wide && geometry.bits_allocated == 8 {
        return Err(pixel_error(
            "the JPEG has more than 8 bits per sample; BitsAllocated is 8",
        ));
    }
    let bytes = decoder.decode().map_err(failed)?;
    let samples = match wide {
        false => bytes.iter().map(|&b| u16::from(b)).collect(),
        true => bytes
            .chunks_exact(2)
            .map(|pair| u16::from_ne_bytes([pair[0], pair[1]]))
            .collect(),
    };
    Ok(Frame {
        samples,
        planar: false,
        rgb: components == 3,
    })
}

/// 12-bit lossy JPEG, its size checked against the data set's before anything is decoded.
fn jpeg_12_bit(data: &[u8], geometry: Geometry) -> Result<Frame, DicomError> {
    let header = jpeg12::header(data)?;
    check_size(
        "JPEG",
        (header.width, header.height, header.components),
        geometry,
    )?;
    if geometry.bits_allocated == 8 {
        return Err(pixel_error(
            "the JPEG has 12 bits per sample; BitsAllocated is 8",
        ));
    }
    let image = jpeg12::decode(data)?;
    Ok(Frame {
        samples: image.samples,
        planar: false,
        rgb: image.header.components == 3,
    })
}

/// JPEG 2000 (ISO 15444-1), by `hayro-jpeg2000`. Its samples come back as floats with the
/// unsigned level shift added, even for signed components: the shift is taken off again, and
/// signed values keep their two's complement bits, which the pipeline sign-extends from
/// BitsStored.
pub(crate) fn jpeg2000(data: &[u8], geometry: Geometry) -> Result<Frame, DicomError> {
    use hayro_jpeg2000::{DecodeSettings, DecoderContext, Image};
    let failed = |e: hayro_jpeg2000::DecodeError| pixel_error(format!("JPEG 2000: {e}"));
    // The header is checked before anything is decoded: a corrupt size must not make the
    // decoder allocate for it.
    let size = jpeg2000_size(data)
        .ok_or_else(|| pixel_error("JPEG 2000: no SIZ marker at the codestream's start"))?;
    check_size(
        "JPEG 2000",
        (size.width, size.height, size.components),
        geometry,
    )?;
    // The decoder makes what it can of a truncated codestream, and dicom-rs does not flag a
    // truncated last fragment: the codestream must end with its EOC marker, then at most two
    // bytes of padding (even-length fragments; some writers pad with 0xFF). Coded data never
    // holds 0xFF 0xD9, so the marker cannot be mistaken.
    let tail = &data[data.len().saturating_sub(4)..];
    if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        return Err(pixel_error(
            "JPEG 2000: the codestream is truncated (it does not end with an EOC marker)",
        ));
    }
    // Samples wider than BitsAllocated would index past the pixel pipeline's tables.
    if size.precision > u32::from(geometry.bits_allocated) {
        return Err(pixel_error(format!(
            "JPEG 2000: {}-bit samples in a data set that allocates {} bits to each",
            size.precision, geometry.bits_allocated
        )));
    }
    let image = Image::new(data, &DecodeSettings::default()).map_err(failed)?;
    let mut context = DecoderContext::default();
    let decoded = image.decode(&mut context).map_err(failed)?;
    let components = decoded.components();
    check_size(
        "JPEG 2000",
        (image.width(), image.height(), components.len()),
        geometry,
    )?;
    let (low, high) = match size.signed {
        true => (
            -(1i64 << (size.precision - 1)),
            (1i64 << (size.precision - 1)) - 1,
        ),
        false => (0, (1i64 << size.precision) - 1),
    };
    let shift = if size.signed {
        1i64 << (size.precision - 1)
    } else {
        0
    };
    let planes: Vec<&[f32]> = components.iter().map(|c| c.samples()).collect();
    if planes.iter().any(|p| p.len() < geometry.pixels()) {
        return Err(pixel_error("JPEG 2000: a component decoded short"));
    }
    let samples = (0..geometry.pixels())
        .flat_map(|pixel| {
            planes
                .iter()
                .map(move |plane| ((plane[pixel].round() as i64 - shift).clamp(low, high)) as u16)
        })
        .collect();
    Ok(Frame {
        samples,
        planar: false,
        rgb: components.len() == 3,
    })
}

/// What a JPEG 2000 codestream's SIZ segment declares (ISO 15444-1 A.5.1), the first
/// component's precision and sign standing for all.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Jpeg2000Size {
    width: u32,
    height: u32,
    components: usize,
    /// Bits per sample, 1 to 38.
    precision: u32,
    signed: bool,
}

/// The SIZ segment follows the SOC marker at the start of the codestream; some writers wrap
/// the codestream in JP2 boxes, so the marker pair is searched for.
fn jpeg2000_size(data: &[u8]) -> Option<Jpeg2000Size> {
    let start = data
        .windows(4)
        .position(|w| w == [0xFF, 0x4F, 0xFF, 0x51])?;
    let siz = data.get(start + 4..start + 43)?;
    let word = |at: usize| u32::from_be_bytes([siz[at], siz[at + 1], siz[at + 2], siz[at + 3]]);
    let (x, y, x_offset, y_offset) = (word(4), word(8), word(12), word(16));
    let ssiz = siz[38];
    Some(Jpeg2000Size {
        width: x.checked_sub(x_offset)?,
        height: y.checked_sub(y_offset)?,
        components: usize::from(u16::from_be_bytes([siz[36], siz[37]])),
        precision: u32::from(ssiz & 0x7F) + 1,
        signed: ssiz & 0x80 != 0,
    })
}

/// Checks a codestream's (width, height, components) against the data set's.
fn check_size(
    what: &str,
    (width, height, components): (u32, u32, usize),
    geometry: Geometry,
) -> Result<(), DicomError> {
    if (width, height, components)
        != (
            geometry.columns,
            geometry.rows,
            usize::from(geometry.samples_per_pixel),
        )
    {
        return Err(pixel_error(format!(
            "the {what} image is {width}×{height} with {components} component(s); the data \
             set says {}×{} with {}",
            geometry.columns, geometry.rows, geometry.samples_per_pixel
        )));
    }
    Ok(())
}

fn pixel_error(reason: impl Into<String>) -> DicomError {
    DicomError::Pixels(reason.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MONO_16: Geometry = Geometry {
        rows: 2,
        columns: 2,
        samples_per_pixel: 1,
        bits_allocated: 16,
    };

    fn rle_frame(segments: &[&[u8]]) -> Vec<u8> {
        let mut header = vec![0u8; 64];
        header[..4].copy_from_slice(&(segments.len() as u32).to_le_bytes());
        let mut offset = 64u32;
        let mut body = Vec::new();
        for (i, segment) in segments.iter().enumerate() {
            header[4 + 4 * i..8 + 4 * i].copy_from_slice(&offset.to_le_bytes());
            offset += segment.len() as u32;
            body.extend_from_slice(segment);
        }
        [header, body].concat()
    }

    #[test]
    fn packbits_literals_and_runs() {
        // A literal run of 2, a repeat of 3, a no-op, a literal of 1.
        let src = [1, 10, 11, (-2i8) as u8, 7, 0x80, 0, 9];
        assert_eq!(packbits(&src, 6), Some(vec![10, 11, 7, 7, 7, 9]));
        // Padding beyond the pixels is dropped; a short segment is an error.
        assert_eq!(packbits(&src, 4), Some(vec![10, 11, 7, 7]));
        assert_eq!(packbits(&src, 7), None);
        assert_eq!(packbits(&[5, 1, 2], 6), None, "literal overruns the data");
    }

    #[test]
    fn rle_frames_put_the_high_byte_segment_first() {
        let high: &[u8] = &[3, 0x01, 0x02, 0x03, 0x04];
        let low: &[u8] = &[(-3i8) as u8, 0xAA];
        let frame = rle(&rle_frame(&[high, low]), MONO_16).unwrap();
        assert_eq!(frame.samples, [0x01AA, 0x02AA, 0x03AA, 0x04AA]);
        // A segment that decodes short, a wrong segment count and a bad offset are errors.
        let short: &[u8] = &[(-1i8) as u8, 0xAA];
        for bad in [
            rle_frame(&[high, short]),
            rle_frame(&[high]),
            [&rle_frame(&[high, low])[..8], &[0xFF; 56]].concat(),
            vec![2, 0, 0],
        ] {
            assert!(matches!(rle(&bad, MONO_16), Err(DicomError::Pixels(_))));
        }
    }

    #[test]
    fn native_frames_are_checked_for_size() {
        let frame = native(&[1, 0, 2, 0, 3, 0, 4, 1, 9, 9], MONO_16, false).unwrap();
        assert_eq!(frame.samples, [1, 2, 3, 260]);
        assert!(native(&[1, 0, 2], MONO_16, false).is_err());
    }

    /// The JPEG codestream of a single-frame file of `samples/dicom/`.
    fn jpeg_frame(path: &str) -> Vec<u8> {
        use dicom_object::file::ReadPreamble;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../samples/dicom")
            .join(path);
        let bytes = std::fs::read(&path).unwrap();
        let object = dicom_object::OpenFileOptions::new()
            .read_preamble(ReadPreamble::Never)
            .from_reader(&bytes[128..])
            .unwrap();
        let pixels = object
            .element(dicom_dictionary_std::tags::PIXEL_DATA)
            .unwrap();
        let dicom_core::value::Value::PixelSequence(sequence) = pixels.value() else {
            panic!("{} is not encapsulated", path.display());
        };
        first_frame(sequence.fragments(), sequence.offset_table(), 1)
            .unwrap()
            .into_owned()
    }

    /// libjpeg's samples of pydicom's JPGExtended.dcm on a 16×16 grid, shared with the
    /// integration test that checks the rendered image (`model/tests/fixtures`).
    fn jpgextended_reference() -> Vec<Vec<u16>> {
        include_str!("../tests/fixtures/jpgextended-reference.txt")
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| {
                line.split_whitespace()
                    .map(|v| v.parse().unwrap())
                    .collect()
            })
            .collect()
    }

    /// pydicom's JPGExtended.dcm (a 12-bit bone scan, 256×1024) against libjpeg's decoding of
    /// it (pylibjpeg-libjpeg, through pydicom 3.0.2's `pixel_array`): every 9th column from
    /// 60, every 60th row from 40. The whole frame is within one level of it (mean difference
    /// 0.014) and of libjpeg-turbo's (0.006).
    #[test]
    fn twelve_bit_lossy_jpeg_matches_libjpeg() {
        let data = jpeg_frame("pydicom/JPGExtended.dcm");
        let geometry = Geometry {
            rows: 1024,
            columns: 256,
            samples_per_pixel: 1,
            bits_allocated: 16,
        };
        let frame = jpeg(&data, geometry).unwrap();
        assert_eq!(frame.samples.len(), 256 * 1024);
        for (i, row) in jpgextended_reference().iter().enumerate() {
            for (j, &expected) in row.iter().enumerate() {
                let (y, x) = (40 + 60 * i, 60 + 9 * j);
                let got = frame.samples[y * 256 + x];
                assert!(
                    got.abs_diff(expected) <= 1,
                    "({x}, {y}): {got} vs {expected}"
                );
            }
        }
        // libjpeg's mean is 14.383 and its largest sample 264.
        let mean = frame.samples.iter().map(|&s| f64::from(s)).sum::<f64>() / 262_144.0;
        assert!((mean - 14.383).abs() < 0.02, "{mean}");
        assert!(frame.samples.iter().max().unwrap().abs_diff(264) <= 1);

        // The data set's geometry must be the JPEG's.
        for wrong in [
            Geometry {
                rows: 1023,
                ..geometry
            },
            Geometry {
                samples_per_pixel: 3,
                ..geometry
            },
            Geometry {
                bits_allocated: 8,
                ..geometry
            },
        ] {
            assert!(matches!(jpeg(&data, wrong), Err(DicomError::Pixels(_))));
        }
        // Cut, or garbage after the frame header: errors, not panics.
        for cut in [3, 20, 200, data.len() / 2, data.len() - 3] {
            let error = jpeg(&data[..cut], geometry).unwrap_err();
            assert!(
                matches!(error, DicomError::Pixels(_)),
                "cut at {cut}: {error}"
            );
        }
        let sof = data.windows(2).position(|w| w == [0xFF, 0xC1]).unwrap();
        let mut garbage = data.clone();
        let mut state = 12345u32;
        for byte in &mut garbage[sof + 13..] {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            *byte = (state >> 16) as u8;
        }
        assert!(matches!(
            jpeg(&garbage, geometry),
            Err(DicomError::Pixels(_))
        ));
    }

    #[test]
    fn the_first_frame_of_encapsulated_data() {
        let fragments = vec![vec![1, 2], vec![3], vec![4, 5]];
        assert_eq!(&*first_frame(&fragments, &[], 1).unwrap(), &[1, 2, 3, 4, 5]);
        assert_eq!(&*first_frame(&fragments, &[], 3).unwrap(), &[1, 2]);
        // Two frames in three fragments: the offset table says where the second starts.
        assert_eq!(&*first_frame(&fragments, &[0, 19], 2).unwrap(), &[1, 2, 3]);
        assert!(first_frame(&fragments, &[], 2).is_err());
        assert!(first_frame(&[], &[], 1).is_err());
    }
}
