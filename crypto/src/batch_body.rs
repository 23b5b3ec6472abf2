//! Several blobs in one HTTP body: how a batch of encrypted images goes up and its encrypted
//! outputs come back. The layout is `HXB1`, a little-endian u32 count, then for each blob a
//! little-endian u32 length and its bytes. Each blob is then read with its own size limit.

use crate::error::CryptoError;

const MAGIC: &[u8; 4] = b"HXB1";
const WHAT: &str = "batch body";

/// Packs `blobs` into one body: `HXB1`, a little-endian u32 count, then each blob as a
/// little-endian u32 length and its bytes.
///
/// ```
/// use hexray_crypto::batch_body::{pack, unpack};
///
/// let body = pack(&[b"first".as_slice(), b"second".as_slice()]);
/// assert_eq!(&body[..4], b"HXB1");
/// assert_eq!(unpack(&body, 16).unwrap(), [b"first".as_slice(), b"second".as_slice()]);
/// // More blobs than allowed, or a body cut short, are refused.
/// assert!(unpack(&body, 1).is_err());
/// assert!(unpack(&body[..body.len() - 1], 16).is_err());
/// ```
pub fn pack<B: AsRef<[u8]>>(blobs: &[B]) -> Vec<u8> {
    let total: usize = blobs.iter().map(|b| 4 + b.as_ref().len()).sum();
    let mut out = Vec::with_capacity(8 + total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(blobs.len() as u32).to_le_bytes());
    for blob in blobs {
        let blob = blob.as_ref();
        out.extend_from_slice(&(blob.len() as u32).to_le_bytes());
        out.extend_from_slice(blob);
    }
    out
}

/// Splits a body into its blobs, refusing more than `max_count` of them, a wrong header, a
/// truncated blob or bytes left over.
pub fn unpack(body: &[u8], max_count: usize) -> Result<Vec<&[u8]>, CryptoError> {
    let malformed = |reason: String| CryptoError::Malformed { what: WHAT, reason };
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| malformed("it does not start with HXB1".into()))?;
    let (count, mut rest) = read_u32(rest).ok_or_else(|| malformed("it has no count".into()))?;
    if count == 0 || count as usize > max_count {
        return Err(CryptoError::BatchSize {
            found: count as usize,
            max: max_count,
        });
    }
    let mut blobs = Vec::with_capacity(count as usize);
    for i in 0..count {
        let (len, after) =
            read_u32(rest).ok_or_else(|| malformed(format!("blob {i} has no length")))?;
        if after.len() < len as usize {
            return Err(malformed(format!(
                "blob {i} claims {len} bytes but {} remain",
                after.len()
            )));
        }
        let (blob, after) = after.split_at(len as usize);
        blobs.push(blob);
        rest = after;
    }
    if !rest.is_empty() {
        return Err(malformed(format!(
            "{} bytes follow the last blob",
            rest.len()
        )));
    }
    Ok(blobs)
}

fn read_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*head), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let blobs = [b"one".to_vec(), Vec::new(), vec![7; 300]];
        let body = pack(&blobs);
        assert_eq!(
            unpack(&body, 3).unwrap(),
            blobs.iter().map(Vec::as_slice).collect::<Vec<_>>()
        );
    }

    #[test]
    fn every_truncation_and_bad_header_is_an_error() {
        let body = pack(&[b"abc".to_vec(), b"defg".to_vec()]);
        for cut in 0..body.len() {
            assert!(unpack(&body[..cut], 8).is_err(), "cut at {cut}");
        }
        let mut extra = body.clone();
        extra.push(0);
        assert!(unpack(&extra, 8).is_err());
        assert!(matches!(
            unpack(&body, 1),
            Err(CryptoError::BatchSize { found: 2, max: 1 })
        ));
        assert!(matches!(
            unpack(&pack::<Vec<u8>>(&[]), 8),
            Err(CryptoError::BatchSize { found: 0, .. })
        ));
        let mut wrong = body;
        wrong[0] = b'X';
        assert!(unpack(&wrong, 8).unwrap_err().to_string().contains("HXB1"));
    }
}
