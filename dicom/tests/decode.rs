//! The DICOM reader on real files: pydicom's test files (one per transfer syntax, and the objects
//! HEXray must refuse) and chest X-rays written as X-ray systems write them
//! (`samples/dicom/make_chest_dicoms.py`). That they give the model what their PNGs give it is
//! preprocessing's test (`model/tests/dicom_input.rs`).

use std::path::{Path, PathBuf};

use hexray_dicom::{self as dicom, DicomError, DicomImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sample(path: &str) -> Vec<u8> {
    let path = repo().join("samples").join(path);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A file of `samples/dicom/`.
fn dicom_file(path: &str) -> Vec<u8> {
    sample(&format!("dicom/{path}"))
}

fn read(path: &str) -> DicomImage {
    dicom::read(&dicom_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn error(path: &str) -> DicomError {
    dicom::read(&dicom_file(path)).expect_err(path)
}

/// Every transfer syntax HEXray claims, on a real file: its name, the image's size, and
/// pixels that are not flat.
#[test]
fn every_supported_transfer_syntax_decodes() {
    let cases = [
        (
            "pydicom/MR_small_implicit.dcm",
            "Implicit VR Little Endian",
            (64, 64),
        ),
        (
            "pydicom/CT_small.dcm",
            "Explicit VR Little Endian",
            (128, 128),
        ),
        (
            "pydicom/MR_small_bigendian.dcm",
            "Explicit VR Big Endian",
            (64, 64),
        ),
        (
            "pydicom/image_dfl.dcm",
            "Deflated Explicit VR Little Endian",
            (512, 512),
        ),
        ("pydicom/MR_small_RLE.dcm", "RLE Lossless", (64, 64)),
        ("chest/covid-1.cr-rle-mono1.dcm", "RLE Lossless", (256, 211)),
        (
            "pydicom/SC_rgb_jpeg_dcmtk.dcm",
            "JPEG Baseline (Process 1)",
            (100, 100),
        ),
        (
            "chest/test-0002-pneumonia.jpeg-baseline.dcm",
            "JPEG Baseline (Process 1)",
            (28, 28),
        ),
        (
            "chest/test-0236-normal.jpeg-extended-8bit.dcm",
            "JPEG Extended (Process 2 & 4)",
            (28, 28),
        ),
        (
            "pydicom/JPGExtended.dcm",
            "JPEG Extended (Process 2 & 4)",
            (256, 1024),
        ),
        (
            "chest/covid-1.jpeg-extended-12bit.dcm",
            "JPEG Extended (Process 2 & 4)",
            (256, 211),
        ),
        (
            "chest/test-0234-normal.jpeg-lossless.dcm",
            "JPEG Lossless, Non-Hierarchical (Process 14)",
            (28, 28),
        ),
        (
            "chest/test-0000-pneumonia.jpeg-lossless-sv1.dcm",
            "JPEG Lossless, Non-Hierarchical, First-Order Prediction",
            (28, 28),
        ),
        (
            "pydicom/SC_rgb_jpeg_gdcm.dcm",
            "JPEG Lossless, Non-Hierarchical, First-Order Prediction",
            (100, 100),
        ),
        (
            "pydicom/MR_small_jp2klossless.dcm",
            "JPEG 2000 Image Compression (Lossless Only)",
            (64, 64),
        ),
        (
            "pydicom/JPEG2000.dcm",
            "JPEG 2000 Image Compression",
            (256, 1024),
        ),
        (
            "chest/test-0235-normal.j2k.dcm",
            "JPEG 2000 Image Compression",
            (28, 28),
        ),
    ];
    for (path, syntax, size) in cases {
        let image = read(path);
        assert_eq!(image.info.transfer_syntax, syntax, "{path}");
        assert_eq!(image.luma.dimensions(), size, "{path}");
        let (low, high) = image
            .luma
            .pixels()
            .fold((255, 0), |(lo, hi), p| (lo.min(p.0[0]), hi.max(p.0[0])));
        assert!(high - low > 100, "{path}: pixels span only {low}..={high}");
    }
}

/// pydicom's MR_small in four encodings: one image. Its values are signed 16-bit with a
/// window, so masking, sign extension and byte order all have to be right.
#[test]
fn one_image_in_four_transfer_syntaxes_decodes_to_the_same_pixels() {
    let reference = read("pydicom/MR_small_implicit.dcm").luma;
    for path in [
        "pydicom/MR_small_bigendian.dcm",
        "pydicom/MR_small_RLE.dcm",
        "pydicom/MR_small_jp2klossless.dcm",
    ] {
        assert_eq!(read(path).luma, reference, "{path}");
    }
}

#[test]
fn unsupported_transfer_syntaxes_are_named() {
    let message = error("pydicom/MR_small_jpeg_ls_lossless.dcm").to_string();
    assert!(
        message.contains("JPEG-LS Lossless Image Compression")
            && message.contains("1.2.840.10008.1.2.4.80"),
        "{message}"
    );
}

/// pydicom's 12-bit lossy JPEG (JPEG Extended, process 4), a bone scan without a window, so
/// shown over its own range (0 to 264): the luma of libjpeg's samples (pylibjpeg-libjpeg,
/// through pydicom 3.0.2's `pixel_array`), round(255 · v / 264), every 9th column from 60 and
/// every 60th row from 40. HEXray's own IDCT may differ from libjpeg's by one level of 12
/// bits, so by one level of luma (`dicom::codec`'s tests compare the samples themselves).
#[test]
fn twelve_bit_lossy_jpeg_decodes_as_libjpeg_does() {
    let image = read("pydicom/JPGExtended.dcm");
    assert_eq!(image.info.bits_stored, 12);
    let reference = include_str!("fixtures/jpgextended-reference.txt");
    let rows = reference.lines().filter(|line| !line.starts_with('#'));
    for (i, row) in rows.enumerate() {
        for (j, sample) in row.split_whitespace().enumerate() {
            // Shown over the frame's own range, 0 to 264.
            let expected = (255.0 * sample.parse::<f64>().unwrap() / 264.0).round() as u8;
            let (x, y) = (60 + 9 * j as u32, 40 + 60 * i as u32);
            let got = image.luma.get_pixel(x, y).0[0];
            assert!(
                got.abs_diff(expected) <= 1,
                "({x}, {y}): {got} vs {expected}"
            );
        }
    }
}

/// 12-bit lossy JPEG that is cut short or garbled inside a valid DICOM file: an error that
/// says so, never a panic.
#[test]
fn damaged_12_bit_jpeg_is_an_error_not_a_panic() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for path in [
        "chest/covid-1.jpeg-extended-12bit.dcm",
        "pydicom/JPGExtended.dcm",
    ] {
        let bytes = dicom_file(path);
        let find = |needle: &[u8]| bytes.windows(needle.len()).position(|w| w == needle);
        // SOF1, 12-bit; the codestream's EOI.
        let sof = find(&[0xFF, 0xC1, 0x00, 0x0B, 0x0C]).expect(path);
        let eoi = bytes
            .windows(2)
            .rposition(|w| w == [0xFF, 0xD9])
            .expect(path);
        // An EOI halfway through the scan: the data ends before its last block.
        let mut cut = bytes.clone();
        let middle = (sof + eoi) / 2;
        cut[middle..middle + 2].copy_from_slice(&[0xFF, 0xD9]);
        cut[middle + 2..eoi + 2].fill(0);
        let message = dicom::read(&cut).expect_err(path).to_string();
        assert!(
            message.starts_with(
                "cannot decode the DICOM pixel data: 12-bit JPEG: the data is \
                 truncated"
            ),
            "{path}: {message}"
        );
        // Garbage after the frame header.
        let mut garbage = bytes.clone();
        rng.fill(&mut garbage[sof + 13..eoi + 2]);
        let message = dicom::read(&garbage).expect_err(path).to_string();
        assert!(
            message.starts_with("cannot decode the DICOM pixel data: 12-bit JPEG")
                || message.starts_with("unsupported DICOM image"),
            "{path}: {message}"
        );
        // Bytes of the codestream overwritten: any outcome but a panic.
        for _ in 0..50 {
            let mut damaged = bytes.clone();
            for _ in 0..4 {
                let at = rng.gen_range(sof..eoi + 2);
                damaged[at] = rng.gen();
            }
            let _ = dicom::read(&damaged);
        }
    }
}

#[test]
fn objects_without_an_image_are_refused_in_words() {
    assert_eq!(
        error("pydicom/rtplan.dcm").to_string(),
        "this DICOM file holds no image to analyse: its SOP class is RT Plan Storage \
         (modality RTPLAN)"
    );
    assert_eq!(
        error("pydicom/test-SR.dcm").to_string(),
        "this DICOM file holds no image to analyse: its SOP class is Comprehensive SR Storage \
         (modality SR)"
    );
}

#[test]
fn other_modalities_body_parts_and_frames_are_warned_about() {
    let ct = read("pydicom/CT_small.dcm").info;
    assert_eq!(ct.modality.as_deref(), Some("CT"));
    assert_eq!(
        ct.warnings,
        [
            "Modality CT: this model was trained on chest radiographs (CR/DX); the result may be \
          meaningless"
        ]
    );
    let mr = read("pydicom/MR_small_implicit.dcm").info;
    assert!(
        mr.warnings[0].starts_with("Modality MR:"),
        "{:?}",
        mr.warnings
    );
    let nm = read("pydicom/JPEG2000.dcm").info;
    assert!(
        nm.warnings
            .iter()
            .any(|w| w.starts_with("Body Part Examined WHOLE BODY:")),
        "{:?}",
        nm.warnings
    );
    let two_frames = read("pydicom/SC_rgb_rle_2frame.dcm").info;
    assert_eq!(two_frames.frames, 2);
    assert_eq!(two_frames.warnings, ["2 frames; the first is analysed"]);
}

/// pydicom's colour stripes, RGB in lossless JPEG and RLE (the first of two frames), and
/// YBR_FULL in lossy JPEG: the same luma, within the lossy file's error.
#[test]
fn colour_images_become_luma() {
    let lossless = read("pydicom/SC_rgb_jpeg_gdcm.dcm").luma;
    assert_eq!(read("pydicom/SC_rgb_rle_2frame.dcm").luma, lossless);
    let lossy = read("pydicom/SC_rgb_jpeg_dcmtk.dcm");
    assert_eq!(lossy.info.photometric, "YBR_FULL");
    let gap = lossy
        .luma
        .pixels()
        .zip(lossless.pixels())
        .map(|(a, b)| a.0[0].abs_diff(b.0[0]))
        .max();
    assert!(gap <= Some(8), "{gap:?}");
}

#[test]
fn what_the_page_shows_about_a_chest_x_ray() {
    let info = read("chest/covid-1.cr-rle-mono1.dcm").info;
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "patient_name": "DOE^JANE",
            "study_date": "2024-01-31",
            "modality": "CR",
            "body_part": "CHEST",
            "transfer_syntax": "RLE Lossless",
            "bits_stored": 12,
            "photometric": "MONOCHROME1",
            "frames": 1,
            "warnings": [],
        })
    );
}

