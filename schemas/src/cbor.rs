//! Deterministic CBOR (RFC 8949 §4.2.1) on top of `ciborium`, and the strict decoder every
//! network input goes through.
//!
//! Strictness is checked by *re-encoding*: a decoded item is accepted only if its deterministic
//! encoding is byte-for-byte the input. That single comparison refuses non-shortest integers,
//! indefinite lengths, unsorted map keys and trailing bytes. Duplicate map keys, floats and tags
//! (none of which pairbus uses) are refused explicitly.

use ciborium::value::Value;
use thiserror::Error;

/// Why a CBOR item was refused before any field was looked at.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CborError {
    /// The input is larger than the limit the caller allows.
    #[error("input is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Size of the input in bytes.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// Not a single well-formed CBOR item.
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    /// Well-formed, but not in deterministic encoding.
    #[error("CBOR is not deterministically encoded (RFC 8949 §4.2.1): {0}")]
    NonCanonical(&'static str),
    /// A map holds the same key twice.
    #[error("duplicate map key")]
    DuplicateKey,
    /// A floating-point value or a tag, which pairbus payloads never contain.
    #[error("unsupported CBOR item: {0}")]
    Unsupported(&'static str),
}

/// Sorts every map (recursively) by the deterministic encoding of its keys.
///
/// Fails on duplicate keys, which have no deterministic encoding.
pub fn canonicalize(value: Value) -> Result<Value, CborError> {
    Ok(match value {
        Value::Map(entries) => {
            let mut keyed = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                let k = canonicalize(k)?;
                let v = canonicalize(v)?;
                keyed.push((encode_value(&k), k, v));
            }
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            if keyed.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err(CborError::DuplicateKey);
            }
            Value::Map(keyed.into_iter().map(|(_, k, v)| (k, v)).collect())
        }
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(canonicalize)
                .collect::<Result<_, _>>()?,
        ),
        Value::Tag(t, inner) => Value::Tag(t, Box::new(canonicalize(*inner)?)),
        other => other,
    })
}

/// Encodes a value exactly as given (call [`canonicalize`] first for deterministic output).
pub fn encode_value(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail, and every `Value` is encodable.
    ciborium::ser::into_writer(value, &mut out).expect("CBOR encoding into a Vec never fails");
    out
}

/// Deterministic encoding of `value`: maps sorted, shortest forms.
pub fn encode_canonical(value: Value) -> Result<Vec<u8>, CborError> {
    Ok(encode_value(&canonicalize(value)?))
}

/// Writes a small fixed-shape map straight into a buffer with `ciborium_ll`'s encoder (the
/// same heads `ciborium` writes), without building a [`Value`] tree and sorting it: for the
/// messages written once per event (log records, commit confirmations). The caller gives the
/// entries **already in deterministic order** (keys sorted by their encoded bytes: shorter text
/// keys first, then bytewise); each such encoder has a test that its output equals
/// [`encode_canonical`] of the same map.
pub(crate) struct MapWriter<'a> {
    enc: ciborium_ll::Encoder<&'a mut Vec<u8>>,
}

impl<'a> MapWriter<'a> {
    /// Starts a map of `len` entries at the end of `out`.
    pub(crate) fn new(out: &'a mut Vec<u8>, len: usize) -> Self {
        let mut w = MapWriter {
            enc: ciborium_ll::Encoder::from(out),
        };
        w.head(ciborium_ll::Header::Map(Some(len)));
        w
    }

    fn head(&mut self, h: ciborium_ll::Header) {
        // Writing into a Vec cannot fail.
        self.enc
            .push(h)
            .expect("CBOR encoding into a Vec never fails");
    }

    fn key(&mut self, key: &str) {
        self.enc
            .text(key, None)
            .expect("CBOR encoding into a Vec never fails");
    }

    /// A `key: uint` entry.
    pub(crate) fn uint(&mut self, key: &str, n: u64) -> &mut Self {
        self.key(key);
        self.head(ciborium_ll::Header::Positive(n));
        self
    }

    /// A `key: bstr` entry.
    pub(crate) fn bytes(&mut self, key: &str, b: &[u8]) -> &mut Self {
        self.key(key);
        self.enc
            .bytes(b, None)
            .expect("CBOR encoding into a Vec never fails");
        self
    }

    /// A `key: tstr` entry.
    pub(crate) fn text(&mut self, key: &str, t: &str) -> &mut Self {
        self.key(key);
        self.enc
            .text(t, None)
            .expect("CBOR encoding into a Vec never fails");
        self
    }
}

