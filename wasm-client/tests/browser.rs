//! The client's API in a real browser (headless Chromium through wasm-pack): key generation,
//! preprocessing identical to the native function, and an encrypt/decrypt round trip.

use std::cell::OnceCell;

use hexray_crypto::{ClientKey, CompressedServerKey, EncryptedImage, ParameterSet};
use hexray_model::{ClientSpec, CompiledModel};
use hexray_wasm::{generate_keys, pack_batch, unpack_batch, Client, KeyPair, Model};
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const MODEL: &[u8] = include_bytes!("../../models/pneumonia-a.hexray");
const XRAY: &[u8] = include_bytes!("../../samples/covid-cxr-actualmed/covid-1.png");
/// What the native `hexray_model::preprocess` gives for `XRAY` and `MODEL`; the native test
/// `tests/tests/wasm_fixture.rs` checks it is still true.
const NATIVE: &str = include_str!("fixtures/covid-1.preprocessed.txt");

/// The bundled model's client spec, as the server sends it.
fn spec() -> Vec<u8> {
    let (model, circuit) = CompiledModel::from_bytes(MODEL).unwrap();
    ClientSpec::of(&model, &circuit).to_json()
}

fn ok<T>(result: Result<T, JsError>) -> T {
    result.map_err(JsValue::from).unwrap()
}

thread_local! {
    /// Key generation takes a while in a browser: the tests share one pair.
    static KEYS: OnceCell<(Vec<u8>, Vec<u8>)> = const { OnceCell::new() };
}

fn keys() -> (Vec<u8>, Vec<u8>) {
    KEYS.with(|keys| {
        keys.get_or_init(|| {
            let steps = js_sys::Array::new();
            let record = Closure::<dyn Fn(u32, u32, String)>::new({
                let steps = steps.clone();
                move |step: u32, total: u32, _label: String| {
                    steps.push(&format!("{step}/{total}").into());
                }
            });
            let KeyPair {
                client_key,
                server_key,
            } = ok(generate_keys(
                ParameterSet::Ks32.name(),
                record.as_ref().unchecked_ref(),
            ));
            // Progress went through every step, in order.
            let reported: Vec<String> = steps.iter().map(|s| s.as_string().unwrap()).collect();
            assert_eq!(reported, ["0/3", "1/3", "2/3", "3/3"]);
            (client_key, server_key)
        })
        .clone()
    })
}

#[wasm_bindgen_test]
fn key_generation_gives_a_key_pair_of_the_models_parameter_set() {
    let (client_key, server_key) = keys();
    let client = ClientKey::from_bytes(&client_key).unwrap();
    assert_eq!(client.parameter_set(), ParameterSet::Ks32);
    let server = CompressedServerKey::from_bytes(&server_key).unwrap();
    assert_eq!(server.parameter_set(), ParameterSet::Ks32);
    assert!(
        server_key.len() > 20 << 20,
        "a compressed server key is about 30 MB"
    );
    // The secret key is not inside what gets uploaded. Searched for as windows of its secret
    // coefficients (4 KiB: 512 of them, each a u64 word), not as the whole blob, whose header
    // alone would make the search pass whatever leaked.
    for start in [1, 2, 3].map(|q| q * client_key.len() / 4) {
        let secret = &client_key[start..start + 4096];
        assert!(
            !server_key.windows(secret.len()).any(|w| w == secret),
            "the server key holds client key bytes from {start}"
        );
    }
    assert!(generate_keys("no such set", &js_sys::Function::new_no_args("")).is_err());
}

/// The input integers `model.read` gives for an image file: what the page encrypts.
fn input_of(model: &Model, image: &[u8]) -> Result<Vec<i32>, JsError> {
    let read = model.read(image)?;
    let input = js_sys::Reflect::get(&read, &"input".into()).unwrap();
    Ok(serde_wasm_bindgen::from_value(input).unwrap())
}

#[wasm_bindgen_test]
fn preprocessing_equals_the_native_function() {
    let model = ok(Model::new(&spec()));
    assert!(
        Model::new(MODEL).is_err(),
        "the model file itself is not a spec"
    );
    let native: Vec<i32> = NATIVE
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(ok(input_of(&model, XRAY)), native);
    assert!(model.read(b"not an image").is_err());
}

