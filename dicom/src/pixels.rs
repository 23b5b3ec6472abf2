//! The grayscale pipeline of PS3.3 C.11, from stored sample to 8-bit luma: mask and sign-extend
//! the stored bits, the modality transform (Rescale Slope/Intercept or a Modality LUT), the
//! VOI transform (a window, a VOI LUT, or the frame's own range) and, for MONOCHROME1, the
//! inversion that makes the smallest value white.
//!
//! Samples are at most 16 bits, so every step runs once per possible sample value into one
//! table, and each pixel is a single lookup: a 3000×3000 radiograph costs no floating point
//! per pixel and no intermediate image.

use image::{DynamicImage, GrayImage, RgbImage};

/// Where a stored value sits in its allocated bits (PS3.5 8.1.1): `bits_stored` bits ending at
/// `high_bit`, two's complement when `signed`. The other bits may hold overlays or garbage.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct SampleFormat {
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub high_bit: u16,
    pub signed: bool,
}

impl SampleFormat {
    /// The stored value of a raw sample.
    pub fn value(&self, raw: u16) -> i32 {
        let shift = self.high_bit + 1 - self.bits_stored;
        let value = (u32::from(raw) >> shift) & ((1u32 << self.bits_stored) - 1);
        let sign = 1u32 << (self.bits_stored - 1);
        if self.signed && value & sign != 0 {
            value as i32 - (1i32 << self.bits_stored)
        } else {
            value as i32
        }
    }
}

/// A LUT of a Modality or VOI LUT Sequence item (PS3.3 C.11.1.1): inputs at or below `first`
/// map to the first entry, inputs past the end to the last.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Lut {
    pub first: i32,
    /// Bits per entry (LUT Descriptor's third value): the VOI output range is 0..2^bits − 1.
    pub bits: u16,
    /// Never empty.
    pub data: Vec<u16>,
}

impl Lut {
    fn lookup(&self, x: f64) -> f64 {
        let last = (self.data.len() - 1) as f64;
        let index = (x.round() - f64::from(self.first)).clamp(0.0, last);
        f64::from(self.data[index as usize])
    }
}

/// Stored values → modality values (e.g. Hounsfield units for CT).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ModalityTransform {
    Rescale { slope: f64, intercept: f64 },
    Lut(Lut),
}

impl ModalityTransform {
    fn apply(&self, stored: i32) -> f64 {
        match self {
            ModalityTransform::Rescale { slope, intercept } => {
                slope * f64::from(stored) + intercept
            }
            ModalityTransform::Lut(lut) => lut.lookup(f64::from(stored)),
        }
    }
}

/// VOI LUT Function (0028,1056): how a window maps values (PS3.3 C.11.2.1.2-3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum WindowFunction {
    Linear,
    LinearExact,
    Sigmoid,
}

/// Modality values → display levels 0..=255.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Voi {
    Window {
        center: f64,
        width: f64,
        function: WindowFunction,
    },
    Lut(Lut),
    /// The frame's own range, lowest value black and highest white: for files with neither.
    Range {
        low: f64,
        high: f64,
    },
}

impl Voi {
    /// A window, if `width` is one its function allows (LINEAR needs at least 1, the others
    /// more than 0).
    pub fn window(center: f64, width: f64, function: WindowFunction) -> Option<Voi> {
        let valid = match function {
            WindowFunction::Linear => width >= 1.0,
            WindowFunction::LinearExact | WindowFunction::Sigmoid => width > 0.0,
        };
        (valid && center.is_finite() && width.is_finite()).then_some(Voi::Window {
            center,
            width,
            function,
        })
    }

    fn apply(&self, x: f64) -> f64 {
        const TOP: f64 = 255.0;
        match *self {
            Voi::Window {
                center: c,
                width: w,
                function: WindowFunction::Linear,
            } => {
                if x <= c - 0.5 - (w - 1.0) / 2.0 {
                    0.0
                } else if x > c - 0.5 + (w - 1.0) / 2.0 {
                    TOP
                } else {
                    ((x - (c - 0.5)) / (w - 1.0) + 0.5) * TOP
                }
            }
            Voi::Window {
                center: c,
                width: w,
                function: WindowFunction::LinearExact,
            } => ((x - c) / w + 0.5).clamp(0.0, 1.0) * TOP,
            Voi::Window {
                center: c,
                width: w,
                function: WindowFunction::Sigmoid,
            } => TOP / (1.0 + (-4.0 * (x - c) / w).exp()),
            Voi::Lut(ref lut) => lut.lookup(x) / ((1u32 << lut.bits) - 1) as f64 * TOP,
            Voi::Range { low, high } if high > low => (x - low) / (high - low) * TOP,
            Voi::Range { .. } => 0.0,
        }
    }
}