/// Decodes exactly one deterministically encoded CBOR item of at most `limit` bytes.
///
/// Fast accept, slow refuse: a single pass over the `ciborium-ll` headers ([`decode_fast`])
/// builds the value when every item is plainly in the one accepted encoding; anything else
/// (every input that is refused, and the rare accepted ones it does not handle) goes through
/// [`decode_strict_reference`], which therefore produces every error. Both give the same
/// `Result` on every input (differential proptest in `tests/props.rs`, fuzz target
/// `fast_paths`).
pub fn decode_strict(bytes: &[u8], limit: usize) -> Result<Value, CborError> {
    if bytes.len() <= limit {
        if let Some(value) = decode_fast(bytes) {
            return Ok(value);
        }
    }
    decode_strict_reference(bytes, limit)
}

/// Nesting deeper than this is left to the reference decoder (whose own recursion limit is
/// far higher); no pairbus structure comes close.
const FAST_MAX_DEPTH: usize = 16;

/// One pass over the input: `Some(value)` only if the input is exactly one item in which every
/// head (integers, lengths, simple values) is written as `ciborium_ll::Encoder` writes it
/// (shortest form), lengths are definite, there is no float, tag or simple value other than
/// `false`/`true`, text is UTF-8, every map's keys are strictly increasing by their encoded
/// bytes (so sorted and without duplicates), and nothing follows. Such an input is one the
/// reference decoder accepts, with the same value; `None` means "ask the reference".
fn decode_fast(bytes: &[u8]) -> Option<Value> {
    let (value, end) = fast_item(bytes, 0, 0)?;
    (end == bytes.len()).then_some(value)
}

/// The head at `pos` and the position after it, if it is in its shortest form. Only the heads
/// the fast paths use (integers, definite lengths, simple values); anything else (floats,
/// tags, indefinite lengths, breaks) is `None`, which they would refuse anyway.
///
/// `ciborium_ll::Encoder` writes a head with the same major type, the same value and the
/// shortest width that holds the value (a simple value below 24 in the initial byte), so the
/// head read is the one it would write exactly when it is as long as that shortest form.
pub(crate) fn fast_head(bytes: &[u8], pos: usize) -> Option<(ciborium_ll::Header, usize)> {
    use ciborium_ll::Header;
    fn shortest(n: u64) -> usize {
        match n {
            0..=23 => 1,
            24..=0xff => 2,
            0x100..=0xffff => 3,
            0x1_0000..=0xffff_ffff => 5,
            _ => 9,
        }
    }
    let rest = bytes.get(pos..)?;
    let mut decoder = ciborium_ll::Decoder::from(rest);
    let header = decoder.pull().ok()?;
    let read = decoder.offset();
    let canonical = match header {
        Header::Positive(n) | Header::Negative(n) => shortest(n),
        Header::Bytes(Some(n))
        | Header::Text(Some(n))
        | Header::Array(Some(n))
        | Header::Map(Some(n)) => shortest(n as u64),
        Header::Simple(x) => shortest(u64::from(x)),
        _ => return None,
    };
    (read == canonical).then_some((header, pos + read))
}

/// The `len` bytes at `pos`, and the position after them.
pub(crate) fn fast_slice(bytes: &[u8], pos: usize, len: usize) -> Option<(&[u8], usize)> {
    let end = pos.checked_add(len)?;
    Some((bytes.get(pos..end)?, end))
}

