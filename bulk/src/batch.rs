//! Encrypted batches and results, and their wire format.
//!
//! A batch is one ciphertext per pixel, each packing that pixel of every image; the results
//! are one ciphertext per class. Both travel as
//!
//! ```text
//! HEXRAY-BULK <kind> 1\n
//! {"parameters": "<name>", "images": n, "ciphertexts": m}\n
//! m × ( u32 little-endian length, then fhe.rs's bytes for one ciphertext )
//! ```
//!
//! so that a reader can check the header before the body arrives, and read the ciphertexts one
//! at a time from a file or a socket without holding the raw bytes.

use std::io::{BufRead, Read, Write};
use std::marker::PhantomData;

use fhe::bfv::Ciphertext;
use fhe_traits::{DeserializeParametrized, Serialize};
use serde::{Deserialize, Serialize as SerdeSerialize};

use crate::error::BulkError;
use crate::parameters::{bfv, DEGREE, NAME};

/// Largest serialized ciphertext accepted: two polynomials of N coefficients under four
/// 55-bit primes is 2 × 8192 × 4 × 55 bits ≈ 451 KB.
pub const MAX_CIPHERTEXT_BYTES: usize = 512 << 10;

/// Ciphertexts that pack one value of many images each; `K` says which ones.
pub struct Packed<K: Kind> {
    images: usize,
    ciphertexts: Vec<Ciphertext>,
    kind: PhantomData<K>,
}

/// What a [`Packed`] holds, and how its wire format names it.
pub trait Kind {
    /// The word in the magic line.
    const MAGIC: &'static str;
    /// What errors call it.
    const WHAT: &'static str;
}

/// A job's images: ciphertext i holds pixel i of every image.
pub enum Batch {}
/// A job's results: ciphertext c holds class c's output integer of every image.
pub enum Outputs {}

impl Kind for Batch {
    const MAGIC: &'static str = "BATCH";
    const WHAT: &'static str = "encrypted batch";
}

impl Kind for Outputs {
    const MAGIC: &'static str = "OUTPUTS";
    const WHAT: &'static str = "encrypted results";
}

/// The images of one job, packed and encrypted.
pub type EncryptedBatch = Packed<Batch>;
/// A job's results, encrypted.
pub type EncryptedOutputs = Packed<Outputs>;

#[derive(SerdeSerialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    parameters: String,
    images: usize,
    ciphertexts: usize,
}

impl<K: Kind> Packed<K> {
    pub(crate) fn new(images: usize, ciphertexts: Vec<Ciphertext>) -> Self {
        Packed {
            images,
            ciphertexts,
            kind: PhantomData,
        }
    }

    /// How many images (slots) are in use.
    pub fn images(&self) -> usize {
        self.images
    }

    /// The ciphertexts, in order.
    pub fn ciphertexts(&self) -> &[Ciphertext] {
        &self.ciphertexts
    }

    /// The images in use and the ciphertexts, moved out.
    pub(crate) fn into_parts(self) -> (usize, Vec<Ciphertext>) {
        (self.images, self.ciphertexts)
    }

    /// Writes the wire format; returns the bytes written.
    pub fn write_to(&self, writer: impl Write) -> Result<u64, BulkError> {
        write_wire(writer, K::MAGIC, self.images, &self.ciphertexts)
    }

    /// The wire format in memory.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out)
            .expect("writing to memory cannot fail");
        out
    }

    /// Reads the wire format, one ciphertext at a time, refusing at the first fault. The
    /// reader says how many ciphertexts it needs (a model's input pixels for a batch, its
    /// classes for results), so a header that declares others is refused before any is read.
    pub fn read_from(reader: impl Read, ciphertexts: usize) -> Result<Self, BulkError> {
        let mut read = Vec::with_capacity(ciphertexts);
        let images = read_wire(reader, K::MAGIC, K::WHAT, ciphertexts, |ct| read.push(ct))?;
        Ok(Packed::new(images, read))
    }

    /// Checks the wire format as [`read_from`](Self::read_from) does, holding one ciphertext
    /// at a time; returns how many images it packs. For a server that checks an upload before
    /// it queues it, without the 400 MB a decoded batch takes.
    pub fn check(reader: impl Read, ciphertexts: usize) -> Result<usize, BulkError> {
        read_wire(reader, K::MAGIC, K::WHAT, ciphertexts, drop)
    }
}

fn magic(kind: &str) -> String {
    format!("HEXRAY-BULK {kind} 1\n")
}

fn write_wire(
    mut writer: impl Write,
    kind: &str,
    images: usize,
    ciphertexts: &[Ciphertext],
) -> Result<u64, BulkError> {
    let io = |e: std::io::Error| BulkError::Scheme(format!("cannot write: {e}"));
    let header = serde_json::to_string(&Header {
        parameters: NAME.to_owned(),
        images,
        ciphertexts: ciphertexts.len(),
    })
    .expect("a header serializes");
    let mut written = 0u64;
    for part in [magic(kind), header + "\n"] {
        writer.write_all(part.as_bytes()).map_err(io)?;
        written += part.len() as u64;
    }
    for ct in ciphertexts {
        written += write_prefixed(&mut writer, &ct.to_bytes()).map_err(io)?;
    }
    Ok(written)
}

