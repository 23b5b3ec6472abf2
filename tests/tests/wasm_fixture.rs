//! The browser test (`wasm-client/tests/browser.rs`) checks that preprocessing compiled to
//! wasm gives a committed fixture. This checks that the fixture is what the native function
//! gives, so the two sides are proven equal. After changing the bundled model or the
//! preprocessing, regenerate it with `HEXRAY_BLESS=1 cargo test --release -p hexray-test-kit --test
//! wasm_fixture`.

use hexray_test_kit::fixtures;

use hexray_engine::LoadedModel;

#[test]
fn the_browser_fixture_is_the_native_preprocessing() {
    let model =
        LoadedModel::from_file(&fixtures::repo().join("models/pneumonia-a.hexray")).unwrap();
    let native = fixtures::sample(&model, "covid-cxr-actualmed/covid-1.png")
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let fixture = fixtures::repo().join("wasm-client/tests/fixtures/covid-1.preprocessed.txt");
    if std::env::var_os("HEXRAY_BLESS").is_some() {
        std::fs::write(&fixture, format!("{native}\n")).unwrap();
    }
    let committed = std::fs::read_to_string(&fixture).unwrap();
    assert_eq!(
        committed.trim(),
        native,
        "the fixture is stale: regenerate it with HEXRAY_BLESS=1 (see this file's doc)"
    );
}
