//! Copies the first COUNT PneumoniaMNIST test images of each class out of the .npz as PNG files, so that tests and the
//! demo run without the dataset. Usage:
//! `cargo run --release -p hexray-evaluator --example export_samples -- DATASET.npz OUT_DIR COUNT`

use std::fs::File;

use anyhow::{bail, Context, Result};
use image::GrayImage;
use ndarray::{Array2, Array3, Axis};
use ndarray_npy::NpzReader;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [data, out, count] = args.as_slice() else {
        bail!("usage: export_samples DATASET.npz OUT_DIR COUNT");
    };
    let count: usize = count.parse().context("COUNT must be a number")?;
    let mut npz = NpzReader::new(File::open(data).with_context(|| format!("opening {data}"))?)?;
    let images: Array3<u8> = npz.by_name("test_images")?;
    let labels: Array2<u8> = npz.by_name("test_labels")?;
    std::fs::create_dir_all(out)?;
    let mut taken = [0usize; 2];
    for (i, (img, &label)) in images.axis_iter(Axis(0)).zip(labels.iter()).enumerate() {
        if taken[label as usize] == count {
            continue;
        }
        taken[label as usize] += 1;
        let (h, w) = img.dim();
        let png = GrayImage::from_raw(w as u32, h as u32, img.iter().copied().collect())
            .expect("h×w pixels");
        let class = if label == 1 { "pneumonia" } else { "normal" };
        png.save(format!("{out}/test-{i:04}-{class}.png"))?;
    }
    Ok(())
}
