//! Image → quantized input tensor. The client and the simulator call this one function, so both
//! always see the same pixels.
//!
//! Steps, in order: decode (PNG, JPEG or DICOM, any size, colour or grayscale; [`decode`]) →
//! ITU-R BT.601 luma → centred square crop (if the model asks for it) → resize to the model's
//! input size with its filter → per-image intensity normalisation (if the model asks for it) →
//! q = round(luma · (2^bits − 1) / 255).

use hexray_dicom::{self as dicom, DicomImage, DicomInfo};
use image::imageops::{self, FilterType};
use image::GrayImage;
use ndarray::Array3;

use crate::error::PreprocessError;
use crate::network::{Crop, InputSpec, Intensity, ResizeFilter};

/// A decoded image file: its 8-bit luma, and what a DICOM file says about itself.
#[derive(Clone, Debug)]
pub struct Decoded {
    /// The image as 8-bit luma (ITU-R BT.601), at its own size: 0 black, 255 white.
    pub luma: GrayImage,
    /// `None` for PNG and JPEG.
    pub dicom: Option<DicomInfo>,
}

/// Decodes an image file: DICOM (told by its `DICM` marker, see [`dicom::read`]), else PNG or
/// JPEG. Every caller of [`preprocess`] (page, command line, trainer) goes through here, so all
/// read a file alike.
pub fn decode(bytes: &[u8]) -> Result<Decoded, PreprocessError> {
    if dicom::is_dicom(bytes) {
        let DicomImage { luma, info } = dicom::read(bytes)?;
        return Ok(Decoded {
            luma,
            dicom: Some(info),
        });
    }
    let image =
        image::load_from_memory(bytes).map_err(|e| PreprocessError::Decode(e.to_string()))?;
    Ok(Decoded {
        luma: image.to_luma8(),
        dicom: None,
    })
}

/// Decodes an image file (PNG, JPEG or DICOM) and preprocesses it. A DICOM file's warnings are
/// dropped: callers that show them use [`decode`] and [`preprocess_luma`].
///
/// ```
/// use hexray_model::preprocess::preprocess;
/// # let (model, _) = hexray_model::testing::tiny_model();
/// let spec = &model.network.input; // 4×4 pixels, 8 bits
/// // A 64×64 PNG, brighter to the right.
/// let image = image::GrayImage::from_fn(64, 64, |x, _| image::Luma([(x * 4) as u8]));
/// let mut png = Vec::new();
/// image.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
///
/// let input = preprocess(&png, spec).unwrap();
/// assert_eq!(input.dim(), (1, 4, 4));
/// assert!(input[[0, 0, 0]] < input[[0, 0, 3]]);
/// assert!(input.iter().all(|&q| (0..=spec.max_value()).contains(&q)));
/// // What is not an image is an error that says so.
/// assert!(preprocess(b"not an image", spec).is_err());
/// ```
pub fn preprocess(bytes: &[u8], spec: &InputSpec) -> Result<Array3<i64>, PreprocessError> {
    preprocess_luma(decode(bytes)?.luma, spec)
}

/// `luma` shrunk, if needed, so that its longer side is at most `max_side` (Triangle filter,
/// aspect ratio kept): the page's view of the file as dropped, which a browser cannot draw
/// itself from DICOM.
pub fn thumbnail(luma: &GrayImage, max_side: u32) -> GrayImage {
    let (w, h) = luma.dimensions();
    let longer = w.max(h);
    if longer <= max_side {
        return luma.clone();
    }
    let scale =
        |n: u32| ((u64::from(n) * u64::from(max_side)).div_ceil(u64::from(longer)) as u32).max(1);
    imageops::resize(luma, scale(w), scale(h), FilterType::Triangle)
}

