//! Datasets for training and evaluation.
//!
//! Every image goes through [`hexray_model::preprocess`], the function the browser client uses,
//! so the trainer sees exactly the integers the encrypted model will receive. Every error names
//! the file it comes from, and the array key or CSV line where there is one.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use hexray_model::network::InputSpec;
use hexray_model::preprocess::{decode, preprocess, preprocess_luma, thumbnail};
use image::GrayImage;
use ndarray::{Array2, Array3, Axis};
use ndarray_npy::NpzReader;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DataError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}: array `{key}`: {reason}")]
    Array {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{path}, line {line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{image} (listed in {csv}): {reason}")]
    Image {
        csv: PathBuf,
        image: PathBuf,
        reason: String,
    },
    #[error("cannot split: {0}")]
    Split(String),
    #[error("cannot augment {what}: {reason}")]
    Augment { what: String, reason: String },
}

/// Preprocessed images with their class labels and, where known, patient ids.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// One `[1][height][width]` tensor of input integers per image.
    pub images: Vec<Array3<i64>>,
    /// Class index per image.
    pub labels: Vec<usize>,
    /// Patient id per image, for splits that keep a patient on one side.
    pub patients: Option<Vec<String>>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        Dataset {
            images: indices.iter().map(|&i| self.images[i].clone()).collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            patients: self
                .patients
                .as_ref()
                .map(|p| indices.iter().map(|&i| p[i].clone()).collect()),
        }
    }

    /// Indices that draw every class as often as the largest: each smaller class's images are
    /// repeated in turn until it has as many, so that a class with fewer images (18 adult
    /// normals beside 26 COVID-19 X-rays) is not a prior the model learns.
    pub fn class_balanced_indices(&self) -> Vec<usize> {
        let classes = self.labels.iter().max().map_or(0, |&c| c + 1);
        let members: Vec<Vec<usize>> = (0..classes)
            .map(|c| (0..self.len()).filter(|&i| self.labels[i] == c).collect())
            .collect();
        let largest = members.iter().map(Vec::len).max().unwrap_or(0);
        members
            .iter()
            .filter(|m| !m.is_empty())
            .flat_map(|m| m.iter().copied().cycle().take(largest))
            .collect()
    }

    /// These images followed by `repeats` copies of `other`'s: how a small set is given
    /// weight beside a large one (44 adult X-rays beside thousands of children's) without a
    /// weighted loss. Patient ids are dropped, since splits by patient are made before joining.
    pub fn joined(&self, other: &Dataset, repeats: usize) -> Dataset {
        let mut joined = Dataset {
            patients: None,
            ..self.clone()
        };
        for _ in 0..repeats {
            joined.images.extend(other.images.iter().cloned());
            joined.labels.extend(&other.labels);
        }
        joined
    }
}

