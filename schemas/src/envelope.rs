//! The COSE_Mac0 envelope (RFC 9052, tag 17) around every event and QR payload.
//!
//! Protected header `{1: 5, 4: kid}` (HMAC 256/256, kid as UTF-8 bytes) and nothing else;
//! unprotected header empty; external AAD empty; the full 32-byte tag. Opening is split in two
//! so that the caller can look the key up by kid in between:
//! [`Unverified::parse`] checks the structure, [`Unverified::verify`] checks the MAC in
//! constant time and hands out the payload.

use crate::event::{Event, SignerError};
use crate::fields::DecodeError;
use crate::ids::{IdError, Kid};
use crate::keys::Key;
use coset::{iana, CoseMac0, CoseMac0Builder, HeaderBuilder, TaggedCborSerializable};
use thiserror::Error;

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvelopeError {
    /// Bigger than the size limit.
    #[error("envelope is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// Not a tagged COSE_Mac0 structure.
    #[error("not a COSE_Mac0 (tag 17) structure: {0}")]
    Malformed(String),
    /// A valid COSE_Mac0 not in the one encoding pairbus accepts (it re-encodes differently).
    #[error("COSE_Mac0 is not deterministically encoded")]
    NonCanonical,
    /// The protected header's algorithm is not HMAC 256/256 (5).
    #[error("protected header: algorithm must be HMAC 256/256 (5)")]
    BadAlgorithm,
    /// No kid in the protected header.
    #[error("protected header: kid (4) is missing")]
    MissingKid,
    /// The kid is not a valid pairbus kid.
    #[error("protected header: {0}")]
    BadKid(IdError),
    /// Headers other than alg and kid, or anything in the unprotected header.
    #[error("unexpected header parameters: only alg (1) and kid (4), both protected, are allowed")]
    ExtraHeaders,
    /// No payload.
    #[error("the payload is missing (detached payloads are not supported)")]
    MissingPayload,
    /// The kid names no principal the verifier knows.
    #[error("unknown kid `{0}`")]
    UnknownKid(Kid),
    /// The MAC does not verify with the kid's key.
    #[error("MAC does not verify for kid `{0}`")]
    BadMac(Kid),
    /// The MAC verified but the payload is not a valid event.
    #[error("payload: {0}")]
    Payload(#[from] DecodeError),
    /// The payload's `src` is not the envelope's kid.
    #[error("payload `src` {src} does not equal the envelope kid {kid}")]
    KidMismatch {
        /// The envelope's kid.
        kid: Kid,
        /// The payload's `src`.
        src: Kid,
    },
    /// The signer may not make this event.
    #[error(transparent)]
    Signer(#[from] SignerError),
}

/// Wraps `payload` in a COSE_Mac0 MAC'd with `key` under `kid`.
pub fn seal_payload(kid: &Kid, key: &Key, payload: Vec<u8>) -> Vec<u8> {
    let protected = HeaderBuilder::new()
        .algorithm(iana::Algorithm::HMAC_256_256)
        .key_id(kid.to_string().into_bytes())
        .build();
    CoseMac0Builder::new()
        .protected(protected)
        .payload(payload)
        .create_tag(&[], |data| key.mac(&[data]).to_vec())
        .build()
        .to_tagged_vec()
        .expect("encoding a COSE_Mac0 into a Vec never fails")
}

/// Signs `event` with its principal's key: the kid is `event.src`.
pub fn seal(event: &Event, key: &Key) -> Vec<u8> {
    seal_payload(&event.src, key, event.encode())
}

/// A structurally valid COSE_Mac0 whose MAC has not been checked yet.
#[derive(Debug)]
pub struct Unverified {
    kid: Kid,
    mac0: Mac0,
}

#[derive(Debug)]
enum Mac0 {
    /// Parsed by [`Unverified::parse_fast`]: the input's protected header bstr (head included),
    /// payload bstr head, payload and tag, exactly as they will be MAC'd.
    Fast {
        protected_bstr: Vec<u8>,
        payload_head: ([u8; 9], usize),
        payload: Vec<u8>,
        tag: [u8; 32],
    },
    /// Parsed by coset ([`Unverified::parse_reference`]).
    Coset(Box<CoseMac0>),
}

impl Unverified {
    /// Parses and checks the structure of at most `limit` bytes.
    ///
    /// Fast accept, slow refuse: an envelope in the one layout pairbus writes is taken apart
    /// directly ([`Unverified::parse_fast`]); anything else goes through coset
    /// ([`Unverified::parse_reference`]), which produces every error. Both accept exactly the
    /// same inputs with the same kid, payload and MAC check (differential tests in
    /// `tests/envelope.rs`, fuzz target `fast_paths`).
    pub fn parse(bytes: &[u8], limit: usize) -> Result<Self, EnvelopeError> {
        if bytes.len() <= limit {
            if let Some(u) = Self::parse_fast(bytes) {
                return Ok(u);
            }
        }
        Self::parse_reference(bytes, limit)
    }

    /// `Some` only for `d1 84 | bstr(a2 01 05 04 bstr(kid)) | a0 | bstr(payload) | 58 20 tag`
    /// with every head in its shortest form, nothing after the tag, and a valid kid: exactly
    /// the envelopes [`Unverified::parse_reference`] accepts, which re-encode to themselves.
    fn parse_fast(bytes: &[u8]) -> Option<Self> {
        use crate::cbor::{fast_head, fast_slice};
        use ciborium_ll::Header;
        // Tag 17 and an array of 4, each in one byte.
        if bytes.get(..2)? != [0xd1, 0x84] {
            return None;
        }
        let Some((Header::Bytes(Some(len)), pos)) = fast_head(bytes, 2) else {
            return None;
        };
        let (protected, after_protected) = fast_slice(bytes, pos, len)?;
        let protected_bstr = &bytes[2..after_protected];
        // {1: 5, 4: kid}: alg HMAC 256/256, then the kid bstr filling the rest.
        if protected.get(..4)? != [0xa2, 0x01, 0x05, 0x04] {
            return None;
        }
        let Some((Header::Bytes(Some(kid_len)), kid_pos)) = fast_head(protected, 4) else {
            return None;
        };
        let (kid_bytes, kid_end) = fast_slice(protected, kid_pos, kid_len)?;
        if kid_end != protected.len() || kid_bytes.is_empty() {
            return None;
        }
        let kid = Kid::parse(std::str::from_utf8(kid_bytes).ok()?).ok()?;
        // Empty unprotected header.
        if *bytes.get(after_protected)? != 0xa0 {
            return None;
        }
        let head_pos = after_protected + 1;
        let Some((Header::Bytes(Some(len)), pos)) = fast_head(bytes, head_pos) else {
            return None;
        };
        let mut payload_head = [0u8; 9];
        payload_head[..pos - head_pos].copy_from_slice(&bytes[head_pos..pos]);
        let (payload, after_payload) = fast_slice(bytes, pos, len)?;
        // The full 32-byte tag, and nothing after it.
        if bytes.get(after_payload..after_payload + 2)? != [0x58, 0x20] {
            return None;
        }
        let tag: [u8; 32] = bytes.get(after_payload + 2..)?.try_into().ok()?;
        Some(Unverified {
            kid,
            mac0: Mac0::Fast {
                protected_bstr: protected_bstr.to_vec(),
                payload_head: (payload_head, pos - head_pos),
                payload: payload.to_vec(),
                tag,
            },
        })
    }

    /// The structure check written with coset: parse, check the headers, re-encode and compare
    /// with the input. [`Unverified::parse`] gives exactly its results; it is public only so
    /// that the tests and fuzz targets can compare the two.
    #[doc(hidden)]
    pub fn parse_reference(bytes: &[u8], limit: usize) -> Result<Self, EnvelopeError> {
        if bytes.len() > limit {
            return Err(EnvelopeError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        let mac0 = CoseMac0::from_tagged_slice(bytes)
            .map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        let h = &mac0.protected.header;
        if h.alg
            != Some(coset::RegisteredLabelWithPrivate::Assigned(
                iana::Algorithm::HMAC_256_256,
            ))
        {
            return Err(EnvelopeError::BadAlgorithm);
        }
        if h.key_id.is_empty() {
            return Err(EnvelopeError::MissingKid);
        }
        let kid_text = std::str::from_utf8(&h.key_id)
            .map_err(|_| EnvelopeError::BadKid(IdError::BadKid(hex::encode(&h.key_id))))?;
        let kid = Kid::parse(kid_text).map_err(EnvelopeError::BadKid)?;
        let expected = HeaderBuilder::new()
            .algorithm(iana::Algorithm::HMAC_256_256)
            .key_id(h.key_id.clone())
            .build();
        if *h != expected || mac0.unprotected != coset::Header::default() {
            return Err(EnvelopeError::ExtraHeaders);
        }
        if mac0.payload.is_none() {
            return Err(EnvelopeError::MissingPayload);
        }
        // One encoding only: re-encoding must give the input back. This refuses
        // non-shortest lengths, indefinite lengths and the like around the MAC'd parts.
        // coset would write the protected header back from the bytes it was read from
        // (`original_data`); dropping them makes the comparison cover the header map too
        // (key order, shortest integers). When the comparison passes, they are equal anyway.
        let mut canonical = mac0.clone();
        canonical.protected.original_data = None;
        let again = canonical
            .to_tagged_vec()
            .map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if again != bytes {
            return Err(EnvelopeError::NonCanonical);
        }
        Ok(Unverified {
            kid,
            mac0: Mac0::Coset(Box::new(mac0)),
        })
    }

    /// The kid of the protected header (not yet authenticated).
    pub fn kid(&self) -> &Kid {
        &self.kid
    }

    /// Checks the full 32-byte tag in constant time and returns the authenticated payload.
    pub fn verify(self, key: &Key) -> Result<(Kid, Vec<u8>), EnvelopeError> {
        let kid = self.kid;
        let mac0 = match self.mac0 {
            Mac0::Fast {
                protected_bstr,
                payload_head: (head, head_len),
                payload,
                tag,
            } => {
                // MAC_structure = ["MAC0", protected, external_aad h'', payload] (RFC 9052
                // §6.3), encoded as coset encodes it: the protected and payload bstrs are the
                // input's own, already in their shortest form.
                let mac_structure: [&[u8]; 6] = [
                    &[0x84, 0x64],
                    b"MAC0",
                    &protected_bstr,
                    &[0x40],
                    &head[..head_len],
                    &payload,
                ];
                return if key.verify(&mac_structure, &tag) {
                    Ok((kid, payload))
                } else {
                    Err(EnvelopeError::BadMac(kid))
                };
            }
            Mac0::Coset(mac0) => *mac0,
        };
        mac0.verify_payload_tag(
            &[],
            || EnvelopeError::MissingPayload,
            |tag, data| {
                if key.verify(&[data], tag) {
                    Ok(())
                } else {
                    Err(EnvelopeError::BadMac(kid.clone()))
                }
            },
        )?;
        let payload = mac0.payload.unwrap_or_default();
        Ok((kid, payload))
    }
}

/// Opens a signed event: structure, key lookup by kid, MAC, strict payload decoding,
/// `src` = kid, and the signer rules of the catalogue.
pub fn open_event(
    bytes: &[u8],
    limit: usize,
    key_for: impl FnOnce(&Kid) -> Option<Key>,
) -> Result<Event, EnvelopeError> {
    let unverified = Unverified::parse(bytes, limit)?;
    let key = key_for(unverified.kid())
        .ok_or_else(|| EnvelopeError::UnknownKid(unverified.kid().clone()))?;
    let (kid, payload) = unverified.verify(&key)?;
    let event = Event::decode(&payload, limit)?;
    if event.src != kid {
        return Err(EnvelopeError::KidMismatch {
            kid,
            src: event.src,
        });
    }
    event.check_signer()?;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventType, MAX_EVENT_SIZE};
    use crate::vectors::{root, sample_events};

    /// A COSE_Mac0 around `payload` with the given protected header bytes, correctly MAC'd
    /// (both shorter than 256 bytes).
    fn mac0_with_protected(protected: &[u8], payload: &[u8], key: &Key) -> Vec<u8> {
        let bstr = |b: &[u8]| [&[0x58, b.len() as u8][..], b].concat();
        let (ph, pl) = (bstr(protected), bstr(payload));
        let tag = key.mac(&[&[0x84, 0x64], b"MAC0", &ph, &[0x40], &pl]);
        [&[0xd1, 0x84][..], &ph, &[0xa0], &pl, &[0x58, 0x20], &tag].concat()
    }

    /// The fast path must actually take the envelopes pairbus writes.
    #[test]
    fn fast_path_takes_every_sample_envelope() {
        for event in sample_events() {
            let key = root().derive(&event.src);
            let cose = seal(&event, &key);
            let u = Unverified::parse_fast(&cose).expect("fast path refused a sealed sample");
            assert!(matches!(u.mac0, Mac0::Fast { .. }));
            assert_eq!(u.verify(&key).unwrap(), (event.src.clone(), event.encode()));
        }
    }

    /// Found with the fuzz target's round-trip check: the protected header used to be compared
    /// as a decoded map only, so another encoding of `{1: 5, 4: kid}`, correctly MAC'd, was
    /// accepted.
    #[test]
    fn protected_header_must_be_deterministically_encoded() {
        let event = sample_events()
            .into_iter()
            .find(|e| e.event_type() == EventType::ModeChanged)
            .expect("the samples hold a mode change");
        let key = root().derive(&event.src);
        let payload = event.encode();
        let kid = event.src.to_string().into_bytes();
        assert!(payload.len() < 256 && kid.len() < 24);
        let kid_bstr = [&[0x40 + kid.len() as u8][..], &kid].concat();
        let canonical = [&[0xa2, 0x01, 0x05, 0x04][..], &kid_bstr].concat();
        assert_eq!(
            mac0_with_protected(&canonical, &payload, &key),
            seal(&event, &key)
        );
        for protected in [
            // kid (4) before alg (1)
            [&[0xa2, 0x04][..], &kid_bstr, &[0x01, 0x05]].concat(),
            // label 1 as a two-byte integer
            [&[0xa2, 0x18, 0x01, 0x05, 0x04][..], &kid_bstr].concat(),
        ] {
            let bytes = mac0_with_protected(&protected, &payload, &key);
            assert_eq!(
                open_event(&bytes, MAX_EVENT_SIZE, |_| Some(key.clone())),
                Err(EnvelopeError::NonCanonical)
            );
        }
    }
}
