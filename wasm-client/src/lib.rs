//! HEXray's browser client. Everything secret happens here, in the clinician's browser: the
//! client key is generated, kept and used only on this side, images are preprocessed and
//! encrypted before they leave, and the server's encrypted answers are decrypted here.
//!
//! It is a thin wasm-bindgen layer over the same crates the server uses: `hexray-model` for
//! the client spec and preprocessing, `hexray-crypto` for keys and ciphertexts. So the browser
//! and the evaluator cannot disagree on pixels or encodings. The browser never holds the model
//! itself: only its public client spec, which has no weights.
//!
//! The JavaScript API:
//! - `generate_keys(parameterSet, progress)`: a new key pair as bytes (run it in a Web Worker);
//! - `new Model(bytes)`: a model's client spec (JSON) fetched from the server; `model.info()`,
//!   `model.read(imageBytes)` (PNG, JPEG or DICOM: the input integers, the image, DICOM details);
//! - `new Client(clientKeyBytes)`: `client.encrypt(model, input)` (the integers `read` gave),
//!   `client.decrypt(model, outputBytes)`;
//! - `pack_batch([blobs])`, `unpack_batch(body, count)`: the HXB1 batch bodies.

use hexray_crypto::{batch_body, ClientKey, EncryptedOutput, ParameterSet};
use hexray_model::client_spec::BORDERLINE_NOTE;
use hexray_model::ClientSpec;
use serde::Serialize;
use wasm_bindgen::prelude::*;

/// A key pair, as bytes for IndexedDB and for upload.
#[wasm_bindgen(getter_with_clone)]
pub struct KeyPair {
    /// The secret client key. It never leaves the browser.
    pub client_key: Vec<u8>,
    /// The compressed server key (about 30 MB), uploaded once. It cannot decrypt.
    pub server_key: Vec<u8>,
}

/// Generates a fresh key pair for `parameter_set` (a TFHE parameter set name, as in a model
/// file). `progress(step, total, label)` is called before each step. Takes seconds: call it from
/// a Web Worker so the page stays responsive.
#[wasm_bindgen]
pub fn generate_keys(parameter_set: &str, progress: &js_sys::Function) -> Result<KeyPair, JsError> {
    let set = ParameterSet::from_name(parameter_set).map_err(error)?;
    let report = |step: u32, label: &str| {
        // A failing progress callback must not stop key generation; the console says why.
        if let Err(e) = progress.call3(&JsValue::NULL, &step.into(), &3.into(), &label.into()) {
            web_sys::console::warn_2(
                &"hexray: the key generation progress callback threw".into(),
                &e,
            );
        }
    };
    report(0, "generating the client key");
    let client = ClientKey::generate(set);
    report(1, "generating the server key");
    let server = client.server_key();
    report(2, "serializing");
    let pair = KeyPair {
        client_key: client.to_bytes().map_err(error)?,
        server_key: server.to_bytes().map_err(error)?,
    };
    report(3, "done");
    Ok(pair)
}

/// Bytes of WebAssembly memory in use: the key generation benchmark reads it.
#[wasm_bindgen]
pub fn memory_bytes() -> f64 {
    let memory: js_sys::WebAssembly::Memory = wasm_bindgen::memory().unchecked_into();
    let buffer: js_sys::ArrayBuffer = memory.buffer().unchecked_into();
    buffer.byte_length() as f64
}

/// A model's client spec: what to do to an image, how to encrypt it and how to read the answer.
#[wasm_bindgen]
pub struct Model {
    spec: ClientSpec,
}

/// What the page shows about a model.
#[derive(Serialize)]
struct ModelInfo<'a> {
    name: &'a str,
    version: &'a str,
    description: &'a str,
    classes: &'a [String],
    bootstraps: usize,
    width: u32,
    height: u32,
    /// The largest input integer: the preview scales pixels by it.
    max_input: i64,
    parameter_set: &'a str,
    fingerprint: &'a str,
}

#[wasm_bindgen]
impl Model {
    #[wasm_bindgen(constructor)]
    pub fn new(bytes: &[u8]) -> Result<Model, JsError> {
        let spec = ClientSpec::from_json(bytes).map_err(error)?;
        // The same check the server's loader runs: a spec for a parameter set this client
        // cannot generate keys for is refused here, not at encryption.
        ParameterSet::from_name(&spec.parameter_set).map_err(error)?;
        Ok(Model { spec })
    }

    pub fn info(&self) -> Result<JsValue, JsError> {
        let spec = &self.spec;
        let info = ModelInfo {
            name: &spec.name,
            version: &spec.model_version,
            description: &spec.description,
            classes: &spec.classes,
            bootstraps: spec.bootstraps,
            width: spec.input.width,
            height: spec.input.height,
            max_input: spec.input.max_value(),
            parameter_set: &spec.parameter_set,
            fingerprint: &spec.fingerprint,
        };
        serde_wasm_bindgen::to_value(&info).map_err(error)
    }