fn fast_item(bytes: &[u8], pos: usize, depth: usize) -> Option<(Value, usize)> {
    use ciborium_ll::Header;
    if depth > FAST_MAX_DEPTH {
        return None;
    }
    let (header, pos) = fast_head(bytes, pos)?;
    Some(match header {
        Header::Positive(n) => (Value::Integer(n.into()), pos),
        Header::Negative(n) => (
            Value::Integer(ciborium::value::Integer::try_from(-1 - i128::from(n)).ok()?),
            pos,
        ),
        Header::Bytes(Some(len)) => {
            let (b, end) = fast_slice(bytes, pos, len)?;
            (Value::Bytes(b.to_vec()), end)
        }
        Header::Text(Some(len)) => {
            let (b, end) = fast_slice(bytes, pos, len)?;
            (Value::Text(std::str::from_utf8(b).ok()?.to_owned()), end)
        }
        Header::Array(Some(len)) => {
            // Every item takes at least one byte: a longer count cannot be satisfied.
            if len > bytes.len() - pos {
                return None;
            }
            let mut items = Vec::with_capacity(len);
            let mut pos = pos;
            for _ in 0..len {
                let (item, next) = fast_item(bytes, pos, depth + 1)?;
                items.push(item);
                pos = next;
            }
            (Value::Array(items), pos)
        }
        Header::Map(Some(len)) => {
            if len > (bytes.len() - pos) / 2 {
                return None;
            }
            let mut entries = Vec::with_capacity(len);
            let mut pos = pos;
            let mut previous_key: &[u8] = &[];
            for i in 0..len {
                let (key, key_end) = fast_item(bytes, pos, depth + 1)?;
                // Every item below is already in its one encoding, so these bytes are the
                // key's deterministic encoding.
                let key_bytes = &bytes[pos..key_end];
                if i > 0 && previous_key >= key_bytes {
                    return None;
                }
                previous_key = key_bytes;
                let (value, next) = fast_item(bytes, key_end, depth + 1)?;
                entries.push((key, value));
                pos = next;
            }
            (Value::Map(entries), pos)
        }
        Header::Simple(ciborium_ll::simple::FALSE) => (Value::Bool(false), pos),
        Header::Simple(ciborium_ll::simple::TRUE) => (Value::Bool(true), pos),
        _ => return None,
    })
}

