//! The models a server offers: every `*.hexray` file of a directory, or the bundled ones, each
//! with its model card where it has one.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use thiserror::Error;

use hexray_crypto::{CompressedServerKey, CryptoError, EncryptedImage};
use hexray_model::bulk_spec::BulkSpec;
use hexray_model::packed::{self, PackedCircuit};

use super::BodyLimits;
use hexray_engine::{LoadError, LoadedModel};

/// The models shipped inside the binary, so a fresh install serves something useful; the
/// first is the default. Each comes with its model card (`docs/model-cards/<id>.md`): a bundled
/// model without one does not build.
const BUNDLED: [(&str, &[u8], &str); 4] = [
    (
        "screen-mlp-32",
        include_bytes!("../../../models/screen-mlp-32.hexray"),
        include_str!("../../../docs/model-cards/screen-mlp-32.md"),
    ),
    (
        "covid-19-mlp-32",
        include_bytes!("../../../models/covid-19-mlp-32.hexray"),
        include_str!("../../../docs/model-cards/covid-19-mlp-32.md"),
    ),
    (
        "pneumonia-mlp-64",
        include_bytes!("../../../models/pneumonia-mlp-64.hexray"),
        include_str!("../../../docs/model-cards/pneumonia-mlp-64.md"),
    ),
    (
        "pneumonia-a",
        include_bytes!("../../../models/pneumonia-a.hexray"),
        include_str!("../../../docs/model-cards/pneumonia-a.md"),
    ),
];

/// The file beside a model file `<id>.hexray` that holds its model card.
pub const CARD_SUFFIX: &str = ".card.md";

/// A model as served: its id, the loaded circuit, its bulk circuit and its model card. The
/// file itself never leaves the server; clients get [`LoadedModel::spec`], the bulk spec and
/// the card.
pub struct ServedModel {
    pub id: String,
    pub loaded: LoadedModel,
    /// The network compiled for the bulk path (`docs/bulk.md`), when it takes it: quadratic
    /// activations in one hidden layer, values inside the plaintext modulus.
    pub packed: Option<PackedCircuit>,
    /// The model card (Markdown): what the model is for, its data and population, its measured
    /// figures and its failure modes. Bundled models always have one; a model read from a
    /// directory has the `<id>.card.md` beside its file, if there is one.
    pub card: Option<String>,
}

/// What `GET /api/v1/models` says about a model.
#[derive(Serialize)]
pub struct ModelSummary<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub version: &'a str,
    pub description: &'a str,
    pub classes: &'a [String],
    pub bootstraps: usize,
    pub inputs: usize,
    pub parameter_set: &'static str,
    pub fingerprint: &'a str,
    /// Whether this server takes bulk jobs for the model (false for every model with
    /// `--bulk-queue-limit 0`); its bulk spec is at `GET /api/v1/models/{id}/bulk-spec`.
    pub bulk: bool,
    /// Seconds an image takes on this server, given its seconds per bootstrap.
    pub expected_seconds_per_image: f64,
    /// The model card's summary (see [`card_summary`]); the whole card is at
    /// `GET /api/v1/models/{id}/card`. `None` for a model without a card.
    pub card_summary: Option<&'a str>,
}

/// A model card's summary: the paragraph under its `## Summary` heading, which says in a few
/// sentences what the model is for and where it fails.
///
/// ```
/// use hexray_evaluator::server::models::card_summary;
///
/// let card = "# Model card: `m`\n\n## Summary\n\nFor adults.\nNot children.\n\n## Data\n";
/// assert_eq!(card_summary(card), Some("For adults.\nNot children."));
/// assert_eq!(card_summary("# A card without one\n"), None);
/// ```
pub fn card_summary(card: &str) -> Option<&str> {
    let (_, after) = card.split_once("\n## Summary\n")?;
    let paragraph = after.trim_start_matches('\n');
    let end = paragraph.find("\n\n").unwrap_or(paragraph.len());
    Some(paragraph[..end].trim()).filter(|s| !s.is_empty())
}