    /// Decodes an image file (PNG, JPEG or DICOM) once, for everything the page shows before
    /// encrypting it: `{ input, original: { width, height, pixels }, dicom }`. `input` is the
    /// integers `hexray_model::preprocess` gives, row by row: what gets encrypted; `original` the decoded 8-bit luma, longer side at most 512 pixels
    /// (`pixels` a `Uint8Array`, row by row), for a canvas, since browsers cannot draw DICOM;
    /// `dicom` what a DICOM file says about itself, warnings included, or `null`.
    pub fn read(&self, image: &[u8]) -> Result<JsValue, JsError> {
        #[derive(Serialize)]
        struct Original {
            width: u32,
            height: u32,
            #[serde(with = "serde_bytes")]
            pixels: Vec<u8>,
        }
        #[derive(Serialize)]
        struct Read {
            input: Vec<i32>,
            original: Original,
            dicom: Option<hexray_dicom::DicomInfo>,
        }
        let decoded = hexray_model::preprocess::decode(image).map_err(error)?;
        let shown = hexray_model::preprocess::thumbnail(&decoded.luma, 512);
        let input = hexray_model::preprocess::preprocess_luma(decoded.luma, &self.spec.input)
            .map_err(error)?;
        let read = Read {
            input: input.iter().map(|&q| q as i32).collect(),
            original: Original {
                width: shown.width(),
                height: shown.height(),
                pixels: shown.into_raw(),
            },
            dicom: decoded.dicom,
        };
        // `null` rather than `undefined` for what is absent (`dicom` for a PNG, a DICOM file's
        // missing fields), as JSON would have it.
        let serializer = serde_wasm_bindgen::Serializer::new().serialize_missing_as_null(true);
        read.serialize(&serializer).map_err(error)
    }
}

/// A client key, loaded from IndexedDB or just generated.
#[wasm_bindgen]
pub struct Client {
    key: ClientKey,
}

/// A decrypted result, as the page shows it.
#[derive(Serialize)]
struct Shown<'a> {
    class: &'a str,
    class_index: usize,
    classes: &'a [String],
    probabilities: Vec<f64>,
    /// What to say beside a borderline result ([`BORDERLINE_NOTE`]); absent otherwise.
    borderline: Option<&'static str>,
}

#[wasm_bindgen]
impl Client {
    #[wasm_bindgen(constructor)]
    pub fn new(client_key: &[u8]) -> Result<Client, JsError> {
        Ok(Client {
            key: ClientKey::from_bytes(client_key).map_err(error)?,
        })
    }

    /// Encrypts an image's input integers for `model`, as `model.read` gave them: the bytes
    /// to upload. The page reads each file once and encrypts exactly what it showed.
    pub fn encrypt(&self, model: &Model, input: &[i32]) -> Result<Vec<u8>, JsError> {
        let spec = &model.spec.input;
        let shape = (
            spec.channels as usize,
            spec.height as usize,
            spec.width as usize,
        );
        let tensor =
            ndarray::Array3::from_shape_vec(shape, input.iter().map(|&q| i64::from(q)).collect())
                .map_err(|_| {
                JsError::new(&format!(
                    "the model takes {} input integers, not {}",
                    shape.0 * shape.1 * shape.2,
                    input.len()
                ))
            })?;
        let encrypted = self
            .key
            .encrypt(&model.spec, tensor.view())
            .map_err(error)?;
        encrypted.to_bytes().map_err(error)
    }

    /// Decrypts one encrypted output from the server into the class and its probabilities
    /// (from logits rounded to the spec's step: no noise bits reach the page), and whether the
    /// result is borderline by the model's published margin.
    pub fn decrypt(&self, model: &Model, output: &[u8]) -> Result<JsValue, JsError> {
        let output =
            EncryptedOutput::from_bytes(output, self.key.parameter_set(), model.spec.output_len())
                .map_err(error)?;
        let diagnosis = self.key.decrypt(&model.spec, &output).map_err(error)?;
        let classes = &model.spec.classes;
        let borderline = diagnosis.is_borderline(model.spec.borderline_margin);
        let diagnosis = Shown {
            class: &classes[diagnosis.class],
            class_index: diagnosis.class,
            classes,
            probabilities: diagnosis.probabilities,
            borderline: borderline.then_some(BORDERLINE_NOTE),
        };
        serde_wasm_bindgen::to_value(&diagnosis).map_err(error)
    }
}

/// Packs encrypted images (an array of `Uint8Array`) into one job body.
#[wasm_bindgen]
pub fn pack_batch(blobs: js_sys::Array) -> Vec<u8> {
    let blobs: Vec<Vec<u8>> = blobs
        .iter()
        .map(|b| js_sys::Uint8Array::new(&b).to_vec())
        .collect();
    batch_body::pack(&blobs)
}

/// Splits a job's outputs body into its blobs (`Uint8Array`s); `count` is how many there must be.
#[wasm_bindgen]
pub fn unpack_batch(body: &[u8], count: usize) -> Result<js_sys::Array, JsError> {
    let blobs = batch_body::unpack(body, count).map_err(error)?;
    if blobs.len() != count {
        return Err(JsError::new(&format!(
            "the server returned {} outputs for {count} images",
            blobs.len()
        )));
    }
    Ok(blobs
        .into_iter()
        .map(|b| JsValue::from(js_sys::Uint8Array::from(b)))
        .collect())
}

fn error(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}
