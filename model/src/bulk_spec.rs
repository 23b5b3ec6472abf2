//! The bulk spec: the public part of a model for the bulk path, and all a bulk client gets.
//!
//! Like the [client spec](crate::client_spec), it says what to do to an image, how to pack
//! and encrypt its integers and how to read the answers, and holds no weights, biases,
//! coefficients or ranges. Outputs count logits in the one public unit of every bulk circuit
//! (2^-[`LOGIT_UNIT_LOG2`]), so two models that differ only in their weights have bulk specs
//! that differ only in their fingerprint.
//!
//! **What the client learns.** A bulk result is exact: BFV adds no noise to it. The client
//! rounds each logit to [`LOGIT_STEP`] before it shows or stores anything, as the interactive
//! client does. The bulk path has no borderline marking from encryption, because another
//! encryption of the same image gives the same result.
//!
//! ```
//! use hexray_model::bulk_spec::BulkSpec;
//! # let model = hexray_model::CompiledModel::build("tiny", "1", "test",
//! #     hexray_model::testing::tiny_quadratic_network(), hexray_model::testing::test_fhe(), 1.0).unwrap();
//! let circuit = hexray_model::packed::compile(&model.network, &hexray_model::testing::test_bulk())?;
//! let spec = BulkSpec::of(&model, &circuit);
//! assert_eq!(BulkSpec::from_json(&spec.to_json())?, spec);
//! // Output integers of +1.5 and −0.25 logits in the spec's unit.
//! let unit = 2f64.powi(spec.output_decoding.unit_log2 as i32);
//! let shown = spec.decode(&[(1.5 * unit) as i64, (-0.25 * unit) as i64]);
//! assert_eq!((shown.logits, shown.class), (vec![1.5, -0.25], 0));
//! # Ok::<(), hexray_model::ModelError>(())
//! ```

use serde::{Deserialize, Serialize};

use crate::client_spec::{check_fingerprint, check_header, parse_spec, Diagnosis, LOGIT_STEP};
use crate::error::ModelError;
use crate::file::CompiledModel;
use crate::network::{check_classes, InputSpec};
use crate::packed::{logits, PackedCircuit, LOGIT_UNIT_LOG2};
use crate::parameters::BulkParameters;

/// The `format` field of every bulk spec.
pub const FORMAT: &str = "hexray-bulk-spec";
/// The bulk spec version this build reads and writes.
pub const SPEC_VERSION: u32 = 1;

/// What a bulk client needs to preprocess, pack, encrypt and decode for one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkSpec {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`SPEC_VERSION`].
    pub spec_version: u32,
    /// The model's short identifier, as in its model file.
    pub name: String,
    /// Version of the model's weights, as in its model file.
    pub model_version: String,
    /// The model's description for people, as in its model file.
    pub description: String,
    /// Class names, in the order of the outputs.
    pub classes: Vec<String>,
    /// The image preprocessing, shared with the interactive path and the trainer.
    pub input: InputSpec,
    /// The BFV parameter set keys and batches must use.
    pub parameters: BulkParameters,
    /// How to turn decrypted output integers into logits.
    pub output_decoding: BulkDecoding,
    /// SHA-256 of the full model file, in hex: a job names it, as an interactive job does.
    pub fingerprint: String,
}

/// Output integer v is the logit `v · 2^-unit_log2`, shown rounded to a multiple of
/// `logit_step`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkDecoding {
    /// Always [`LOGIT_UNIT_LOG2`].
    pub unit_log2: u32,
    /// Always [`LOGIT_STEP`].
    pub logit_step: f64,
}

impl BulkSpec {
    /// The public part of `model` for the bulk path, given its packed circuit.
    pub fn of(model: &CompiledModel, circuit: &PackedCircuit) -> BulkSpec {
        BulkSpec {
            format: FORMAT.into(),
            spec_version: SPEC_VERSION,
            name: model.name.clone(),
            model_version: model.model_version.clone(),
            description: model.description.clone(),
            classes: circuit.classes.clone(),
            input: circuit.input.clone(),
            parameters: circuit.parameters.clone(),
            output_decoding: BulkDecoding {
                unit_log2: LOGIT_UNIT_LOG2,
                logit_step: LOGIT_STEP,
            },
            fingerprint: model.fingerprint(),
        }
    }

    /// The JSON document a server sends.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a bulk spec always serialises to JSON")
    }

    /// Parses and checks a bulk spec: format and version, input, parameters, and that its
    /// decoding is the one this build implements.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ModelError> {
        let spec: BulkSpec = parse_spec(bytes)?;
        check_header((&spec.format, FORMAT), (spec.spec_version, SPEC_VERSION))?;
        spec.input.validate("input")?;
        check_classes("classes", &spec.classes)?;
        spec.parameters.validate()?;
        if spec.output_decoding.unit_log2 != LOGIT_UNIT_LOG2
            || spec.output_decoding.logit_step != LOGIT_STEP
        {
            return Err(ModelError::field(
                "output_decoding",
                "this client implements another decoding: update the client",
            ));
        }
        check_fingerprint(&spec.fingerprint)?;
        Ok(spec)
    }

    /// What a client shows for one image's decrypted output integers: logits rounded to the
    /// step, their softmax and the class.
    pub fn decode(&self, outputs: &[i64]) -> Diagnosis {
        Diagnosis::from_logits(&logits(outputs), self.output_decoding.logit_step)
    }
}
