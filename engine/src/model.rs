//! A model as the evaluator holds it: the file, its compiled circuit and its parameter set.

use std::path::Path;

use hexray_crypto::{CryptoError, ParameterSet};
use hexray_model::{Circuit, ClientSpec, CompiledModel, ModelError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("model file {path}: {source}")]
    Model { path: String, source: ModelError },
    #[error("model file {path}: {source}")]
    Parameters { path: String, source: CryptoError },
}

/// A validated model ready for encrypted evaluation.
pub struct LoadedModel {
    pub model: CompiledModel,
    pub circuit: Circuit,
    pub parameter_set: ParameterSet,
    /// The public part, all a client gets.
    pub spec: ClientSpec,
}

impl LoadedModel {
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self, LoadError> {
        let (model, circuit) =
            CompiledModel::from_bytes(bytes).map_err(|source| LoadError::Model {
                path: origin.into(),
                source,
            })?;
        let parameter_set =
            ParameterSet::from_name(&model.fhe.name).map_err(|source| LoadError::Parameters {
                path: origin.into(),
                source,
            })?;
        // The stored noise figures must be the ones TFHE-rs's formulas give for this set.
        if model.fhe != parameter_set.fhe_parameters() {
            return Err(LoadError::Model {
                path: origin.into(),
                source: ModelError::Field {
                    field: "fhe".into(),
                    reason: format!(
                        "does not match TFHE-rs's figures for {}",
                        parameter_set.name()
                    ),
                },
            });
        }
        Ok(LoadedModel {
            spec: ClientSpec::of(&model, &circuit),
            model,
            circuit,
            parameter_set,
        })
    }

    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
            path: origin.clone(),
            source,
        })?;
        Self::from_bytes(&bytes, &origin)
    }
}
