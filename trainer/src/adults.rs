//! The small adult set a model also learns from (the 44 Actualmed X-rays): its images as the
//! client preprocesses them and, when a recipe renders them again, the decoded files, so that
//! each repeat of an image in a training set can be a new rendering of its file.

use std::path::Path;

use hexray_model::network::InputSpec;
use image::GrayImage;

use crate::augment::full_resolution_copies;
use crate::data::{load_folder, read_folder, DataError, Dataset};

/// The longest side the originals are kept at: above the largest rendering (`augment`'s 448
/// pixels), far below a detector's 3000.
const ORIGINAL_SIDE: u32 = 512;

/// A folder dataset's images, and, for renderings, its decoded files in the same order.
pub struct AdultImages {
    set: Dataset,
    originals: Option<Vec<GrayImage>>,
}

impl AdultImages {
    /// Reads the folder `csv` lists (its `classes`, normal first, as [`load_folder`] numbers
    /// them), and with `renderings` keeps the decoded files too.
    pub fn load(
        csv: &Path,
        classes: &[&str],
        spec: &InputSpec,
        renderings: bool,
    ) -> Result<Self, DataError> {
        let set = load_folder(csv, classes, spec)?;
        let originals = match renderings {
            true => Some(read_folder(csv, classes, ORIGINAL_SIDE)?),
            false => None,
        };
        Ok(AdultImages { set, originals })
    }

    /// The same images for a two-class screen: every class but the first (normal) is class 1,
    /// abnormal.
    pub fn abnormal_as_one(mut self) -> Self {
        self.set.labels.iter_mut().for_each(|l| *l = (*l).min(1));
        self
    }

    /// The images as the client preprocesses them, with their labels and patients.
    pub fn set(&self) -> &Dataset {
        &self.set
    }

    /// Whether [`AdultImages::repeated`] renders the files again.
    pub fn renders(&self) -> bool {
        self.originals.is_some()
    }

    /// The images at `picks`, in that order, `repeats` times over: the same preprocessed
    /// images again or, when the files were kept, each time a new full-resolution rendering of
    /// the file ([`full_resolution_copies`]: another size, aspect, margins, exposure, PNG or
    /// JPEG, brought back through the client's preprocessing; drawn with `seed`). Another
    /// site's files differ in exactly those ways, so a model learns the X-rays rather than a
    /// few exact pictures.
    pub fn repeated(
        &self,
        picks: &[usize],
        repeats: usize,
        (seed, spec): (u64, &InputSpec),
    ) -> Result<Dataset, DataError> {
        let Some(originals) = &self.originals else {
            return Ok(self
                .set
                .subset(&[])
                .joined(&self.set.subset(picks), repeats));
        };
        let images: Vec<GrayImage> = picks.iter().map(|&i| originals[i].clone()).collect();
        let labels: Vec<usize> = picks.iter().map(|&i| self.set.labels[i]).collect();
        full_resolution_copies(&images, &labels, spec, repeats, seed)
    }
}
