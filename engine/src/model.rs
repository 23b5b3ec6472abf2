//! A model as the evaluator holds it: the file, its compiled circuit and its parameter set.

use std::path::Path;

use hexray_crypto::{CryptoError, ParameterSet};
use hexray_model::{Circuit, ClientSpec, CompiledModel, ModelError};
use thiserror::Error;

/// Why a model file cannot be served, naming the file.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file cannot be read.
    #[error("cannot read model file {path}: {source}")]
    Io {
        /// The file, as given.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not a valid model (format, checks, compilation).
    #[error("model file {path}: {source}")]
    Model {
        /// The file, as given.
        path: String,
        /// What is wrong with it.
        source: ModelError,
    },
    /// The model was compiled for a parameter set this build does not run.
    #[error("model file {path}: {source}")]
    Parameters {
        /// The file, as given.
        path: String,
        /// The parameter-set refusal.
        source: CryptoError,
    },
}

/// A validated model ready for encrypted evaluation. Its parts are read-only: the circuit and
/// the client spec are derived from the file once, at loading, and must stay its own.
pub struct LoadedModel {
    model: CompiledModel,
    circuit: Circuit,
    parameter_set: ParameterSet,
    spec: ClientSpec,
}

impl LoadedModel {
    /// The model file as loaded: weights included, so it stays on the server.
    pub fn model(&self) -> &CompiledModel {
        &self.model
    }

    /// The compiled circuit the engine evaluates.
    pub fn circuit(&self) -> &Circuit {
        &self.circuit
    }

    /// The TFHE parameter set the model was compiled for; keys and images must match it.
    pub fn parameter_set(&self) -> ParameterSet {
        self.parameter_set
    }

    /// The public part, all a client gets.
    pub fn spec(&self) -> &ClientSpec {
        &self.spec
    }

    /// Reads and fully checks a model file's bytes; `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self, LoadError> {
        let (model, circuit) =
            CompiledModel::from_bytes(bytes).map_err(|source| LoadError::Model {
                path: origin.into(),
                source,
            })?;
        let parameter_set =
            ParameterSet::of_model(&model.fhe).map_err(|source| LoadError::Parameters {
                path: origin.into(),
                source,
            })?;
        Ok(LoadedModel {
            spec: ClientSpec::of(&model, &circuit),
            model,
            circuit,
            parameter_set,
        })
    }

    /// Reads and fully checks the model file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
            path: origin.clone(),
            source,
        })?;
        Self::from_bytes(&bytes, &origin)
    }
}