/// The strict decoder written the straightforward way: ciborium's `Value` decoding, then the
/// checks, then a re-encoding compared with the input. [`decode_strict`] gives exactly its
/// results; it is public only so that the tests and fuzz targets can compare the two.
#[doc(hidden)]
pub fn decode_strict_reference(bytes: &[u8], limit: usize) -> Result<Value, CborError> {
    if bytes.len() > limit {
        return Err(CborError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    let mut rest = bytes;
    let value: Value =
        ciborium::de::from_reader(&mut rest).map_err(|e| CborError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CborError::Malformed(format!(
            "{} trailing bytes after the item",
            rest.len()
        )));
    }
    reject_unsupported(&value)?;
    // Same outcome as comparing `encode_value(&canonicalize(value.clone())?)` with the input,
    // without copying and rebuilding the tree: a duplicate key anywhere is refused first (as
    // `canonicalize` does); otherwise the maps must already be in deterministic order (then
    // `canonicalize` would change nothing) and the value must re-encode to the input.
    let mut in_order = true;
    check_keys(&value, &mut in_order)?;
    if !in_order || encode_value(&value) != bytes {
        return Err(CborError::NonCanonical(
            "integers and lengths must use the shortest form, definite lengths, map keys sorted",
        ));
    }
    Ok(value)
}

/// Refuses duplicate map keys anywhere in `value` and clears `in_order` if some map's keys are
/// not strictly increasing in the deterministic order (bytewise on their canonical encoding).
fn check_keys(value: &Value, in_order: &mut bool) -> Result<(), CborError> {
    match value {
        Value::Map(entries) => {
            for (k, v) in entries {
                check_keys(k, in_order)?;
                check_keys(v, in_order)?;
            }
            for w in entries.windows(2) {
                if key_order(&w[0].0, &w[1].0)? != std::cmp::Ordering::Less {
                    // Out of order, or a duplicate: tell them apart the slow way.
                    let mut keys = entries
                        .iter()
                        .map(|(k, _)| canonical_key(k))
                        .collect::<Result<Vec<_>, _>>()?;
                    keys.sort();
                    if keys.windows(2).any(|w| w[0] == w[1]) {
                        return Err(CborError::DuplicateKey);
                    }
                    *in_order = false;
                    break;
                }
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(|i| check_keys(i, in_order)),
        Value::Tag(_, inner) => check_keys(inner, in_order),
        _ => Ok(()),
    }
}

/// The deterministic encoding of a map key, as [`canonicalize`] sorts by it.
fn canonical_key(key: &Value) -> Result<Vec<u8>, CborError> {
    match key {
        Value::Map(_) | Value::Array(_) | Value::Tag(..) => {
            Ok(encode_value(&canonicalize(key.clone())?))
        }
        scalar => Ok(encode_value(scalar)),
    }
}

/// Compares two map keys in the deterministic order. Text keys (all pairbus keys) need no
/// encoding: the shortest-form head grows with the length, so shorter sorts first, then bytewise.
fn key_order(a: &Value, b: &Value) -> Result<std::cmp::Ordering, CborError> {
    Ok(match (a, b) {
        (Value::Text(a), Value::Text(b)) => a
            .len()
            .cmp(&b.len())
            .then_with(|| a.as_bytes().cmp(b.as_bytes())),
        _ => canonical_key(a)?.cmp(&canonical_key(b)?),
    })
}

fn reject_unsupported(value: &Value) -> Result<(), CborError> {
    match value {
        Value::Float(_) => Err(CborError::Unsupported("floating-point value")),
        Value::Tag(..) => Err(CborError::Unsupported("tag")),
        Value::Array(items) => items.iter().try_for_each(reject_unsupported),
        Value::Map(entries) => entries.iter().try_for_each(|(k, v)| {
            reject_unsupported(k)?;
            reject_unsupported(v)
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn map_keys_sort_by_encoded_bytes_shorter_first() {
        let v = Value::Map(vec![
            (text("received_at"), Value::Integer(1.into())),
            (text("seq"), Value::Integer(2.into())),
            (text("hash"), Value::Integer(3.into())),
        ]);
        let bytes = encode_canonical(v).unwrap();
        let back = decode_strict(&bytes, 1024).unwrap();
        let keys: Vec<_> = back
            .as_map()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_text().unwrap().to_owned())
            .collect();
        assert_eq!(keys, ["seq", "hash", "received_at"]);
    }

    #[test]
    fn non_shortest_integer_is_refused() {
        // 0x18 0x01 is 1 encoded in two bytes; the shortest form is 0x01.
        assert!(matches!(
            decode_strict(&[0x18, 0x01], 16),
            Err(CborError::NonCanonical(_))
        ));
        assert_eq!(
            decode_strict(&[0x01], 16).unwrap(),
            Value::Integer(1.into())
        );
    }

    #[test]
    fn unsorted_keys_indefinite_lengths_duplicates_and_trailing_bytes_are_refused() {
        // {"b": 1, "a": 2}
        let unsorted = [0xa2, 0x61, b'b', 0x01, 0x61, b'a', 0x02];
        assert!(matches!(
            decode_strict(&unsorted, 64),
            Err(CborError::NonCanonical(_))
        ));
        // {"a": 1, "a": 2}
        let dup = [0xa2, 0x61, b'a', 0x01, 0x61, b'a', 0x02];
        assert_eq!(decode_strict(&dup, 64), Err(CborError::DuplicateKey));
        // indefinite-length array [1]
        let indef = [0x9f, 0x01, 0xff];
        assert!(matches!(
            decode_strict(&indef, 64),
            Err(CborError::NonCanonical(_))
        ));
        assert!(matches!(
            decode_strict(&[0x01, 0x02], 64),
            Err(CborError::Malformed(_))
        ));
    }

    #[test]
    fn floats_tags_and_oversize_are_refused() {
        assert!(matches!(
            decode_strict(&[0xf9, 0x3c, 0x00], 16),
            Err(CborError::Unsupported(_))
        ));
        assert!(matches!(
            decode_strict(&[0xc1, 0x01], 16),
            Err(CborError::Unsupported(_))
        ));
        assert_eq!(
            decode_strict(&[0x01, 0x02, 0x03], 2),
            Err(CborError::TooLarge { size: 3, limit: 2 })
        );
    }

    /// The fast path must actually take the payloads pairbus writes (the differential tests
    /// only show that it never disagrees with the reference).
    #[test]
    fn fast_path_takes_every_sample_payload() {
        for e in crate::vectors::sample_events() {
            let bytes = e.encode();
            assert_eq!(
                decode_fast(&bytes),
                Some(decode_strict_reference(&bytes, bytes.len()).unwrap()),
                "{}",
                e.event_type()
            );
        }
    }

    #[test]
    fn fast_event_path_takes_every_sample_payload() {
        for e in crate::vectors::sample_events() {
            assert_eq!(
                crate::fast_event::decode(&e.encode()).as_ref(),
                Some(&e),
                "{}",
                e.event_type()
            );
        }
    }

    #[test]
    fn truncated_input_is_malformed_not_a_panic() {
        assert!(matches!(
            decode_strict(&[0x5a, 0xff, 0xff, 0xff, 0xff], 64),
            Err(CborError::Malformed(_))
        ));
        assert!(matches!(
            decode_strict(&[], 64),
            Err(CborError::Malformed(_))
        ));
    }
}