/// Writes `bytes` with their u32 little-endian length before them; returns the bytes written.
pub(crate) fn write_prefixed(mut writer: impl Write, bytes: &[u8]) -> std::io::Result<u64> {
    writer.write_all(&(bytes.len() as u32).to_le_bytes())?;
    writer.write_all(bytes)?;
    Ok(4 + bytes.len() as u64)
}

/// Reads one length-prefixed blob of at most `limit` bytes; the reason it cannot, in words.
pub(crate) fn read_prefixed(mut reader: impl Read, limit: usize) -> Result<Vec<u8>, String> {
    let mut length = [0u8; 4];
    reader
        .read_exact(&mut length)
        .map_err(|_| "missing".to_owned())?;
    let length = u32::from_le_bytes(length) as usize;
    if length > limit {
        return Err(format!("{length} bytes, over the {limit}-byte limit"));
    }
    let mut bytes = vec![0; length];
    reader
        .read_exact(&mut bytes)
        .map_err(|_| "truncated".to_owned())?;
    Ok(bytes)
}

/// Reads the wire format, giving each checked ciphertext to `keep`; returns the images.
fn read_wire(
    reader: impl Read,
    kind: &str,
    what: &'static str,
    needed: usize,
    mut keep: impl FnMut(Ciphertext),
) -> Result<usize, BulkError> {
    let fault = |reason: String| BulkError::Deserialize { what, reason };
    let mut reader = std::io::BufReader::new(reader);
    let mut line = Vec::new();
    let mut read_line = |reader: &mut std::io::BufReader<_>, limit: u64| {
        line.clear();
        reader
            .by_ref()
            .take(limit)
            .read_until(b'\n', &mut line)
            .map_err(|e| fault(e.to_string()))?;
        String::from_utf8(line.clone()).map_err(|_| fault("the header is not UTF-8".into()))
    };
    let expected = magic(kind);
    if read_line(&mut reader, expected.len() as u64)? != expected {
        return Err(fault(format!(
            "it does not start with `{}`",
            expected.trim_end()
        )));
    }
    let header: Header = serde_json::from_str(read_line(&mut reader, 4096)?.trim_end())
        .map_err(|e| fault(format!("bad header: {e}")))?;
    if header.parameters != NAME {
        return Err(BulkError::ParameterMismatch {
            what,
            expected: NAME.to_owned(),
            found: header.parameters.chars().take(64).collect(),
        });
    }
    if header.images == 0 || header.images > DEGREE {
        return Err(fault(format!(
            "it declares {} images; a batch holds 1 to {DEGREE}",
            header.images
        )));
    }
    if header.ciphertexts != needed {
        return Err(BulkError::Count {
            what,
            unit: "ciphertexts",
            expected: needed,
            found: header.ciphertexts,
        });
    }
    for index in 0..needed {
        let bytes = read_prefixed(&mut reader, MAX_CIPHERTEXT_BYTES)
            .map_err(|reason| fault(format!("ciphertext {index} of {needed}: {reason}")))?;
        keep(
            canonical_ciphertext(&bytes)
                .map_err(|reason| fault(format!("ciphertext {index}: {reason}")))?,
        );
    }
    let mut rest = [0u8; 1];
    if reader.read(&mut rest).map_err(|e| fault(e.to_string()))? != 0 {
        return Err(fault(format!(
            "bytes follow the {needed} declared ciphertexts"
        )));
    }
    Ok(header.images)
}

/// A ciphertext from bytes a client sent, or why it is refused. fhe.rs reads what its
/// protobuf allows (short polynomials, any representation, unreduced coefficients), and
/// fhe-math asserts on some of it later; so the bytes must be fhe.rs's own encoding of a
/// two-part ciphertext at the full modulus, in the NTT representation every operation expects.
fn canonical_ciphertext(bytes: &[u8]) -> Result<Ciphertext, String> {
    let parameters = bfv();
    let ct = Ciphertext::from_bytes(bytes, &parameters).map_err(|e| e.to_string())?;
    if ct.to_bytes() != bytes {
        return Err("not in the canonical encoding".into());
    }
    if ct.len() != 2 {
        return Err(format!("{} parts, not 2", ct.len()));
    }
    // `Ciphertext::new` checks each part's representation and context.
    let checked = Ciphertext::new(ct.to_vec(), &parameters).map_err(|e| e.to_string())?;
    let full = parameters.context_at_level(0).map_err(|e| e.to_string())?;
    if checked[0].ctx() != full {
        return Err("not at the full modulus".into());
    }
    Ok(checked)
}