/// The 8-bit image of a monochrome frame (`raw`: one sample per pixel, row by row). `voi`
/// `None` windows the frame to its own range of modality values; `invert` is MONOCHROME1.
pub(crate) fn monochrome(
    raw: &[u16],
    width: u32,
    height: u32,
    format: SampleFormat,
    modality: &ModalityTransform,
    voi: Option<Voi>,
    invert: bool,
) -> GrayImage {
    let levels = 1usize << format.bits_allocated;
    // Every codec checks its samples against BitsAllocated; clamping keeps a sample that
    // slipped past one from indexing out of the tables (a trap in the browser's worker).
    let raw: Vec<usize> = raw
        .iter()
        .map(|&r| usize::from(r).min(levels - 1))
        .collect();
    let modality_values: Vec<f64> = (0..levels)
        .map(|raw| modality.apply(format.value(raw as u16)))
        .collect();
    let voi = voi.unwrap_or_else(|| {
        let mut present = vec![false; levels];
        raw.iter().for_each(|&r| present[r] = true);
        let (low, high) = present
            .iter()
            .zip(&modality_values)
            .filter(|(&p, _)| p)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, &v)| {
                (lo.min(v), hi.max(v))
            });
        Voi::Range { low, high }
    });
    let table: Vec<u8> = modality_values
        .iter()
        .map(|&x| {
            let level = voi.apply(x).clamp(0.0, 255.0).round() as u8;
            if invert {
                255 - level
            } else {
                level
            }
        })
        .collect();
    let pixels = raw.iter().map(|&r| table[r]).collect();
    GrayImage::from_raw(width, height, pixels).expect("one raw sample per pixel")
}

/// How a colour frame's three 8-bit samples are stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Colour {
    Rgb,
    /// YBR_FULL: the first sample is already the luma (PS3.3 C.7.6.3.1.2).
    YbrFull,
}

