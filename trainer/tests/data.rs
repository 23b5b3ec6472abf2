//! Dataset loaders: real files load through the client's preprocessing; every malformed input
//! is an error that names the file.

use std::path::{Path, PathBuf};

use hexray_model::network::{InputSpec, Intensity};
use hexray_model::preprocess::{preprocess, preprocess_luma};
use hexray_trainer::adults::AdultImages;
use hexray_trainer::data::{folds, hold_out, load_folder, load_npz, read_folder, shared_patients};
use image::GrayImage;
use ndarray::{Array2, Array3};
use ndarray_npy::NpzWriter;

fn spec() -> InputSpec {
    InputSpec::square_8bit(28, Intensity::AsIs)
}

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples")
}

fn write_npz(path: &Path, arrays: &[(&str, NpzArray)]) {
    let mut npz = NpzWriter::new(std::fs::File::create(path).unwrap());
    for (name, array) in arrays {
        match array {
            NpzArray::Images(a) => npz.add_array(*name, a).unwrap(),
            NpzArray::Labels(a) => npz.add_array(*name, a).unwrap(),
        }
    }
    npz.finish().unwrap();
}

enum NpzArray {
    Images(Array3<u8>),
    Labels(Array2<u8>),
}

#[test]
fn npz_splits_load_through_the_client_preprocessing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mini.npz");
    let images = Array3::from_shape_fn((5, 28, 28), |(i, y, x)| ((i * 40 + y * 3 + x) % 256) as u8);
    let labels = Array2::from_shape_fn((5, 1), |(i, _)| (i % 2) as u8);
    write_npz(
        &path,
        &[
            ("train_images", NpzArray::Images(images.clone())),
            ("train_labels", NpzArray::Labels(labels)),
        ],
    );

    let data = load_npz(&path, "train", &spec()).unwrap();
    assert_eq!(data.len(), 5);
    assert_eq!(data.labels, vec![0, 1, 0, 1, 0]);
    assert!(data.patients.is_none());
    let first = GrayImage::from_raw(
        28,
        28,
        images
            .index_axis(ndarray::Axis(0), 0)
            .iter()
            .copied()
            .collect(),
    )
    .unwrap();
    assert_eq!(data.images[0], preprocess_luma(first, &spec()).unwrap());

    let err = load_npz(&path, "val", &spec()).unwrap_err().to_string();
    assert!(
        err.contains("mini.npz") && err.contains("val_images"),
        "{err}"
    );
}

#[test]
fn malformed_npz_files_name_the_file_and_array() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.npz");
    assert!(load_npz(&missing, "train", &spec())
        .unwrap_err()
        .to_string()
        .contains("absent.npz"));

    let garbage = dir.path().join("garbage.npz");
    std::fs::write(&garbage, b"this is not a zip archive").unwrap();
    assert!(load_npz(&garbage, "train", &spec())
        .unwrap_err()
        .to_string()
        .contains("garbage.npz"));

    let mismatched = dir.path().join("mismatched.npz");
    write_npz(
        &mismatched,
        &[
            ("train_images", NpzArray::Images(Array3::zeros((3, 28, 28)))),
            ("train_labels", NpzArray::Labels(Array2::zeros((2, 1)))),
        ],
    );
    let err = load_npz(&mismatched, "train", &spec())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train_labels") && err.contains("does not match 3 images"),
        "{err}"
    );

    let small = dir.path().join("small.npz");
    write_npz(
        &small,
        &[
            ("train_images", NpzArray::Images(Array3::zeros((1, 8, 8)))),
            ("train_labels", NpzArray::Labels(Array2::zeros((1, 1)))),
        ],
    );
    let err = load_npz(&small, "train", &spec()).unwrap_err().to_string();
    assert!(err.contains("image 0") && err.contains("8×8"), "{err}");
}

/// A folder dataset of the committed X-rays: 4 images of 3 patients.
fn folder(dir: &Path, csv: &str) -> PathBuf {
    for (from, to) in [
        ("covid-cxr-actualmed/covid-1.png", "covid-1.png"),
        ("covid-cxr-actualmed/normal-1.png", "normal-1.png"),
        ("pneumoniamnist/test-0234-normal.png", "normal-2.png"),
    ] {
        std::fs::copy(samples().join(from), dir.join(to)).unwrap();
    }
    std::fs::write(dir.join("not-an-image.png"), b"plain text").unwrap();
    let path = dir.join("labels.csv");
    std::fs::write(&path, csv).unwrap();
    path
}