impl ServedModel {
    /// A served model, with its network compiled for the bulk path when it fits.
    pub fn new(id: &str, loaded: LoadedModel, card: Option<String>) -> Self {
        let packed = packed::compile(
            &loaded.model().network,
            &hexray_bulk::parameters::contract(),
        );
        if let Err(reason) = &packed {
            log::info!("model {id} does not take the bulk path: {reason}");
        }
        ServedModel {
            id: id.to_owned(),
            packed: packed.ok(),
            loaded,
            card,
        }
    }

    /// The bulk spec, for a model that takes the bulk path.
    pub fn bulk_spec(&self) -> Option<BulkSpec> {
        let circuit = self.packed.as_ref()?;
        Some(BulkSpec::of(self.loaded.model(), circuit))
    }

    /// The model as `GET /api/v1/models` lists it; `bulk`: whether this node serves its bulk
    /// path ([`AppState::serves_bulk`](super::AppState::serves_bulk)).
    pub fn summary(&self, seconds_per_bootstrap: f64, bulk: bool) -> ModelSummary<'_> {
        let model = &self.loaded.model();
        ModelSummary {
            id: &self.id,
            name: &model.name,
            version: &model.model_version,
            description: &model.description,
            classes: &model.network.output.classes,
            bootstraps: self.loaded.circuit().bootstrap_count(),
            inputs: self.loaded.circuit().input_len(),
            parameter_set: self.loaded.parameter_set().name(),
            fingerprint: &self.loaded.spec().fingerprint,
            bulk,
            expected_seconds_per_image: self.loaded.circuit().bootstrap_count() as f64
                * seconds_per_bootstrap,
            card_summary: self.card.as_deref().and_then(card_summary),
        }
    }
}

/// The models, the default first: clients that do not choose take the first one listed.
pub struct Models(Vec<Arc<ServedModel>>);

/// The default model named at start (`--default-model`) is not among those served.
#[derive(Debug, Error)]
#[error("the default model `{id}` is not among the served models ({served})")]
pub struct UnknownDefault {
    pub id: String,
    /// The served ids, comma-separated, so the operator sees what to name.
    pub served: String,
}

/// The bundled default model (the first of the bundled models): what the command line reads when it
/// is given no model file, wherever the binary was copied.
pub fn bundled_default() -> Result<LoadedModel, LoadError> {
    let (id, file, _) = BUNDLED[0];
    LoadedModel::from_bytes(file, &format!("bundled model {id}"))
}

impl Models {
    /// The bundled models.
    pub fn bundled() -> Result<Self, LoadError> {
        BUNDLED
            .iter()
            .map(|&(id, file, card)| {
                let loaded = LoadedModel::from_bytes(file, &format!("bundled model {id}"))?;
                Ok(Arc::new(ServedModel::new(
                    id,
                    loaded,
                    Some(card.to_owned()),
                )))
            })
            .collect::<Result<_, _>>()
            .map(Models)
    }