/// Reads split `split` (`train`, `val` or `test`) of a MedMNIST `.npz` file: arrays
/// `{split}_images` (n × h × w, u8) and `{split}_labels` (n × 1, u8).
pub fn load_npz(path: &Path, split: &str, spec: &InputSpec) -> Result<Dataset, DataError> {
    let (images, labels) = read_npz(path, split)?;
    let images = images
        .into_iter()
        .enumerate()
        .map(|(i, luma)| {
            preprocess_luma(luma, spec).map_err(|e| DataError::Array {
                path: path.into(),
                key: format!("{split}_images"),
                reason: format!("image {i}: {e}"),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Dataset {
        images,
        labels,
        patients: None,
    })
}

/// The images of a MedMNIST split as they are stored, before preprocessing, with their labels:
/// what [`crate::augment::full_resolution_copy`] re-renders.
pub fn read_npz(path: &Path, split: &str) -> Result<(Vec<GrayImage>, Vec<usize>), DataError> {
    let file = File::open(path).map_err(|e| file_error(path, e))?;
    let mut npz = NpzReader::new(file)
        .map_err(|e| file_error(path, format!("not a readable .npz file: {e}")))?;
    let array_error = |key: &str, reason: String| DataError::Array {
        path: path.into(),
        key: key.into(),
        reason,
    };
    let images_key = format!("{split}_images");
    let labels_key = format!("{split}_labels");
    let images: Array3<u8> = npz
        .by_name(&images_key)
        .map_err(|e| array_error(&images_key, format!("{e} (expected n × height × width u8)")))?;
    let labels: Array2<u8> = npz
        .by_name(&labels_key)
        .map_err(|e| array_error(&labels_key, format!("{e} (expected n × 1 u8)")))?;
    if labels.ncols() != 1 || labels.nrows() != images.len_of(Axis(0)) {
        return Err(array_error(
            &labels_key,
            format!(
                "shape {:?} does not match {} images",
                labels.dim(),
                images.len_of(Axis(0))
            ),
        ));
    }
    let images = images
        .axis_iter(Axis(0))
        .map(|img| {
            let (h, w) = img.dim();
            GrayImage::from_raw(w as u32, h as u32, img.iter().copied().collect())
                .expect("an h × w array has h·w pixels")
        })
        .collect();
    Ok((images, labels.iter().map(|&l| l as usize).collect()))
}

/// Reads an image folder described by `csv` (`path,label[,patient_id]`, with a header; paths
/// relative to the CSV's folder). `classes` gives each label's index.
pub fn load_folder(csv: &Path, classes: &[&str], spec: &InputSpec) -> Result<Dataset, DataError> {
    let entries = list_folder(csv, classes)?;
    let mut dataset = Dataset {
        images: Vec::with_capacity(entries.len()),
        labels: Vec::with_capacity(entries.len()),
        patients: entries[0].patient.as_ref().map(|_| Vec::new()),
    };
    for entry in entries {
        let bytes = entry.read(csv)?;
        let image = preprocess(&bytes, spec).map_err(|e| entry.error(csv, e.to_string()))?;
        dataset.images.push(image);
        dataset.labels.push(entry.class);
        if let (Some(patients), Some(patient)) = (dataset.patients.as_mut(), entry.patient) {
            patients.push(patient);
        }
    }
    Ok(dataset)
}

/// The images `csv` lists, in [`load_folder`]'s order, decoded as the client decodes them and
/// shrunk to at most `max_side` pixels a side: the originals that
/// [`full_resolution_copies`](crate::augment::full_resolution_copies) renders again, each time
/// as another file. `max_side` only bounds the work: renderings are at most 448 pixels a side.
pub fn read_folder(
    csv: &Path,
    classes: &[&str],
    max_side: u32,
) -> Result<Vec<GrayImage>, DataError> {
    list_folder(csv, classes)?
        .iter()
        .map(|entry| {
            let decoded = decode(&entry.read(csv)?).map_err(|e| entry.error(csv, e.to_string()))?;
            Ok(thumbnail(&decoded.luma, max_side))
        })
        .collect()
}

/// One image of a folder dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct FolderEntry {
    /// The file, relative to the current directory.
    pub image: PathBuf,
    /// Index of its label in the classes given.
    pub class: usize,
    pub patient: Option<String>,
}

impl FolderEntry {
    /// The file's bytes.
    pub fn read(&self, csv: &Path) -> Result<Vec<u8>, DataError> {
        std::fs::read(&self.image).map_err(|e| self.error(csv, e.to_string()))
    }

    /// An error about this image, naming it and its CSV.
    pub fn error(&self, csv: &Path, reason: String) -> DataError {
        DataError::Image {
            csv: csv.into(),
            image: self.image.clone(),
            reason,
        }
    }
}

/// The images `csv` lists, without reading them (see [`load_folder`] for the format). Patient
/// ids are given for every image or for none, as the header says.
pub fn list_folder(csv: &Path, classes: &[&str]) -> Result<Vec<FolderEntry>, DataError> {
    let root = csv.parent().unwrap_or(Path::new("."));
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_path(csv)
        .map_err(|e| file_error(csv, e))?;
    let header = reader.headers().map_err(|e| file_error(csv, e))?.clone();
    let column = |name: &str| header.iter().position(|h| h == name);
    let (Some(path_col), Some(label_col)) = (column("path"), column("label")) else {
        return Err(DataError::Line {
            path: csv.into(),
            line: 1,
            reason: "header must name `path` and `label`".into(),
        });
    };
    let patient_col = column("patient_id");
    let mut entries = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let line_error = |reason: String| DataError::Line {
            path: csv.into(),
            line,
            reason,
        };
        let record = record.map_err(|e| line_error(e.to_string()))?;
        let field = |col: usize, name: &str| {
            record
                .get(col)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| line_error(format!("missing `{name}`")))
        };
        let label = field(label_col, "label")?;
        let class = classes.iter().position(|c| *c == label).ok_or_else(|| {
            line_error(format!(
                "unknown label `{label}` (expected one of {})",
                classes.join(", ")
            ))
        })?;
        entries.push(FolderEntry {
            image: root.join(field(path_col, "path")?),
            class,
            patient: patient_col
                .map(|col| field(col, "patient_id").map(str::to_owned))
                .transpose()?,
        });
    }
    if entries.is_empty() {
        return Err(file_error(csv, "lists no images"));
    }
    Ok(entries)
}

