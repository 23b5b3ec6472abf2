//! Augmentation, of two kinds:
//! - [`augment`], for the teacher: small random shifts, rotations and contrast changes, so that
//!   a small dataset teaches it the invariances a chest X-ray reader has;
//! - [`full_resolution_copy`], for every phase: a MedMNIST image re-rendered as a clinician's
//!   full-resolution file and brought back through the product's own [`preprocess`]. MedMNIST
//!   shrank its images with its own crop and filter; a dropped X-ray goes through HEXray's, with
//!   other margins, aspect ratios, exposure and often JPEG compression. Training on such copies
//!   teaches the model that gap instead of MedMNIST's one pipeline.

use std::io::Cursor;

use burn::prelude::*;
use hexray_model::network::InputSpec;
use hexray_model::preprocess::preprocess;
use image::codecs::jpeg::JpegEncoder;
use image::imageops::{self, FilterType};
use image::{GrayImage, ImageFormat};
use ndarray::Array3;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::data::{DataError, Dataset};

/// Largest shift, in pixels.
const MAX_SHIFT: f64 = 2.0;
/// Largest rotation, in degrees.
const MAX_DEGREES: f64 = 10.0;
/// Contrast is scaled about the image mean by a factor in [1 − this, 1 + this].
const MAX_CONTRAST: f64 = 0.2;
/// Brightness moves by up to this fraction of the full range: exposure varies between sites.
const MAX_BRIGHTNESS: f64 = 0.1;

/// A randomly transformed copy of each `[batch, c, h, w]` image (bilinear resampling, edges
/// extended).
pub fn augment(images: Tensor<4>, rng: &mut impl Rng) -> Tensor<4> {
    let device = images.device();
    let [batch, c, h, w] = images.dims();
    let values = images
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("float images");
    let plane = h * w;
    let out: Vec<f32> = values
        .chunks(c * plane)
        .flat_map(|image| {
            let dx = rng.gen_range(-MAX_SHIFT..=MAX_SHIFT);
            let dy = rng.gen_range(-MAX_SHIFT..=MAX_SHIFT);
            let angle = rng.gen_range(-MAX_DEGREES..=MAX_DEGREES).to_radians();
            let contrast = rng.gen_range(1.0 - MAX_CONTRAST..=1.0 + MAX_CONTRAST);
            let brightness = rng.gen_range(-MAX_BRIGHTNESS..=MAX_BRIGHTNESS);
            image
                .chunks(plane)
                .flat_map(|p| transform(p, h, w, dx, dy, angle, (contrast, brightness)))
                .collect::<Vec<_>>()
        })
        .collect();
    Tensor::from_data(TensorData::new(out, [batch, c, h, w]), &device)
}

/// One plane rotated by `angle` about its centre, shifted by (dx, dy), contrast-scaled about
/// its mean and brightened.
fn transform(
    plane: &[f32],
    h: usize,
    w: usize,
    dx: f64,
    dy: f64,
    angle: f64,
    (contrast, brightness): (f64, f64),
) -> Vec<f32> {
    let mean = plane.iter().map(|&v| v as f64).sum::<f64>() / plane.len() as f64;
    let (sin, cos) = angle.sin_cos();
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let at = |y: isize, x: isize| {
        let y = y.clamp(0, h as isize - 1) as usize;
        let x = x.clamp(0, w as isize - 1) as usize;
        plane[y * w + x] as f64
    };
    (0..h * w)
        .map(|i| {
            let (y, x) = ((i / w) as f64 - cy - dy, (i % w) as f64 - cx - dx);
            // Inverse rotation: where this output pixel comes from.
            let (sy, sx) = (cos * y + sin * x + cy, -sin * y + cos * x + cx);
            let (y0, x0) = (sy.floor(), sx.floor());
            let (fy, fx) = (sy - y0, sx - x0);
            let (y0, x0) = (y0 as isize, x0 as isize);
            let v = at(y0, x0) * (1.0 - fy) * (1.0 - fx)
                + at(y0, x0 + 1) * (1.0 - fy) * fx
                + at(y0 + 1, x0) * fy * (1.0 - fx)
                + at(y0 + 1, x0 + 1) * fy * fx;
            (mean + (v - mean) * contrast + brightness).clamp(0.0, 1.0) as f32
        })
        .collect()
}

/// Side of the re-rendered image, in pixels: from a small thumbnail to a modest radiograph.
const SIDES: std::ops::RangeInclusive<u32> = 112..=448;
/// Width/height moves by up to this fraction: detectors and exports are rarely square.
const MAX_ASPECT: f64 = 0.12;
/// Each edge loses up to this fraction: collimation and export crops differ between sites.
const MAX_MARGIN: f64 = 0.06;
/// Gamma in [1/this, this]: display and export curves differ.
const MAX_GAMMA: f64 = 1.3;
/// Contrast about mid-grey in [1 − this, 1 + this].
const MAX_FILE_CONTRAST: f64 = 0.15;
/// Share of copies saved as JPEG, at a quality in [`JPEG_QUALITY`]; the rest as PNG.
const JPEG_SHARE: f64 = 0.5;
const JPEG_QUALITY: std::ops::RangeInclusive<u8> = 50..=95;
/// The filters an exporting tool might upscale with.
const FILTERS: [FilterType; 3] = [
    FilterType::Triangle,
    FilterType::CatmullRom,
    FilterType::Lanczos3,
];