    /// Every `*.hexray` file in `dir`, by file stem, in the order of their ids, each with the
    /// model card beside it (`<id>.card.md`) if there is one. A file that fails to load stops
    /// the server rather than being skipped, so a typo never silently drops a model; an empty
    /// directory is an error too.
    pub fn from_dir(dir: &Path) -> Result<Self, LoadError> {
        let io = |source| LoadError::Io {
            path: dir.display().to_string(),
            source,
        };
        let mut models = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_none_or(|e| e != "hexray") {
                continue;
            }
            let Some(id) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let file = std::fs::read(&path).map_err(|source| LoadError::Io {
                path: path.display().to_string(),
                source,
            })?;
            let loaded = LoadedModel::from_bytes(&file, &path.display().to_string())?;
            let card_path = dir.join(format!("{id}{CARD_SUFFIX}"));
            let card = match std::fs::read_to_string(&card_path) {
                Ok(card) => Some(card),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => {
                    return Err(LoadError::Io {
                        path: card_path.display().to_string(),
                        source,
                    })
                }
            };
            models.push(Arc::new(ServedModel::new(id, loaded, card)));
        }
        models.sort_by(|a, b| a.id.cmp(&b.id));
        if models.is_empty() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the directory holds no *.hexray model file",
            )));
        }
        Ok(Models(models))
    }

    /// The same models with `id` first, so that clients that do not choose get it: a hospital
    /// whose clinicians mostly read adult COVID-19 films can make that model the default
    /// without renaming files.
    ///
    /// ```
    /// use hexray_evaluator::server::models::Models;
    ///
    /// let models = Models::bundled()?.with_default("covid-19-mlp-32")?;
    /// assert_eq!(models.iter().next().unwrap().id, "covid-19-mlp-32");
    /// assert_eq!(models.len(), Models::bundled()?.len());
    /// let unknown = Models::bundled()?.with_default("chest").err().unwrap();
    /// assert!(unknown.to_string().contains("(screen-mlp-32, covid-19-mlp-32,"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_default(mut self, id: &str) -> Result<Self, UnknownDefault> {
        let at = self
            .0
            .iter()
            .position(|m| m.id == id)
            .ok_or_else(|| UnknownDefault {
                id: id.to_owned(),
                served: self
                    .iter()
                    .map(|m| m.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let default = self.0.remove(at);
        self.0.insert(0, default);
        Ok(self)
    }

    /// The largest key and job bodies the served models need, for `batch_images` per job.
    pub fn body_limits(&self, batch_images: usize) -> Result<BodyLimits, CryptoError> {
        // A batch body adds a 4-byte length per blob and a short header.
        let image = self
            .iter()
            .map(|m| {
                EncryptedImage::serialized_size(
                    m.loaded.parameter_set(),
                    m.loaded.spec().input_len(),
                )
                .map(|size| size + 4)
            })
            .try_fold(0, |max, size| size.map(|size| size.max(max)))?;
        let key = self
            .iter()
            .map(|m| CompressedServerKey::serialized_size(m.loaded.parameter_set()))
            .max()
            .unwrap_or(0);
        Ok(BodyLimits {
            key,
            job: batch_images * image + 64,
        })
    }

    pub fn get(&self, id: &str) -> Option<&Arc<ServedModel>> {
        self.0.iter().find(|m| m.id == id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<ServedModel>> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundled_file() -> Vec<u8> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        std::fs::read(repo.join("models/pneumonia-mlp-64.hexray")).unwrap()
    }

    #[test]
    fn a_directory_serves_its_model_files_by_name_and_skips_other_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("chest.hexray"), bundled_file()).unwrap();
        std::fs::write(dir.path().join("README.txt"), "not a model").unwrap();
        let models = Models::from_dir(dir.path()).unwrap();
        let ids: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["chest"]);
        assert_eq!(models.get("chest").unwrap().card, None, "no card beside it");
    }

    #[test]
    fn a_directory_model_has_the_card_beside_it_and_every_bundled_model_has_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("chest.hexray"), bundled_file()).unwrap();
        let card = "# Model card\n\n## Summary\n\nFor testing only.\n";
        std::fs::write(dir.path().join("chest.card.md"), card).unwrap();
        let models = Models::from_dir(dir.path()).unwrap();
        let chest = models.get("chest").unwrap();
        assert_eq!(chest.card.as_deref(), Some(card));
        assert_eq!(
            chest.summary(0.03, true).card_summary,
            Some("For testing only.")
        );
        for model in Models::bundled().unwrap().iter() {
            let summary = model.summary(0.03, true).card_summary;
            assert!(summary.is_some_and(|s| s.len() > 40), "{}", model.id);
        }
    }

    #[test]
    fn a_bad_model_file_stops_the_start_with_its_name_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good.hexray"), bundled_file()).unwrap();
        let truncated = &bundled_file()[..4000];
        std::fs::write(dir.path().join("broken.hexray"), truncated).unwrap();
        let err = Models::from_dir(dir.path())
            .err()
            .expect("a bad file is refused");
        assert!(matches!(err, LoadError::Model { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("broken.hexray"), "{message}");

        std::fs::write(dir.path().join("broken.hexray"), b"HEXRAY-MODEL 1\n{}").unwrap();
        let message = Models::from_dir(dir.path()).err().unwrap().to_string();
        assert!(message.contains("version 1"), "{message}");
    }

    #[test]
    fn a_directory_without_models_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Models::from_dir(dir.path()).err().unwrap().to_string();
        assert!(err.contains("no *.hexray model file"), "{err}");
        let missing = dir.path().join("missing");
        assert!(Models::from_dir(&missing).is_err());
    }
}
