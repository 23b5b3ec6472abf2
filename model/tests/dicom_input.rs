//! DICOM files through preprocessing, the path every caller takes: a chest X-ray exported as
//! DICOM gives the model what its PNG gives it, and a DICOM file without an image is refused
//! with the reader's own error. The reader itself is tested in `dicom/tests/decode.rs`.

use std::path::Path;

use hexray_dicom::DicomError;
use hexray_model::preprocess::{decode, preprocess};
use hexray_model::simulate;
use hexray_model::{CompiledModel, PreprocessError};

/// A file of the repository's `samples/`.
fn sample(path: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../samples")
        .join(path);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A DICOM chest X-ray gives the model what its PNG gives it: the same pixels within one
/// level, and the same verdict, through the bundled model's own preprocessing. From the
/// lossless files the input integers are the PNG's within one level too; lossy compression's
/// ±1 level, stretched by the model's intensity normalisation, may move them further.
#[test]
fn chest_dicoms_give_the_model_what_their_pngs_give_it() {
    let bytes = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/pneumonia-mlp-64.hexray"),
    )
    .unwrap();
    let (model, circuit) = CompiledModel::from_bytes(&bytes).unwrap();
    let spec = &model.network.input;
    for (dicom, png, lossless) in [
        (
            "covid-1.cr-rle-mono1",
            "covid-cxr-actualmed/covid-1.png",
            true,
        ),
        (
            "normal-1.dx-mono2",
            "covid-cxr-actualmed/normal-1.png",
            true,
        ),
        (
            "test-0000-pneumonia.jpeg-lossless-sv1",
            "pneumoniamnist/test-0000-pneumonia.png",
            true,
        ),
        (
            "test-0001-pneumonia.j2k-lossless",
            "pneumoniamnist/test-0001-pneumonia.png",
            true,
        ),
        (
            "test-0234-normal.jpeg-lossless",
            "pneumoniamnist/test-0234-normal.png",
            true,
        ),
        (
            "test-0002-pneumonia.jpeg-baseline",
            "pneumoniamnist/test-0002-pneumonia.png",
            false,
        ),
        (
            "test-0235-normal.j2k",
            "pneumoniamnist/test-0235-normal.png",
            false,
        ),
        (
            "test-0236-normal.jpeg-extended-8bit",
            "pneumoniamnist/test-0236-normal.png",
            false,
        ),
        (
            "covid-1.jpeg-extended-12bit",
            "covid-cxr-actualmed/covid-1.png",
            false,
        ),
    ] {
        let dicom_bytes = sample(&format!("dicom/chest/{dicom}.dcm"));
        let decoded = decode(&dicom_bytes).unwrap();
        let info = decoded.dicom.unwrap_or_else(|| panic!("{dicom} is DICOM"));
        assert!(info.warnings.is_empty(), "{dicom}: {:?}", info.warnings);
        let png_luma = decode(&sample(png)).unwrap().luma;
        assert_eq!(decoded.luma.dimensions(), png_luma.dimensions(), "{dicom}");
        let gap = decoded
            .luma
            .pixels()
            .zip(png_luma.pixels())
            .map(|(a, b)| a.0[0].abs_diff(b.0[0]))
            .max();
        assert!(gap <= Some(1), "{dicom}: pixels differ by {gap:?}");

        let from_dicom = preprocess(&dicom_bytes, spec).unwrap();
        let from_png = preprocess(&sample(png), spec).unwrap();
        if lossless {
            let gap = from_dicom
                .iter()
                .zip(&from_png)
                .map(|(a, b)| (a - b).abs())
                .max();
            assert!(gap <= Some(1), "{dicom}: inputs differ by {gap:?}");
        }
        let (a, b) = (
            simulate::exact(&circuit, from_dicom.view()).unwrap(),
            simulate::exact(&circuit, from_png.view()).unwrap(),
        );
        assert_eq!(a.class(), b.class(), "{dicom}: {a:?} vs {b:?}");
    }
}

/// A DICOM file without an image is refused through preprocessing with the reader's error, and
/// a PNG is not taken for DICOM.
#[test]
fn preprocessing_passes_on_the_readers_refusal() {
    let spec =
        hexray_model::network::InputSpec::square_8bit(28, hexray_model::network::Intensity::AsIs);
    let err = preprocess(&sample("dicom/pydicom/rtplan.dcm"), &spec).unwrap_err();
    assert!(matches!(
        err,
        PreprocessError::Dicom(DicomError::NoImage { .. })
    ));
    assert!(decode(&sample("pneumoniamnist/test-0000-pneumonia.png"))
        .unwrap()
        .dicom
        .is_none());
}