/// Truncated, corrupted and garbage files are errors that say so, never a panic.
#[test]
fn damaged_files_are_errors_not_panics() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    for path in [
        "chest/covid-1.cr-rle-mono1.dcm",
        "chest/normal-1.dx-mono2.dcm",
        "chest/test-0000-pneumonia.jpeg-lossless-sv1.dcm",
        "chest/test-0002-pneumonia.jpeg-baseline.dcm",
        "chest/test-0001-pneumonia.j2k-lossless.dcm",
        "chest/covid-1.jpeg-extended-12bit.dcm",
        "pydicom/image_dfl.dcm",
    ] {
        let bytes = dicom_file(path);
        // Cut in the file meta, in the data set and in the pixel data. (A cut in the last
        // item's delimiter is not an error: dicom-rs reads to the end of the data.)
        for cut in [132, 200, bytes.len() / 2, bytes.len() - 100] {
            let Err(error) = dicom::read(&bytes[..cut]) else {
                panic!("{path} cut at {cut} reads");
            };
            let message = error.to_string();
            assert!(
                message.starts_with("cannot read the DICOM file")
                    || message.starts_with("cannot decode the DICOM pixel data"),
                "{path} cut at {cut}: {message}"
            );
        }
        // Random bytes overwritten: any outcome but a panic. Few draws: a length that damage
        // made huge has dicom-rs zero-fill that many bytes before it finds the data short.
        for _ in 0..10 {
            let mut damaged = bytes.clone();
            for _ in 0..8 {
                let at = rng.gen_range(132..damaged.len());
                damaged[at] = rng.gen();
            }
            let _ = dicom::read(&damaged);
        }
    }
    let mut garbage = vec![0u8; 128];
    garbage.extend_from_slice(b"DICM");
    garbage.extend((0..4000).map(|_| rng.gen::<u8>()));
    assert!(matches!(dicom::read(&garbage), Err(DicomError::Parse(_))));
}