#[wasm_bindgen_test]
fn encrypt_then_decrypt_gives_back_the_preprocessed_image() {
    let (client_key, _) = keys();
    let model = ok(Model::new(&spec()));
    let client = ok(Client::new(&client_key));
    let input = ok(input_of(&model, XRAY));
    let upload = ok(client.encrypt(&model, &input));
    // Too few integers, or one out of the input's range, are refused in words.
    assert!(client.encrypt(&model, &input[1..]).is_err());
    let mut too_bright = input.clone();
    too_bright[0] = 1 << 20;
    assert!(client.encrypt(&model, &too_bright).is_err());

    // Decrypt the uploaded ciphertexts with the same key: each phase is q·Δ plus small noise,
    // Δ the public input unit.
    let spec = ClientSpec::from_json(&spec()).unwrap();
    let image = EncryptedImage::from_bytes(&upload, ParameterSet::Ks32, spec.input_len()).unwrap();
    let key = ClientKey::from_bytes(&client_key).unwrap();
    let delta = spec.input_delta() as f64;
    let decrypted: Vec<i32> = key
        .decrypt_phases(&image.expand())
        .into_iter()
        .map(|phase| (phase as i64 as f64 / delta).round() as i32)
        .collect();
    assert_eq!(decrypted, input);

    // A batch body round-trips, and garbage is refused with an error, not a panic.
    let blobs = js_sys::Array::of2(
        &js_sys::Uint8Array::from(upload.as_slice()),
        &js_sys::Uint8Array::from(&b"second"[..]),
    );
    let unpacked = ok(unpack_batch(&pack_batch(blobs), 2));
    assert_eq!(js_sys::Uint8Array::new(&unpacked.get(0)).to_vec(), upload);
    assert!(unpack_batch(&pack_batch(js_sys::Array::new()), 1).is_err());
    assert!(client.decrypt(&model, b"garbage").is_err());
    assert!(Client::new(b"garbage").is_err());
}

/// `model.read` on a DICOM chest X-ray (12-bit, MONOCHROME1, RLE) made from `XRAY`: the same
/// input as the PNG, the image as dropped for the page to draw, and what the file says about
/// itself; JPEG 2000 decodes in the browser too, and an object with no image is refused.
#[wasm_bindgen_test]
fn reading_a_dicom_file_gives_the_pngs_input_its_image_and_its_details() {
    const DICOM: &[u8] = include_bytes!("../../samples/dicom/chest/covid-1.cr-rle-mono1.dcm");
    const J2K: &[u8] =
        include_bytes!("../../samples/dicom/chest/test-0001-pneumonia.j2k-lossless.dcm");
    const RTPLAN: &[u8] = include_bytes!("../../samples/dicom/pydicom/rtplan.dcm");
    let get = |value: &JsValue, key: &str| js_sys::Reflect::get(value, &key.into()).unwrap();
    let model = ok(Model::new(&spec()));

    let read = ok(model.read(DICOM));
    let input: Vec<i32> = serde_wasm_bindgen::from_value(get(&read, "input")).unwrap();
    assert_eq!(input, ok(input_of(&model, XRAY)));
    let original = get(&read, "original");
    assert_eq!(get(&original, "width").as_f64(), Some(256.0));
    assert_eq!(get(&original, "height").as_f64(), Some(211.0));
    let pixels = get(&original, "pixels");
    assert!(pixels.is_instance_of::<js_sys::Uint8Array>());
    assert_eq!(js_sys::Uint8Array::new(&pixels).length(), 256 * 211);
    let dicom = get(&read, "dicom");
    assert_eq!(
        get(&dicom, "patient_name").as_string().as_deref(),
        Some("DOE^JANE")
    );
    assert_eq!(
        get(&dicom, "photometric").as_string().as_deref(),
        Some("MONOCHROME1")
    );
    assert_eq!(js_sys::Array::from(&get(&dicom, "warnings")).length(), 0);
    assert!(get(&ok(model.read(XRAY)), "dicom").is_null());

    let j2k = ok(model.read(J2K));
    assert_eq!(get(&get(&j2k, "original"), "width").as_f64(), Some(28.0));
    let refused = JsValue::from(model.read(RTPLAN).unwrap_err());
    let message = get(&refused, "message").as_string().unwrap();
    assert!(message.contains("RT Plan Storage"), "{message}");
}
