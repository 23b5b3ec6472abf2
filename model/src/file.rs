//! The model file: one versioned, self-describing document (see `docs/model-format.md`).
//!
//! On disk a model is the magic line `HEXRAY-MODEL <version>` followed by a JSON document. JSON
//! keeps the file readable and diffable; the magic line lets every tool reject a foreign file
//! before parsing it. Loading always re-validates shapes and numbers and recompiles the circuit,
//! then checks that the stored encoding is exactly the one the compiler derives, so a file that
//! was edited by hand can never smuggle in an encoding that overflows.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::circuit::{compile, Circuit, Encoding};
use crate::error::ModelError;
use crate::network::{Network, MAX_LOGIT_BOUND_LOG2};
use crate::parameters::FheParameters;

/// First token of every model file.
pub const MAGIC: &str = "HEXRAY-MODEL";
/// The format version this build reads and writes.
/// Version 2 encodes inputs in the public unit and outputs around a common origin, so that the
/// client spec holds nothing derived from the weights. Version 3 adds the borderline margin,
/// which the client spec publishes.
pub const FORMAT_VERSION: u32 = 3;
/// Largest model file accepted, so a hostile file cannot make a loader allocate without bound.
pub const MAX_MODEL_BYTES: usize = 64 << 20;

/// A compiled model: the network, the TFHE parameters it was compiled for and the resulting
/// circuit encoding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompiledModel {
    /// Short identifier, e.g. `pneumonia-a`.
    pub name: String,
    /// Version of this model's weights, chosen by whoever trained it.
    pub model_version: String,
    /// Free text for people: what the model detects and on what data it was trained.
    pub description: String,
    /// The trained network, weights included.
    pub network: Network,
    /// The TFHE parameter set the circuit was compiled for.
    pub fhe: FheParameters,
    /// The encoding the compiler chose; loading recompiles and requires exactly this.
    pub encoding: Encoding,
    /// The decision margin, in shown logits, at or below which a result is borderline: another
    /// encryption of the same image could name another class. The model's owner measures it
    /// with the noisy simulator ([`crate::borderline::measure`]); loading cannot recompute it
    /// without images, so it only checks that it is a margin at all.
    pub borderline_margin: f64,
}

impl CompiledModel {
    /// Compiles `network` for `fhe` and wraps it as a model file, with the borderline margin
    /// measured on its circuit ([`crate::borderline::measure`]).
    pub fn build(
        name: &str,
        model_version: &str,
        description: &str,
        network: Network,
        fhe: FheParameters,
        borderline_margin: f64,
    ) -> Result<Self, ModelError> {
        let circuit = compile(&network, &fhe)?;
        let model = CompiledModel {
            name: name.to_owned(),
            model_version: model_version.to_owned(),
            description: description.to_owned(),
            encoding: circuit.encoding(),
            network,
            fhe,
            borderline_margin,
        };
        check_borderline_margin("borderline_margin", model.borderline_margin)?;
        Ok(model)
    }

    /// Serialises to the on-disk form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{MAGIC} {FORMAT_VERSION}\n").into_bytes();
        serde_json::to_writer(&mut out, self).expect("a model always serialises to JSON");
        out.push(b'\n');
        out
    }

    /// Parses and fully validates a model file, returning it with its compiled circuit.
    ///
    /// ```
    /// use hexray_model::CompiledModel;
    /// # let (model, _) = hexray_model::testing::tiny_model();
    /// let bytes = model.to_bytes();
    /// let (read, circuit) = CompiledModel::from_bytes(&bytes).unwrap();
    /// assert_eq!(read, model);
    /// assert_eq!(circuit.output_len(), 2);
    /// // A file whose stored encoding is not what its network compiles to is refused.
    /// let edited = String::from_utf8(bytes).unwrap().replacen("\"margin\":", "\"margin\":1", 1);
    /// assert!(CompiledModel::from_bytes(edited.as_bytes()).is_err());
    /// ```
    pub fn from_bytes(bytes: &[u8]) -> Result<(Self, Circuit), ModelError> {
        if bytes.len() > MAX_MODEL_BYTES {
            return Err(ModelError::TooLarge {
                size: bytes.len(),
                limit: MAX_MODEL_BYTES,
            });
        }
        let magic_error = || ModelError::Magic {
            expected: format!("{MAGIC} {FORMAT_VERSION}"),
        };
        let newline = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(magic_error)?;
        let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| magic_error())?;
        let version = header
            .strip_prefix(MAGIC)
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or_else(magic_error)?;
        if version != FORMAT_VERSION.to_string() {
            return Err(ModelError::Version {
                found: version.chars().take(32).collect(),
                supported: FORMAT_VERSION,
            });
        }
        let mut json = serde_json::Deserializer::from_slice(&bytes[newline + 1..]);
        let model: CompiledModel = serde_path_to_error::deserialize(&mut json)
            .map_err(|e| ModelError::field(e.path().to_string(), e.inner().to_string()))?;
        json.end()
            .map_err(|e| ModelError::field("(end of file)", e.to_string()))?;
        let circuit = model.verify()?;
        Ok((model, circuit))
    }

    /// Checks the network, recompiles it and compares the stored encoding with the compiler's.
    fn verify(&self) -> Result<Circuit, ModelError> {
        check_borderline_margin("borderline_margin", self.borderline_margin)?;
        let circuit = compile(&self.network, &self.fhe)?;
        let expected = circuit.encoding();
        if expected.stages.len() != self.encoding.stages.len() {
            return Err(ModelError::field(
                "encoding.stages",
                format!(
                    "{} stages stored, the network compiles to {}",
                    self.encoding.stages.len(),
                    expected.stages.len()
                ),
            ));
        }
        for (s, (stored, derived)) in self
            .encoding
            .stages
            .iter()
            .zip(&expected.stages)
            .enumerate()
        {
            let mismatch = |what: &str| {
                ModelError::field(
                    format!("encoding.stages[{s}].{what}"),
                    "differs from what the compiler derives for this network and parameter set",
                )
            };
            if stored.delta != derived.delta {
                return Err(mismatch("delta"));
            }
            if stored.margin != derived.margin {
                return Err(mismatch("margin"));
            }
            if stored.acc_min != derived.acc_min {
                return Err(mismatch("acc_min"));
            }
            if stored.acc_max != derived.acc_max {
                return Err(mismatch("acc_max"));
            }
            let close = stored.sigma.len() == derived.sigma.len()
                && stored
                    .sigma
                    .iter()
                    .zip(&derived.sigma)
                    .all(|(a, b)| (a - b).abs() <= 1e-9 * b.abs());
            if !close {
                return Err(mismatch("sigma"));
            }
        }
        Ok(circuit)
    }

    /// SHA-256 of the model file ([`CompiledModel::to_bytes`]), in hex: the fingerprint a client
    /// checks, so that it knows which weights answered it without seeing them.
    pub fn fingerprint(&self) -> String {
        crate::hex::encode(&Sha256::digest(self.to_bytes()))
    }
}

/// Checks that `margin` can be a borderline margin: a finite number of logits, at least 0 and
/// at most the widest difference two logits within the largest declared bound can have.
pub(crate) fn check_borderline_margin(field: &str, margin: f64) -> Result<(), ModelError> {
    let widest = (1u64 << (MAX_LOGIT_BOUND_LOG2 + 1)) as f64;
    if !(0.0..=widest).contains(&margin) {
        return Err(ModelError::field(
            field,
            format!("must be a decision margin from 0 to {widest} logits"),
        ));
    }
    Ok(())
}