/// `bytes` (explicit VR little endian) with an unsigned short attribute of group 0028 set to
/// `value`.
fn with_us(mut bytes: Vec<u8>, element: u16, value: u16) -> Vec<u8> {
    let mut header = vec![0x28, 0x00];
    header.extend_from_slice(&element.to_le_bytes());
    header.extend_from_slice(b"US\x02\x00");
    let at = bytes
        .windows(header.len())
        .position(|w| w == header)
        .expect("the attribute is in the file")
        + header.len();
    bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
    bytes
}

#[test]
fn jpeg2000_samples_wider_than_bits_allocated_are_refused_in_words() {
    // A chest X-ray coded as 16-bit samples whose data set says 8 bits allocated (and
    // stored): decoded, its samples would index past the 256-entry tables of the pixel
    // pipeline (a trap in the browser's worker).
    let path = "chest/test-0001-pneumonia.j2k-lossless.dcm";
    let bytes = [(0x0100, 8), (0x0101, 8), (0x0102, 7)]
        .into_iter()
        .fold(dicom_file(path), |bytes, (element, value)| {
            with_us(bytes, element, value)
        });
    let error = dicom::read(&bytes).expect_err("16-bit samples in 8 allocated bits");
    assert!(
        error
            .to_string()
            .contains("16-bit samples in a data set that allocates 8 bits"),
        "{error}"
    );
    // The file as written still reads.
    read(path);
}

