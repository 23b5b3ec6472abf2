//! Versioned envelopes for everything HEXray sends or stores.
//!
//! TFHE-rs's safe serialization needs a type name ([`Named`]) and a version history
//! ([`Versionize`]). Shortint keys and core ciphertext lists have the latter only, so each blob
//! travels in a small envelope of ours that adds the name (`hexray::…`), so that a client key
//! can never be read as a server key, and a version for future format changes.

use serde::{Deserialize, Serialize};
use tfhe::core_crypto::prelude::packed_integers::PackedIntegers;
use tfhe::core_crypto::prelude::SeededLweCiphertextListOwned;
use tfhe::named::Named;
use tfhe::safe_serialization::{safe_serialize, DeserializationConfig};
use tfhe::shortint;
use tfhe_versionable::{Versionize, VersionsDispatch};

use crate::error::CryptoError;

#[derive(Serialize, Deserialize, Versionize)]
#[versionize(ClientKeyEnvelopeVersions)]
pub(crate) struct ClientKeyEnvelope(pub shortint::ClientKey);

#[derive(VersionsDispatch)]
#[allow(dead_code)] // built by the code tfhe-versionable generates
pub(crate) enum ClientKeyEnvelopeVersions {
    V0(ClientKeyEnvelope),
}

impl Named for ClientKeyEnvelope {
    const NAME: &'static str = "hexray::ClientKey";
}

#[derive(Serialize, Deserialize, Versionize)]
#[versionize(ServerKeyEnvelopeVersions)]
pub(crate) struct ServerKeyEnvelope(pub shortint::CompressedServerKey);

#[derive(VersionsDispatch)]
#[allow(dead_code)] // built by the code tfhe-versionable generates
pub(crate) enum ServerKeyEnvelopeVersions {
    V0(ServerKeyEnvelope),
}

impl Named for ServerKeyEnvelope {
    const NAME: &'static str = "hexray::CompressedServerKey";
}

/// An encrypted input image: seeded LWE ciphertexts (one body each, one seed for all).
#[derive(Serialize, Deserialize, Versionize)]
#[versionize(ImageEnvelopeVersions)]
pub(crate) struct ImageEnvelope {
    pub parameter_set: String,
    pub ciphertexts: SeededLweCiphertextListOwned<u64>,
}

#[derive(VersionsDispatch)]
#[allow(dead_code)] // built by the code tfhe-versionable generates
pub(crate) enum ImageEnvelopeVersions {
    V0(ImageEnvelope),
}

impl Named for ImageEnvelope {
    const NAME: &'static str = "hexray::EncryptedImage";
}

/// Encrypted output accumulators, compressed: small-key ciphertexts modulo 2^16, bit-packed.
#[derive(Serialize, Deserialize, Versionize)]
#[versionize(OutputEnvelopeVersions)]
pub(crate) struct OutputEnvelope {
    pub parameter_set: String,
    pub ciphertexts: PackedIntegers<u64>,
}

#[derive(VersionsDispatch)]
#[allow(dead_code)] // built by the code tfhe-versionable generates
pub(crate) enum OutputEnvelopeVersions {
    V0(OutputEnvelope),
}

impl Named for OutputEnvelope {
    // Renamed with the compression: a client from before it refuses these by name.
    const NAME: &'static str = "hexray::CompressedOutput";
}

/// Serialises an envelope; `limit` is the same bound the reader enforces, so a blob too large
/// for any reader is refused here, in words, rather than written and then refused.
pub(crate) fn to_bytes<T: Serialize + Versionize + Named>(
    value: &T,
    limit: u64,
    what: &'static str,
) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::new();
    safe_serialize(value, &mut out, limit).map_err(|e| CryptoError::Serialize {
        what,
        reason: e.to_string(),
    })?;
    Ok(out)
}

/// Reads an envelope, refusing more than `limit` bytes before allocating them.
pub(crate) fn from_bytes<T>(bytes: &[u8], limit: u64, what: &'static str) -> Result<T, CryptoError>
where
    T: serde::de::DeserializeOwned + tfhe::Unversionize + Named,
{
    if bytes.len() as u64 > limit {
        return Err(CryptoError::Deserialize {
            what,
            reason: format!("{} bytes is over the {limit}-byte limit", bytes.len()),
        });
    }
    DeserializationConfig::new(limit)
        .disable_conformance()
        .deserialize_from(bytes)
        .map_err(|e| CryptoError::Deserialize {
            what,
            reason: e.to_string(),
        })
}
