//! Copies the first COUNT PneumoniaMNIST test images of each class out of the .npz as PNG
//! files, so that tests and the demo run without the dataset. Usage:
//! `cargo run --release -p hexray-trainer --example export_samples -- DATASET.npz OUT_DIR COUNT`

use std::path::Path;

use anyhow::{bail, Context, Result};
use hexray_trainer::data::read_npz;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [data, out, count] = args.as_slice() else {
        bail!("usage: export_samples DATASET.npz OUT_DIR COUNT");
    };
    let count: usize = count.parse().context("COUNT must be a number")?;
    let (images, labels) = read_npz(Path::new(data), "test")?;
    std::fs::create_dir_all(out)?;
    let mut taken = [0usize; 2];
    for (i, (image, &label)) in images.iter().zip(&labels).enumerate() {
        if taken[label] == count {
            continue;
        }
        taken[label] += 1;
        let class = if label == 1 { "pneumonia" } else { "normal" };
        image.save(format!("{out}/test-{i:04}-{class}.png"))?;
    }
    Ok(())
}
