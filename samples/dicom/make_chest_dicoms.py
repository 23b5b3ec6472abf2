"""Writes the DICOM chest X-rays in samples/dicom/chest/ from the bundled sample PNGs.

Each file is what an X-ray system or a PACS export could send: 12-bit stored values with a VOI
window that shows them as the PNG's 8-bit levels, so HEXray's preprocessing must give the PNG's
pixels back (within rounding) from every one of them (`dicom/tests/decode.rs`).

    python3 -m venv /tmp/dicom-venv
    /tmp/dicom-venv/bin/pip install pydicom==3.0.2 numpy pillow python-gdcm==3.2.6 \
        imagecodecs==2026.3.6
    /tmp/dicom-venv/bin/python samples/dicom/make_chest_dicoms.py

pydicom writes the uncompressed and RLE files; GDCM (python-gdcm), a C++ toolkit independent of
the Rust decoders under test, compresses the JPEG and JPEG 2000 ones, except 12-bit lossy JPEG:
python-gdcm 3.2.6 writes 16-bit "lossy" samples under that transfer syntax (and cannot read
12-bit ones), so libjpeg-turbo, through imagecodecs, compresses that file. The output is
deterministic: UIDs are derived from the file names.
"""

import os
import tempfile
from pathlib import Path

import gdcm
import imagecodecs
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGExtended12Bit,
    RLELossless,
    generate_uid,
)

SAMPLES = Path(__file__).resolve().parent.parent
OUT = SAMPLES / "dicom" / "chest"

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"

# Stored value of 8-bit level v: 16·v + 8, in 8..4088 of 12 bits. The linear window of
# PS3.3 C.11.2.1.2.1 with centre 2048.5 and width 4081 maps it back to exactly v.
WINDOW_CENTER = 2048.5
WINDOW_WIDTH = 4081


def stored_12_bit(levels):
    return levels.astype(np.uint16) * 16 + 8


def dataset(name, levels, *, modality, sop_class, photometric, stored, bits, window, rescale=None):
    """A chest radiograph data set, uncompressed explicit VR little endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[name, "instance"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[name, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[name, "series"])
    ds.StudyDate = "20240131"
    ds.StudyTime = "093000"
    ds.Modality = modality
    ds.ConversionType = "WSD"
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "HEXRAY-TEST-0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.Rows, ds.Columns = levels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16 if bits > 8 else 8
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = 1, rescale
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    dtype = np.uint16 if bits > 8 else np.uint8
    ds.PixelData = stored.astype(dtype).tobytes()
    return ds


def png_levels(path):
    return np.asarray(Image.open(SAMPLES / path).convert("L"))


def save(ds, name):
    path = OUT / name
    ds.save_as(path, enforce_file_format=True)
    return path


def gdcm_transcode(source, name, syntax):
    """Compresses `source` with GDCM into `name`."""
    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read(), source
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(syntax))
    change.SetInput(reader.GetImage())
    assert change.Change(), name
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(OUT / name))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write(), name


def jpeg_extended_12bit(ds, stored, name):
    """Compresses `ds` (12 bits stored) as 12-bit lossy JPEG (process 4) with libjpeg-turbo."""
    frame = imagecodecs.jpeg8_encode(stored, level=90, bitspersample=12)
    assert frame[:2] == b"\xff\xd8" and b"\xff\xc1\x00\x0b\x0c" in frame, "12-bit SOF1"
    ds.file_meta.TransferSyntaxUID = JPEGExtended12Bit
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{stored.size * 2 / len(frame):.2f}"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    save(ds, name)


def main():
    OUT.mkdir(parents=True, exist_ok=True)

    # (a) A computed radiography plate reader: MONOCHROME1 (low values white), 12 bits,
    # RLE lossless, stored values offset by a rescale intercept.
    covid = png_levels("covid-cxr-actualmed/covid-1.png")
    ds = dataset(
        "covid-1.cr-rle-mono1",
        covid,
        modality="CR",
        sop_class=CR_IMAGE_STORAGE,
        photometric="MONOCHROME1",
        stored=stored_12_bit(255 - covid),
        bits=12,
        window=(WINDOW_CENTER - 2048, WINDOW_WIDTH),
        rescale=-2048,
    )
    ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    save(ds, "covid-1.cr-rle-mono1.dcm")

    # (b) A digital radiography system: MONOCHROME2, 12 bits, uncompressed.
    normal = png_levels("covid-cxr-actualmed/normal-1.png")
    save(
        dataset(
            "normal-1.dx-mono2",
            normal,
            modality="DX",
            sop_class=DX_FOR_PRESENTATION,
            photometric="MONOCHROME2",
            stored=stored_12_bit(normal),
            bits=12,
            window=(WINDOW_CENTER, WINDOW_WIDTH),
        ),
        "normal-1.dx-mono2.dcm",
    )

    # The compressed transfer syntaxes, on the 28×28 PneumoniaMNIST samples to keep the files
    # small: 12 bits as above, and 8 bits for lossy JPEG (stored value = level; the window
    # centre 128, width 256 is the identity).
    with tempfile.TemporaryDirectory() as tmp:
        for png, bits, syntax, name in [
            ("test-0000-pneumonia", 12, gdcm.TransferSyntax.JPEGLosslessProcess14_1, "jpeg-lossless-sv1"),
            ("test-0234-normal", 12, gdcm.TransferSyntax.JPEGLosslessProcess14, "jpeg-lossless"),
            ("test-0001-pneumonia", 12, gdcm.TransferSyntax.JPEG2000Lossless, "j2k-lossless"),
            ("test-0235-normal", 12, gdcm.TransferSyntax.JPEG2000, "j2k"),
            ("test-0002-pneumonia", 8, gdcm.TransferSyntax.JPEGBaselineProcess1, "jpeg-baseline"),
            ("test-0236-normal", 8, gdcm.TransferSyntax.JPEGExtendedProcess2_4, "jpeg-extended-8bit"),
        ]:
            levels = png_levels(f"pneumoniamnist/{png}.png")
            stored, window = (
                (stored_12_bit(levels), (WINDOW_CENTER, WINDOW_WIDTH)) if bits == 12 else (levels, (128, 256))
            )
            ds = dataset(
                f"{png}.{name}",
                levels,
                modality="DX",
                sop_class=DX_FOR_PRESENTATION,
                photometric="MONOCHROME2",
                stored=stored,
                bits=bits,
                window=window,
            )
            source = Path(tmp) / f"{png}.dcm"
            ds.save_as(source, enforce_file_format=True)
            gdcm_transcode(source, f"{png}.{name}.dcm", syntax)

    # (c) 12-bit lossy JPEG (JPEG Extended, process 4), as CR/DX systems and PACS compress
    # radiographs: the full-size image, so that the 28×28 input is made from real lossy data.
    # Quality 90 keeps every stored value within ±17 of 16·v + 8, so within one level of v.
    stored = stored_12_bit(covid)
    ds = dataset(
        "covid-1.jpeg-extended-12bit",
        covid,
        modality="DX",
        sop_class=DX_FOR_PRESENTATION,
        photometric="MONOCHROME2",
        stored=stored,
        bits=12,
        window=(WINDOW_CENTER, WINDOW_WIDTH),
    )
    jpeg_extended_12bit(ds, stored, "covid-1.jpeg-extended-12bit.dcm")

    for path in sorted(OUT.iterdir()):
        ds = pydicom.dcmread(path)
        print(f"{path.name}: {ds.file_meta.TransferSyntaxUID.name}, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