/// The luma of a colour frame. RGB goes through the same conversion as a colour PNG, so both
/// files of one picture give the same pixels. `planar`: PlanarConfiguration 1, each colour
/// plane after the other.
pub(crate) fn colour(
    raw: &[u16],
    width: u32,
    height: u32,
    colour: Colour,
    planar: bool,
) -> GrayImage {
    let n = (width * height) as usize;
    let sample = |pixel: usize, c: usize| {
        let index = if planar { c * n + pixel } else { pixel * 3 + c };
        raw[index] as u8
    };
    match colour {
        Colour::Rgb => {
            let rgb = (0..n)
                .flat_map(|p| [0, 1, 2].map(|c| sample(p, c)))
                .collect();
            let rgb = RgbImage::from_raw(width, height, rgb).expect("three samples per pixel");
            DynamicImage::ImageRgb8(rgb).to_luma8()
        }
        Colour::YbrFull => {
            GrayImage::from_raw(width, height, (0..n).map(|p| sample(p, 0)).collect())
                .expect("one luma per pixel")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples of 16 allocated bits, `bits_stored` of them ending at `high_bit`.
    const fn sixteen(bits_stored: u16, high_bit: u16, signed: bool) -> SampleFormat {
        SampleFormat {
            bits_allocated: 16,
            bits_stored,
            high_bit,
            signed,
        }
    }

    const UNSIGNED_12: SampleFormat = sixteen(12, 11, false);
    const IDENTITY: ModalityTransform = ModalityTransform::Rescale {
        slope: 1.0,
        intercept: 0.0,
    };

    fn window(center: f64, width: f64, function: WindowFunction) -> Voi {
        Voi::window(center, width, function).unwrap()
    }

    #[test]
    fn bits_outside_bits_stored_are_masked_off() {
        // An overlay bit above a 12-bit value is ignored.
        assert_eq!(UNSIGNED_12.value(0xF123), 0x123);
        // Stored bits 4..=13 of 16 (high bit 13, 10 bits stored).
        let shifted = sixteen(10, 13, false);
        assert_eq!(shifted.value(0b1100_0000_0101_1111), 0b00_0000_0101);
    }

    #[test]
    fn signed_values_are_sign_extended_from_bits_stored() {
        let signed_12 = SampleFormat {
            signed: true,
            ..UNSIGNED_12
        };
        assert_eq!(signed_12.value(0x0FFF), -1);
        assert_eq!(signed_12.value(0x0800), -2048);
        assert_eq!(signed_12.value(0x07FF), 2047);
        // Bits above bit 11 do not change the value, whatever they hold.
        assert_eq!(signed_12.value(0xFFFF), -1);
        assert_eq!(signed_12.value(0xF7FF), 2047);
        let signed_16 = sixteen(16, 15, true);
        assert_eq!(signed_16.value(0x8000), -32768);
    }

    #[test]
    fn rescale_and_modality_lut() {
        let ct = ModalityTransform::Rescale {
            slope: 2.0,
            intercept: -1024.0,
        };
        assert_eq!(ct.apply(0), -1024.0);
        assert_eq!(ct.apply(600), 176.0);
        let lut = ModalityTransform::Lut(Lut {
            first: 10,
            bits: 16,
            data: vec![100, 200, 300],
        });
        assert_eq!(
            [5, 10, 11, 12, 99].map(|v| lut.apply(v)),
            [100.0, 100.0, 200.0, 300.0, 300.0]
        );
    }

    #[test]
    fn the_linear_window_is_the_standards_function() {
        // PS3.3 C.11.2.1.2.1 with c = 2048.5, w = 4081: stored value 16·v + 8 shows as v.
        let voi = window(2048.5, 4081.0, WindowFunction::Linear);
        for v in [0u16, 1, 100, 254, 255] {
            let level = voi.apply(f64::from(v * 16 + 8));
            assert!((level - f64::from(v)).abs() < 1e-9, "v = {v}: {level}");
        }
        assert_eq!(voi.apply(-5000.0), 0.0);
        assert_eq!(voi.apply(5000.0), 255.0);
        // Width 1 is a threshold at c − 0.5.
        let threshold = window(100.0, 1.0, WindowFunction::Linear);
        assert_eq!((threshold.apply(99.5), threshold.apply(99.6)), (0.0, 255.0));
        assert!(Voi::window(100.0, 0.5, WindowFunction::Linear).is_none());
    }

    #[test]
    fn linear_exact_and_sigmoid_windows() {
        let exact = window(100.0, 50.0, WindowFunction::LinearExact);
        assert_eq!(
            [75.0, 100.0, 125.0, 0.0, 200.0].map(|x| exact.apply(x)),
            [0.0, 127.5, 255.0, 0.0, 255.0]
        );
        let sigmoid = window(100.0, 50.0, WindowFunction::Sigmoid);
        assert_eq!(sigmoid.apply(100.0), 127.5);
        assert!(sigmoid.apply(125.0) > 200.0 && sigmoid.apply(75.0) < 55.0);
        assert!(Voi::window(100.0, 0.0, WindowFunction::Sigmoid).is_none());
    }

    #[test]
    fn voi_luts_scale_their_entries_to_eight_bits() {
        let voi = Voi::Lut(Lut {
            first: -10,
            bits: 12,
            data: vec![0, 4095, 2048],
        });
        assert_eq!(voi.apply(-20.0), 0.0);
        assert_eq!(voi.apply(-9.0), 255.0);
        assert!((voi.apply(-8.0) - 127.53).abs() < 0.01);
    }

    #[test]
    fn without_a_window_the_frame_spans_its_own_range_and_monochrome1_inverts() {
        let raw = [1000, 1500, 2000, 3000];
        let plain = monochrome(&raw, 2, 2, UNSIGNED_12, &IDENTITY, None, false);
        assert_eq!(plain.as_raw(), &[0, 64, 128, 255]);
        let inverted = monochrome(&raw, 2, 2, UNSIGNED_12, &IDENTITY, None, true);
        assert_eq!(inverted.as_raw(), &[255, 191, 127, 0]);
        // A negative slope flips the range: still the lowest modality value is black.
        let negative = ModalityTransform::Rescale {
            slope: -1.0,
            intercept: 0.0,
        };
        let flipped = monochrome(&raw, 2, 2, UNSIGNED_12, &negative, None, false);
        assert_eq!(flipped.as_raw(), &[255, 191, 128, 0]);
        // A flat frame has no range: black, and white when inverted.
        let flat = monochrome(&[7; 4], 2, 2, UNSIGNED_12, &IDENTITY, None, true);
        assert_eq!(flat.as_raw(), &[255; 4]);
    }

    #[test]
    fn the_pipeline_masks_rescales_windows_then_inverts() {
        // Signed 12-bit values with an overlay bit set, rescaled by +2048, windowed over
        // the full 12-bit range and inverted (MONOCHROME1).
        let format = SampleFormat {
            signed: true,
            ..UNSIGNED_12
        };
        let rescale = ModalityTransform::Rescale {
            slope: 1.0,
            intercept: 2048.0,
        };
        let voi = window(2048.5, 4081.0, WindowFunction::Linear);
        let raw = [0x8800, 0x0FF8 | 0x4000, 0x07F8, 0x0008];
        let image = monochrome(&raw, 4, 1, format, &rescale, Some(voi), true);
        // −2048 → 0 → level 0 → 255; −8 → 2040 → 127 → 128; 2040 → 4088 → 255 → 0;
        // 8 → 2056 → 128 → 127.
        assert_eq!(image.as_raw(), &[255, 128, 0, 127]);
    }

    #[test]
    fn colour_frames_become_luma() {
        // Two pixels, red and white, interleaved and planar.
        let interleaved = [255, 0, 0, 255, 255, 255];
        let planar = [255, 255, 0, 255, 0, 255];
        let a = colour(&interleaved, 2, 1, Colour::Rgb, false);
        assert_eq!(a, colour(&planar, 2, 1, Colour::Rgb, true));
        let png_way = DynamicImage::ImageRgb8(
            RgbImage::from_raw(2, 1, vec![255, 0, 0, 255, 255, 255]).unwrap(),
        )
        .to_luma8();
        assert_eq!(a, png_way);
        let ybr = colour(&[90, 128, 128, 200, 10, 250], 2, 1, Colour::YbrFull, false);
        assert_eq!(ybr.as_raw(), &[90, 200]);
    }
}