/// A deflated data set (`samples/dicom/pydicom/image_dfl.dcm`'s file meta) whose deflate
/// stream inflates to `size` zero bytes.
fn deflate_bomb(size: usize) -> Vec<u8> {
    use std::io::Write;
    let file = dicom_file("pydicom/image_dfl.dcm");
    let mut rest = &file[128..];
    dicom_object::meta::FileMetaTable::from_reader(&mut rest).unwrap();
    let meta_end = file.len() - rest.len();
    let mut encoder =
        flate2::write::DeflateEncoder::new(file[..meta_end].to_vec(), flate2::Compression::fast());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..size.div_ceil(zeros.len()) {
        encoder.write_all(&zeros).unwrap();
    }
    encoder.finish().unwrap()
}

#[test]
fn a_deflated_data_set_that_inflates_past_the_cap_is_refused_before_it_is_inflated() {
    let cap = dicom::MAX_INFLATED_BYTES as usize;
    let bomb = deflate_bomb(cap + (1 << 20));
    assert!(bomb.len() < cap / 100, "a small file: {} bytes", bomb.len());
    let error = dicom::read(&bomb).expect_err("a deflate bomb");
    assert!(error.to_string().contains("inflates to over"), "{error}");
    // Real deflated files are far below the cap.
    read("pydicom/image_dfl.dcm");
}

/// The sample DICOM files, damaged at random 100 times (seeded): a byte, a run of bytes or a
/// 32-bit length overwritten, or the file cut. Any outcome but a
/// panic (in the browser: a trapped worker) passes.
#[test]
fn randomly_damaged_dicom_files_never_panic_the_decoder() {
    // A count, not a time budget: the same damage on every run, however busy the machine is
    // (a budget of 20 s ran only 94 cases while CI's other tests shared the cores).
    let cases = 100;
    let files: Vec<Vec<u8>> = ["chest", "pydicom"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(repo().join("samples/dicom").join(dir)).unwrap())
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "dcm"))
        .map(|path| std::fs::read(path).unwrap())
        .collect();
    assert!(files.len() >= 20, "{} sample files", files.len());
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    for _ in 0..cases {
        let mut bytes = files[rng.gen_range(0..files.len())].clone();
        match rng.gen_range(0..4) {
            0 => {
                let at = rng.gen_range(132..bytes.len());
                bytes[at] = rng.gen();
            }
            1 => {
                let at = rng.gen_range(132..bytes.len());
                let end = (at + rng.gen_range(1..64)).min(bytes.len());
                rng.fill(&mut bytes[at..end]);
            }
            2 => {
                // A length field: small values, so that damage cannot make dicom-rs zero-fill
                // gigabytes before it finds the data short.
                let at = rng.gen_range(132..bytes.len() - 4);
                let length: u32 = rng.gen_range(0..1 << 20);
                bytes[at..at + 4].copy_from_slice(&length.to_le_bytes());
            }
            _ => bytes.truncate(rng.gen_range(132..bytes.len())),
        }
        let _ = dicom::read(&bytes);
    }
}
