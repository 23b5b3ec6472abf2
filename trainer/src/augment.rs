//! Augmentation for the teacher: small random shifts, rotations and contrast changes, so that a
//! small dataset teaches it the invariances a chest X-ray reader has.

use burn::prelude::*;
use rand::Rng;

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

#[cfg(test)]
mod tests {
    use super::*;

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