const GOOD: &str = "path,label,patient_id\n\
    covid-1.png,covid,P1\n\
    normal-1.png,normal,P2\n\
    normal-2.png,normal,P3\n\
    covid-1.png,covid,P1\n";

#[test]
fn folder_datasets_load_with_patients_and_split_by_patient() {
    let dir = tempfile::tempdir().unwrap();
    let csv = folder(dir.path(), GOOD);
    let data = load_folder(&csv, &["normal", "covid"], &spec()).unwrap();
    assert_eq!(data.labels, vec![1, 0, 0, 1]);
    assert_eq!(data.patients.as_deref().unwrap(), ["P1", "P2", "P3", "P1"]);
    let bytes = std::fs::read(dir.path().join("normal-1.png")).unwrap();
    assert_eq!(data.images[1], preprocess(&bytes, &spec()).unwrap());

    let split = folds(&data, 2, 7).unwrap();
    assert!(shared_patients(&data, &split).is_empty());
    let mut all: Vec<usize> = split.concat();
    all.sort();
    assert_eq!(all, vec![0, 1, 2, 3]);
    assert_eq!(
        split,
        folds(&data, 2, 7).unwrap(),
        "deterministic for a seed"
    );
    // Both images of patient P1 are in one fold.
    assert!(split.iter().any(|f| f.contains(&0) && f.contains(&3)));
    assert!(
        folds(&data, 4, 7).is_err(),
        "three patients cannot make four folds"
    );
    let subset = data.subset(&split[0]);
    assert_eq!(subset.len(), split[0].len());

    // Class balance draws the two normals in turn until they are as many as the covid images.
    assert_eq!(data.class_balanced_indices(), vec![1, 2, 0, 3]);
    // The originals, for renderings: decoded in the same order, shrunk to at most 64 pixels a
    // side and never enlarged (normal-2 is a 28×28 PneumoniaMNIST image).
    let originals = read_folder(&csv, &["normal", "covid"], 64).unwrap();
    assert_eq!(originals.len(), data.len());
    assert_eq!(originals[0].width().max(originals[0].height()), 64);
    assert_eq!(originals[2].dimensions(), (28, 28));
    let again = preprocess_luma(originals[1].clone(), &spec()).unwrap();
    assert_eq!(again.dim(), data.images[1].dim());
}

/// The adult set repeated in a training set: the same preprocessed images, in the order
/// picked, or each time a new rendering of the file, deterministic for a seed.
#[test]
fn adult_images_repeat_as_the_same_images_or_as_new_renderings() {
    let dir = tempfile::tempdir().unwrap();
    let csv = folder(dir.path(), GOOD);
    let classes = ["normal", "covid"];
    let seeded = (7, &spec());
    let plain = AdultImages::load(&csv, &classes, &spec(), false).unwrap();
    assert!(!plain.renders());
    let set = plain.set();
    let again = plain.repeated(&[1, 0], 3, seeded).unwrap();
    assert_eq!(again.labels, vec![0, 1, 0, 1, 0, 1]);
    for (k, image) in again.images.iter().enumerate() {
        assert_eq!(image, &set.images[[1, 0][k % 2]], "repeat {k}");
    }
    assert!(again.patients.is_none(), "a training set names no patient");

    let rendered = AdultImages::load(&csv, &classes, &spec(), true).unwrap();
    assert!(rendered.renders());
    assert_eq!(
        rendered.set().images,
        set.images,
        "the same images as the client reads"
    );
    let renderings = rendered.repeated(&[1, 0], 3, seeded).unwrap();
    assert_eq!(renderings.labels, again.labels);
    assert_eq!(renderings.images.len(), 6);
    assert!(
        renderings.images != again.images,
        "renderings are new images, not the same ones again"
    );
    assert_ne!(
        renderings.images[0], renderings.images[2],
        "each repeat differs"
    );
    assert!(renderings.patients.is_none());
    // Each rendering is of its own file: nearer its preprocessed image than the other pick's.
    let distance =
        |a: &ndarray::Array3<i64>, b: &ndarray::Array3<i64>| (a - b).mapv(i64::abs).sum();
    for (k, image) in renderings.images.iter().enumerate() {
        let (own, other) = ([1, 0][k % 2], [0, 1][k % 2]);
        assert!(
            distance(image, &set.images[own]) < distance(image, &set.images[other]),
            "rendering {k} is not of image {own}"
        );
    }
    assert_eq!(
        renderings.images,
        rendered.repeated(&[1, 0], 3, seeded).unwrap().images,
        "deterministic for a seed"
    );
    // A screen calls every class but normal abnormal, class 1.
    let three = dir.path().join("three.csv");
    std::fs::write(
        &three,
        GOOD.replace("normal-2.png,normal", "normal-2.png,other"),
    )
    .unwrap();
    let classes = ["normal", "covid", "other"];
    let loaded = AdultImages::load(&three, &classes, &spec(), false).unwrap();
    assert_eq!(loaded.set().labels, vec![1, 0, 2, 1]);
    assert_eq!(loaded.abnormal_as_one().set().labels, vec![1, 0, 1, 1]);
}

