//! Bytes in lowercase hex: how every digest and id in HEXray is written (a model's
//! fingerprint, a key's id, a job's id, an error's reference). One function, so that every
//! party writes an id the same way and a client can compare one it computed with the server's.

/// `bytes` as lowercase hex, two digits per byte.
///
/// ```
/// assert_eq!(hexray_model::hex::encode(&[0x00, 0xab, 0x7f]), "00ab7f");
/// ```
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
