//! The client spec: the public part of a model, and all a client ever gets of it.
//!
//! A model file holds the model owner's network: integer weights, biases, activation
//! coefficients and, through them, every lookup table. If a browser had it, it could compute the
//! diagnosis in clear and FHE would protect nothing; the weights would also leak to every
//! visitor. So the server keeps the model file, and clients get this spec: what to do to an
//! image, how to encrypt its integers, and how to read the answers (see
//! `docs/client-spec.md`).
//!
//! Nothing in it is derived from the weights but one measured number about the circuit's
//! noise, the borderline margin (below). Inputs are encrypted in one public unit
//! ([`INPUT_DELTA_LOG2`]) for every model, and outputs decode with the unit the model's declared
//! logit bound sets ([`output_unit_log2`]); the server does the model-specific scaling and
//! centring. Two models that differ only in their weights therefore have specs that differ only
//! in their [`ClientSpec::fingerprint`] and borderline margin.
//!
//! **What the client learns.** Each decrypted logit is rounded to [`LOGIT_STEP`] before the
//! softmax. The output noise of the shipped model is about 0.07 in logit units, so the rounding
//! removes the bits that noise sets (the IND-CPA-D stance: decrypted results that a client might
//! show or share carry no noise bits to learn the key from), and nothing computed from a
//! decryption is ever sent back.
//!
//! **Borderline results.** The one number derived from the model's circuit is
//! [`ClientSpec::borderline_margin`]: how far apart the shown top two logits must be before
//! another encryption of the same image can no longer change the class. It is a property of the
//! circuit's noise, measured by the model's owner ([`crate::borderline::measure`]), and it is
//! safe to publish: it is a multiple of [`LOGIT_STEP`], so a handful of values (a few
//! bits, once per model); it says how noisy the model's answers are, not what any weight is;
//! and any client can already measure it by encrypting one image again and again, which the
//! service exists to let it do.
//!
//! ```
//! use hexray_model::client_spec::ClientSpec;
//! # let (model, circuit) = hexray_model::testing::tiny_model();
//! let spec = ClientSpec::of(&model, &circuit);
//! let json = spec.to_json();
//! assert!(json.len() < 4096);
//! assert_eq!(ClientSpec::from_json(&json).unwrap(), spec);
//! // The phase of a logit of +2.5 (in the public unit) decodes to 2.5.
//! let diagnosis = spec.decode(&[0, (2.5 * (1u64 << 58) as f64) as u64]);
//! assert_eq!(diagnosis.logits, vec![0.0, 2.5]);
//! assert_eq!(diagnosis.class, 1);
//! // A margin of 2.5 logits is borderline only for a model whose noise makes it so.
//! assert_eq!(diagnosis.is_borderline(spec.borderline_margin), spec.borderline_margin >= 2.5);
//! ```

use serde::{Deserialize, Serialize};

use crate::circuit::{output_unit_log2, Circuit, INPUT_DELTA_LOG2};
use crate::error::ModelError;
use crate::file::{check_borderline_margin, CompiledModel};
use crate::network::{check_classes, check_logit_bound, InputSpec};
use crate::simulate::{argmax, softmax, Prediction};

/// The `format` field of every client spec.
pub const FORMAT: &str = "hexray-client-spec";
/// The spec version this build reads and writes. Version 2 adds the borderline margin.
pub const SPEC_VERSION: u32 = 2;
/// Largest spec accepted, so a hostile server cannot make a client parse without bound.
pub const MAX_SPEC_BYTES: usize = 64 << 10;
/// Decrypted logits are rounded to a multiple of this before the softmax.
pub const LOGIT_STEP: f64 = 0.25;
/// What every HEXray client says beside a borderline result, so that the page, the CSV, the
/// printed report and the CLI say the same thing.
pub const BORDERLINE_NOTE: &str =
    "borderline: another encryption of this image could give the other class; review the image";

/// What a client needs to preprocess, encrypt and decode for one model, and nothing else.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSpec {
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
    /// Bootstraps per image: the cost, which the page turns into an expected time.
    pub bootstraps: usize,
    /// The image preprocessing, shared with the trainer bit for bit.
    pub input: InputSpec,
    /// The TFHE-rs parameter set keys and ciphertexts must use.
    pub parameter_set: String,
    /// How to turn preprocessed integers into plaintexts.
    pub input_encoding: InputEncoding,
    /// How to turn decrypted phases into logits.
    pub output_decoding: OutputDecoding,
    /// A result whose shown decision margin ([`Diagnosis::margin`]) is at most this many logits
    /// is borderline: another encryption of the image could name another class. A property of
    /// the circuit's noise (see the module docs for why it is safe to publish).
    pub borderline_margin: f64,
    /// SHA-256 of the full model file, in hex: a job names it, so that a server whose model
    /// changed refuses inputs encrypted for the old one.
    pub fingerprint: String,
}