/// Preprocesses an 8-bit grayscale image, e.g. one read from a MedMNIST array.
pub fn preprocess_luma(
    mut luma: GrayImage,
    spec: &InputSpec,
) -> Result<Array3<i64>, PreprocessError> {
    let (w, h) = luma.dimensions();
    if w < spec.width || h < spec.height {
        return Err(PreprocessError::TooSmall {
            width: w,
            height: h,
            min_width: spec.width,
            min_height: spec.height,
        });
    }
    if spec.crop == Crop::CentreSquare && w != h {
        let side = w.min(h);
        luma = imageops::crop_imm(&luma, (w - side) / 2, (h - side) / 2, side, side).to_image();
    }
    if luma.dimensions() != (spec.width, spec.height) {
        luma = imageops::resize(&luma, spec.width, spec.height, filter(spec.resize_filter));
    }
    normalise(&mut luma, spec.intensity);
    let levels = ((1u32 << spec.bits) - 1) as f64;
    let pixels = luma
        .pixels()
        .map(|p| (p.0[0] as f64 * levels / 255.0).round() as i64)
        .collect();
    Ok(
        Array3::from_shape_vec((1, spec.height as usize, spec.width as usize), pixels)
            .expect("the resized image has exactly width × height pixels"),
    )
}

/// Applies `intensity` in place. Both mappings depend only on the image's own histogram, so a
/// uniformly brighter or lower-contrast copy of an image maps (up to rounding) to the same pixels.
fn normalise(luma: &mut GrayImage, intensity: Intensity) {
    let mut histogram = [0usize; 256];
    for p in luma.pixels() {
        histogram[p.0[0] as usize] += 1;
    }
    let total = luma.pixels().len();
    let map: [u8; 256] = match intensity {
        Intensity::AsIs => return,
        Intensity::Stretch => {
            let low = percentile(&histogram, total, 0.01) as f64;
            let high = percentile(&histogram, total, 0.99) as f64;
            if high <= low {
                return; // A flat image has no contrast to stretch.
            }
            std::array::from_fn(|v| {
                ((v as f64 - low) / (high - low) * 255.0)
                    .round()
                    .clamp(0.0, 255.0) as u8
            })
        }
        Intensity::Equalize => {
            let mut below = 0;
            std::array::from_fn(|v| {
                // The midpoint rank of value v: ties share one level, and a flat image maps to
                // mid-grey rather than to white.
                let rank = below as f64 + histogram[v] as f64 / 2.0;
                below += histogram[v];
                (rank / total as f64 * 255.0).round() as u8
            })
        }
    };
    for p in luma.pixels_mut() {
        p.0[0] = map[p.0[0] as usize];
    }
}

/// The smallest pixel value v with at least `fraction` of the pixels ≤ v.
fn percentile(histogram: &[usize; 256], total: usize, fraction: f64) -> u8 {
    let needed = (fraction * total as f64).ceil().max(1.0) as usize;
    let mut seen = 0;
    for (v, &count) in histogram.iter().enumerate() {
        seen += count;
        if seen >= needed {
            return v as u8;
        }
    }
    255
}