/// `image` re-rendered as a full-resolution file (random size, aspect, margins, gamma,
/// contrast, and PNG or JPEG), then preprocessed by `spec` as the client would. The aspect
/// varies around the image's own, so a wide film stays wide and the client's crop takes from
/// it what it takes from the real file.
pub fn full_resolution_copy(
    image: &GrayImage,
    spec: &InputSpec,
    rng: &mut impl Rng,
) -> Result<Array3<i64>, hexray_model::error::PreprocessError> {
    let side = rng.gen_range(SIDES) as f64;
    let own = (image.width() as f64 / image.height() as f64).sqrt();
    let aspect = rng.gen_range(1.0 - MAX_ASPECT..=1.0 + MAX_ASPECT).sqrt() * own;
    let (w, h) = (
        (side * aspect).round() as u32,
        (side / aspect).round() as u32,
    );
    let filter = FILTERS[rng.gen_range(0..FILTERS.len())];
    let large = imageops::resize(image, w, h, filter);
    let mut margin = |n: u32| (rng.gen_range(0.0..=MAX_MARGIN) * n as f64) as u32;
    let (left, right, top, bottom) = (margin(w), margin(w), margin(h), margin(h));
    let mut file =
        imageops::crop_imm(&large, left, top, w - left - right, h - top - bottom).to_image();
    let gamma = rng.gen_range(-MAX_GAMMA.ln()..=MAX_GAMMA.ln()).exp();
    let contrast = rng.gen_range(1.0 - MAX_FILE_CONTRAST..=1.0 + MAX_FILE_CONTRAST);
    let curve: [u8; 256] = std::array::from_fn(|v| {
        let x = (v as f64 / 255.0).powf(gamma);
        ((0.5 + (x - 0.5) * contrast) * 255.0)
            .round()
            .clamp(0.0, 255.0) as u8
    });
    for p in file.pixels_mut() {
        p.0[0] = curve[p.0[0] as usize];
    }
    let mut bytes = Vec::new();
    match rng.gen_bool(JPEG_SHARE) {
        true => JpegEncoder::new_with_quality(&mut bytes, rng.gen_range(JPEG_QUALITY))
            .encode_image(&file),
        false => file.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png),
    }
    .expect("encoding to memory cannot fail");
    preprocess(&bytes, spec)
}

/// `copies` full-resolution copies of every image (labels kept), deterministic in `seed`
/// whatever the thread count: each image draws from its own generator.
pub fn full_resolution_copies(
    images: &[GrayImage],
    labels: &[usize],
    spec: &InputSpec,
    copies: usize,
    seed: u64,
) -> Result<Dataset, DataError> {
    let rendered: Vec<(Array3<i64>, usize)> = (0..copies * images.len())
        .into_par_iter()
        .map(|k| {
            let i = k % images.len();
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (k as u64).wrapping_mul(0x9E37_79B9));
            full_resolution_copy(&images[i], spec, &mut rng)
                .map(|image| (image, labels[i]))
                .map_err(|e| DataError::Augment {
                    what: format!("image {i}"),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<_, _>>()?;
    let (images, labels) = rendered.into_iter().unzip();
    Ok(Dataset {
        images,
        labels,
        patients: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_resolution_copies_vary_repeatably_and_fit_the_input() {
        let spec = InputSpec::square_8bit(28, hexray_model::network::Intensity::Equalize);
        let image = GrayImage::from_fn(28, 28, |x, y| image::Luma([(x * 9 + y * 3) as u8]));
        let copy = |seed| full_resolution_copy(&image, &spec, &mut ChaCha8Rng::seed_from_u64(seed));
        let first = copy(1).unwrap();
        assert_eq!(first.dim(), (1, 28, 28));
        assert_eq!(first, copy(1).unwrap(), "one seed, one copy");
        assert_ne!(first, copy(2).unwrap(), "another seed, another rendering");
        let labels = [0, 1];
        let copies = full_resolution_copies(&[image.clone(), image], &labels, &spec, 2, 3).unwrap();
        assert_eq!(copies.labels, [0, 1, 0, 1]);
    }

    #[test]
    fn a_wide_film_stays_wide_so_the_clients_crop_sees_its_centre() {
        // 2:1, white in the outer 15% of each side: the client's centre square sees only
        // black, and so must every rendering (a rendering squeezed square would show the white).
        let spec = InputSpec::square_8bit(28, hexray_model::network::Intensity::AsIs);
        let wide = GrayImage::from_fn(256, 128, |x, _| {
            image::Luma([if (38..218).contains(&x) { 0 } else { 255 }])
        });
        assert!(preprocess_png(&wide, &spec).iter().all(|&q| q == 0));
        for seed in 0..20 {
            let copy = full_resolution_copy(&wide, &spec, &mut ChaCha8Rng::seed_from_u64(seed));
            let brightest = copy.unwrap().into_iter().max().unwrap();
            assert!(
                brightest < 128,
                "seed {seed}: the film was squeezed ({brightest})"
            );
        }
    }

    /// `image` as a PNG file through the client's preprocessing.
    fn preprocess_png(image: &GrayImage, spec: &InputSpec) -> Array3<i64> {
        let mut png = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        preprocess(&png, spec).unwrap()
    }

    #[test]
    fn the_identity_transform_keeps_the_image() {
        let plane: Vec<f32> = (0..12).map(|v| v as f32 / 12.0).collect();
        let same = transform(&plane, 3, 4, 0.0, 0.0, 0.0, (1.0, 0.0));
        for (a, b) in plane.iter().zip(&same) {
            assert!((a - b).abs() < 1e-6);
        }
        // A one-pixel shift to the right moves column 0 into column 1.
        let shifted = transform(&plane, 3, 4, 1.0, 0.0, 0.0, (1.0, 0.0));
        assert!((shifted[1] - plane[0]).abs() < 1e-6);
    }
}