/// Each preprocessed integer q is encrypted as the torus value `q·2^delta_log2`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputEncoding {
    /// Log2 of the public input unit, in 2^64 torus units; always [`INPUT_DELTA_LOG2`].
    pub delta_log2: u32,
}

/// Each output ciphertext's phase, read as a signed 64-bit integer and divided by
/// `2^unit_log2`, is one class's logit (up to a shift common to all classes, which the softmax
/// ignores), rounded to a multiple of `logit_step`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputDecoding {
    /// Log2 of one logit, in 2^64 torus units: [`output_unit_log2`] of the model's logit bound.
    pub unit_log2: u32,
    /// Rounding step of the decoded logits; always [`LOGIT_STEP`].
    pub logit_step: f64,
}

/// A decrypted answer: rounded logits, their softmax, and the class.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnosis {
    /// One logit per class, rounded to a multiple of the spec's logit step.
    pub logits: Vec<f64>,
    /// Softmax of the rounded logits, summing to 1.
    pub probabilities: Vec<f64>,
    /// Index of the most probable class.
    pub class: usize,
}

impl Diagnosis {
    /// The decision margin: the shown logit of the class named minus the largest other one,
    /// in logits. Zero on a tie.
    ///
    /// ```
    /// use hexray_model::Diagnosis;
    ///
    /// let shown = Diagnosis::from_logits(&[0.1, 1.4, -3.0], 0.25);
    /// assert_eq!(shown.margin(), 1.5);
    /// assert!(shown.is_borderline(1.5) && !shown.is_borderline(1.0));
    /// ```
    pub fn margin(&self) -> f64 {
        let top = self.logits[self.class];
        let next = self
            .logits
            .iter()
            .enumerate()
            .filter(|&(k, _)| k != self.class)
            .map(|(_, &l)| l)
            .fold(f64::NEG_INFINITY, f64::max);
        top - next
    }

    /// Whether the result is borderline for a model whose borderline margin is
    /// `borderline_margin` ([`ClientSpec::borderline_margin`]): the one rule every client uses.
    pub fn is_borderline(&self, borderline_margin: f64) -> bool {
        self.margin() <= borderline_margin
    }

    /// What a client shows for unrounded logits: each rounded to a multiple of `step`, then
    /// their softmax and class. Rounding can tie two logits a simulator keeps apart, so
    /// whoever predicts what a clinician will see decodes through here.
    ///
    /// ```
    /// use hexray_model::Diagnosis;
    ///
    /// // 0.9 and 1.1 both round to 1.0: a tie, which names the first class.
    /// let shown = Diagnosis::from_logits(&[0.9, 1.1], 0.25);
    /// assert_eq!(shown.logits, [1.0, 1.0]);
    /// assert_eq!(shown.class, 0);
    /// assert_eq!(shown.probabilities, [0.5, 0.5]);
    /// ```
    pub fn from_logits(exact: &[f64], step: f64) -> Self {
        let logits: Vec<f64> = exact.iter().map(|l| (l / step).round() * step).collect();
        Diagnosis {
            probabilities: softmax(&logits),
            class: argmax(&logits),
            logits,
        }
    }

    /// What a client would show for a simulated `prediction` of `circuit`: the logits it
    /// decrypts, centred on the output stage's origin, rounded alike. For the model owner's
    /// tools, which have the circuit.
    pub fn of_prediction(circuit: &Circuit, prediction: &Prediction) -> Self {
        let origin = circuit
            .stages
            .last()
            .expect("a circuit has an output stage")
            .origin as f64;
        let logits: Vec<f64> = prediction
            .accumulators
            .iter()
            .map(|a| (a - origin) * circuit.logit_scale)
            .collect();
        Diagnosis::from_logits(&logits, LOGIT_STEP)
    }
}