/// A folder may list DICOM files (`.dcm` or any name): they load like the PNGs, through the
/// client's decoding.
#[test]
fn folder_datasets_read_dicom_files() {
    let dir = tempfile::tempdir().unwrap();
    for (from, to) in [
        ("covid-cxr-actualmed/covid-1.png", "covid-1.png"),
        ("dicom/chest/covid-1.cr-rle-mono1.dcm", "covid-1.dcm"),
    ] {
        std::fs::copy(samples().join(from), dir.path().join(to)).unwrap();
    }
    let csv = dir.path().join("labels.csv");
    std::fs::write(&csv, "path,label\ncovid-1.png,covid\ncovid-1.dcm,covid\n").unwrap();
    let data = load_folder(&csv, &["normal", "covid"], &spec()).unwrap();
    assert_eq!(data.labels, vec![1, 1]);
    // The DICOM file is the PNG's pixels, 12-bit, MONOCHROME1 and RLE-compressed.
    let gap = data.images[0]
        .iter()
        .zip(&data.images[1])
        .map(|(a, b)| (a - b).abs())
        .max();
    assert!(gap <= Some(1), "{gap:?}");
}

#[test]
fn transfer_validation_shares_no_patient_with_its_training_set() {
    let dir = tempfile::tempdir().unwrap();
    let data = load_folder(&folder(dir.path(), GOOD), &["normal", "covid"], &spec()).unwrap();
    // Of all four images (patients P1, P2, P3, P1), hold some patients out to choose on.
    for seed in 0..8 {
        let (train, validation) = hold_out(&data, &[0, 1, 2, 3], 2, seed).unwrap();
        assert!(!train.is_empty() && !validation.is_empty());
        assert!(shared_patients(&data, &[train.clone(), validation.clone()]).is_empty());
        let mut all = [train, validation].concat();
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3], "every image is used once");
    }
    // The indices are the dataset's, not the subset's.
    let (train, validation) = hold_out(&data, &[1, 2, 3], 2, 1).unwrap();
    assert!(train
        .iter()
        .chain(&validation)
        .all(|i| [1, 2, 3].contains(i)));
}

#[test]
fn malformed_folder_datasets_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let classes = ["normal", "covid"];
    let cases = [
        (
            "path,label\ncovid-1.png,flu\n",
            "line 2: unknown label `flu`",
        ),
        ("path,label\nmissing.png,covid\n", "missing.png"),
        ("path,label\nnot-an-image.png,covid\n", "not-an-image.png"),
        (
            "file,class\ncovid-1.png,covid\n",
            "header must name `path` and `label`",
        ),
        ("path,label\n", "lists no images"),
        (
            "path,label,patient_id\ncovid-1.png,covid,\n",
            "line 2: missing `patient_id`",
        ),
    ];
    for (csv, expected) in cases {
        let path = folder(dir.path(), csv);
        let err = load_folder(&path, &classes, &spec())
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{csv:?}: {err}");
        assert!(err.contains("labels.csv"), "{err}");
    }
    let err = load_folder(&dir.path().join("nope.csv"), &classes, &spec())
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.csv"), "{err}");
}