fn filter(f: ResizeFilter) -> FilterType {
    match f {
        ResizeFilter::Nearest => FilterType::Nearest,
        ResizeFilter::Triangle => FilterType::Triangle,
        ResizeFilter::CatmullRom => FilterType::CatmullRom,
        ResizeFilter::Gaussian => FilterType::Gaussian,
        ResizeFilter::Lanczos3 => FilterType::Lanczos3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, ImageFormat, Luma, Rgb, RgbImage};
    use std::io::Cursor;

    fn spec(bits: u8) -> InputSpec {
        InputSpec {
            width: 4,
            height: 4,
            channels: 1,
            bits,
            scale: 1.0,
            crop: Crop::CentreSquare,
            resize_filter: ResizeFilter::Triangle,
            intensity: Intensity::AsIs,
        }
    }

    fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn colour_png_and_gray_png_give_the_same_tensor() {
        let gray = GrayImage::from_fn(8, 6, |x, y| Luma([(x * 30 + y * 5) as u8]));
        let rgb = RgbImage::from_fn(8, 6, |x, y| {
            let v = (x * 30 + y * 5) as u8;
            Rgb([v, v, v])
        });
        let a = preprocess(
            &encode(DynamicImage::ImageLuma8(gray), ImageFormat::Png),
            &spec(8),
        )
        .unwrap();
        let b = preprocess(
            &encode(DynamicImage::ImageRgb8(rgb), ImageFormat::Png),
            &spec(8),
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.dim(), (1, 4, 4));
    }

    #[test]
    fn bits_scale_the_levels() {
        let white = GrayImage::from_pixel(4, 4, Luma([255]));
        let t = preprocess_luma(white, &spec(4)).unwrap();
        assert!(t.iter().all(|&v| v == 15));
    }

    #[test]
    fn jpeg_decodes() {
        let img = DynamicImage::ImageLuma8(GrayImage::from_pixel(16, 16, Luma([128])));
        let t = preprocess(&encode(img, ImageFormat::Jpeg), &spec(8)).unwrap();
        assert!(t.iter().all(|&v| (126..=130).contains(&v)));
    }

    #[test]
    fn normalisation_removes_brightness_and_contrast() {
        let base = GrayImage::from_fn(4, 4, |x, y| Luma([(x * 40 + y * 10) as u8]));
        // The same picture, darker and with half the contrast.
        let dim = GrayImage::from_fn(4, 4, |x, y| Luma([(20 + x * 20 + y * 5) as u8]));
        for intensity in [Intensity::Stretch, Intensity::Equalize] {
            let spec = InputSpec {
                intensity,
                ..spec(8)
            };
            let a = preprocess_luma(base.clone(), &spec).unwrap();
            let b = preprocess_luma(dim.clone(), &spec).unwrap();
            let gap = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).max().unwrap();
            assert!(gap <= 2, "{intensity:?}: {a:?} vs {b:?}");
            let spread = a.iter().max().unwrap() - a.iter().min().unwrap();
            assert!(
                spread >= 200,
                "{intensity:?} spreads the pixels over {spread} levels"
            );
        }
        let raw = preprocess_luma(dim, &spec(8)).unwrap();
        assert!(raw.iter().all(|&v| v <= 20 + 60 + 15));
    }

    #[test]
    fn flat_images_stay_finite() {
        let flat = GrayImage::from_pixel(4, 4, Luma([77]));
        let stretched = preprocess_luma(
            flat.clone(),
            &InputSpec {
                intensity: Intensity::Stretch,
                ..spec(8)
            },
        )
        .unwrap();
        assert!(stretched.iter().all(|&v| v == 77));
        let equalized = preprocess_luma(
            flat,
            &InputSpec {
                intensity: Intensity::Equalize,
                ..spec(8)
            },
        )
        .unwrap();
        assert!(equalized.iter().all(|&v| v == 128));
    }

    #[test]
    fn thumbnails_keep_the_aspect_ratio_and_never_enlarge() {
        let wide = GrayImage::from_pixel(1200, 500, Luma([9]));
        assert_eq!(thumbnail(&wide, 512).dimensions(), (512, 214));
        let tall = GrayImage::from_pixel(3, 5000, Luma([9]));
        assert_eq!(thumbnail(&tall, 512).dimensions(), (1, 512));
        let small = GrayImage::from_pixel(28, 28, Luma([9]));
        assert_eq!(thumbnail(&small, 512), small);
    }

    #[test]
    fn garbage_and_small_images_are_errors() {
        assert!(matches!(
            preprocess(b"not an image", &spec(8)),
            Err(PreprocessError::Decode(_))
        ));
        let small = GrayImage::from_pixel(3, 9, Luma([0]));
        let err = preprocess_luma(small, &spec(8)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "image is 3×9 pixels; the model needs at least 4×4"
        );
    }
}