impl ClientSpec {
    /// The public part of `model`, given its compiled circuit: everything a client needs, and
    /// nothing derived from the weights.
    pub fn of(model: &CompiledModel, circuit: &Circuit) -> ClientSpec {
        ClientSpec {
            format: FORMAT.into(),
            spec_version: SPEC_VERSION,
            name: model.name.clone(),
            model_version: model.model_version.clone(),
            description: model.description.clone(),
            classes: model.network.output.classes.clone(),
            bootstraps: circuit.bootstrap_count(),
            input: model.network.input.clone(),
            parameter_set: model.fhe.name.clone(),
            input_encoding: InputEncoding {
                delta_log2: INPUT_DELTA_LOG2,
            },
            output_decoding: OutputDecoding {
                unit_log2: output_unit_log2(model.network.output.logit_bound_log2),
                logit_step: LOGIT_STEP,
            },
            borderline_margin: model.borderline_margin,
            fingerprint: model.fingerprint(),
        }
    }

    /// The JSON document a server sends.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a client spec always serialises to JSON")
    }

    /// Parses and checks a spec: its format and version, its input, and that its encodings are
    /// the ones this build implements.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ModelError> {
        let spec: ClientSpec = parse_spec(bytes)?;
        spec.validate()?;
        Ok(spec)
    }

    fn validate(&self) -> Result<(), ModelError> {
        check_header((&self.format, FORMAT), (self.spec_version, SPEC_VERSION))?;
        self.input.validate("input")?;
        check_classes("classes", &self.classes)?;
        check_borderline_margin("borderline_margin", self.borderline_margin)?;
        let bound = 63u32.saturating_sub(self.output_decoding.unit_log2);
        check_logit_bound("output_decoding.unit_log2", bound)?;
        if self.input_encoding.delta_log2 != INPUT_DELTA_LOG2
            || self.output_decoding.logit_step != LOGIT_STEP
        {
            return Err(ModelError::field(
                "input_encoding",
                "this client implements another encoding: update the client",
            ));
        }
        check_fingerprint(&self.fingerprint)
    }

    /// Number of input integers a client encrypts.
    pub fn input_len(&self) -> usize {
        self.input.shape().len()
    }

    /// Number of output ciphertexts a client decrypts: one per class.
    pub fn output_len(&self) -> usize {
        self.classes.len()
    }

    /// The torus value of one input integer.
    pub fn input_delta(&self) -> u64 {
        1 << self.input_encoding.delta_log2
    }

    /// The logits the output phases encode, before rounding: for measuring noise, never for
    /// showing.
    pub fn exact_logits(&self, phases: &[u64]) -> Vec<f64> {
        let unit = (1u64 << self.output_decoding.unit_log2) as f64;
        phases.iter().map(|&p| p as i64 as f64 / unit).collect()
    }

    /// Decodes decrypted output phases into the diagnosis a client shows: logits rounded to
    /// the step, their softmax and the class.
    pub fn decode(&self, phases: &[u64]) -> Diagnosis {
        Diagnosis::from_logits(&self.exact_logits(phases), self.output_decoding.logit_step)
    }
}

/// Reads a spec document of at most [`MAX_SPEC_BYTES`], naming the field at fault: the one
/// parser of the client and bulk specs.
pub(crate) fn parse_spec<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ModelError> {
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(ModelError::TooLarge {
            size: bytes.len(),
            limit: MAX_SPEC_BYTES,
        });
    }
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let spec = serde_path_to_error::deserialize(&mut json)
        .map_err(|e| ModelError::field(e.path().to_string(), e.inner().to_string()))?;
    json.end()
        .map_err(|e| ModelError::field("(end of spec)", e.to_string()))?;
    Ok(spec)
}

/// A spec's `format` and `spec_version`, each as (found, expected).
pub(crate) fn check_header(
    (format, expected_format): (&str, &str),
    (version, expected_version): (u32, u32),
) -> Result<(), ModelError> {
    if format != expected_format {
        return Err(ModelError::field(
            "format",
            format!("must be `{expected_format}`"),
        ));
    }
    if version != expected_version {
        return Err(ModelError::Version {
            found: version.to_string(),
            supported: expected_version,
        });
    }
    Ok(())
}

/// A model fingerprint: a SHA-256 in hex.
pub(crate) fn check_fingerprint(fingerprint: &str) -> Result<(), ModelError> {
    if fingerprint.len() == 64 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    Err(ModelError::field("fingerprint", "must be a SHA-256 in hex"))
}