/// `k` folds of image indices for cross-validation, deterministic in `seed`. With patient ids,
/// every image of a patient lands in the same fold, so no patient is in both training and
/// test data; otherwise images are dealt out one by one.
pub fn folds(dataset: &Dataset, k: usize, seed: u64) -> Result<Vec<Vec<usize>>, DataError> {
    let mut groups: Vec<Vec<usize>> = match &dataset.patients {
        Some(patients) => {
            let mut by_patient: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
            for (i, p) in patients.iter().enumerate() {
                by_patient.entry(p).or_default().push(i);
            }
            by_patient.into_values().collect()
        }
        None => (0..dataset.len()).map(|i| vec![i]).collect(),
    };
    if k < 2 || groups.len() < k {
        return Err(DataError::Split(format!(
            "{} patients or images cannot make {k} folds",
            groups.len()
        )));
    }
    groups.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    // Largest groups first, each into the currently smallest fold: balanced fold sizes.
    groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
    let mut folds = vec![Vec::new(); k];
    for group in groups {
        let smallest = (0..k).min_by_key(|&f| folds[f].len()).expect("k ≥ 2");
        folds[smallest].extend(group);
    }
    Ok(folds)
}

/// Splits `indices` of `dataset` into training and validation indices by patient: one of `k`
/// patient folds of them validates, the rest trains. Model selection then never sees a patient
/// it was trained on.
pub fn hold_out(
    dataset: &Dataset,
    indices: &[usize],
    k: usize,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>), DataError> {
    let inner = folds(&dataset.subset(indices), k, seed)?;
    let validation: Vec<usize> = inner[0].iter().map(|&i| indices[i]).collect();
    let train = inner[1..].iter().flatten().map(|&i| indices[i]).collect();
    Ok((train, validation))
}

/// Patients (or, without ids, images) that appear in more than one of `folds`: empty for
/// folds made by [`folds`].
pub fn shared_patients(dataset: &Dataset, folds: &[Vec<usize>]) -> BTreeSet<String> {
    let Some(patients) = &dataset.patients else {
        return BTreeSet::new();
    };
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut shared = BTreeSet::new();
    for (f, fold) in folds.iter().enumerate() {
        for &i in fold {
            if *seen.entry(&patients[i]).or_insert(f) != f {
                shared.insert(patients[i].clone());
            }
        }
    }
    shared
}

fn file_error(path: &Path, reason: impl ToString) -> DataError {
    DataError::File {
        path: path.into(),
        reason: reason.to_string(),
    }
}
