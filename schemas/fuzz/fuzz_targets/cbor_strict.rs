//! Differential target for the strict CBOR decoder: `cbor::decode_strict` must give exactly the
//! result of its definition, "decode, refuse floats and tags, canonicalize (sorting maps,
//! refusing duplicate keys), re-encode, compare with the input", written out below the slow way.

#![no_main]

use ciborium::value::Value;
use libfuzzer_sys::fuzz_target;
use pairbus_schemas::cbor::{canonicalize, decode_strict, encode_value, CborError};

const LIMIT: usize = 4096;

fn unsupported(value: &Value) -> Option<&'static str> {
    match value {
        Value::Float(_) => Some("floating-point value"),
        Value::Tag(..) => Some("tag"),
        Value::Array(items) => items.iter().find_map(unsupported),
        Value::Map(entries) => entries
            .iter()
            .find_map(|(k, v)| unsupported(k).or_else(|| unsupported(v))),
        _ => None,
    }
}

fn reference(bytes: &[u8]) -> Result<Value, CborError> {
    if bytes.len() > LIMIT {
        return Err(CborError::TooLarge {
            size: bytes.len(),
            limit: LIMIT,
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
    if let Some(what) = unsupported(&value) {
        return Err(CborError::Unsupported(what));
    }
    if encode_value(&canonicalize(value.clone())?) != bytes {
        return Err(CborError::NonCanonical(
            "integers and lengths must use the shortest form, definite lengths, map keys sorted",
        ));
    }
    Ok(value)
}

fuzz_target!(|data: &[u8]| {
    assert_eq!(
        decode_strict(data, LIMIT),
        reference(data),
        "input {data:02x?}"
    );
});
