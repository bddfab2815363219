//! Typed, strict access to the fields of a decoded CBOR map, with errors that name the field.
//!
//! Every wire structure of pairbus is a closed map with text keys: a missing field, a field of
//! the wrong type and a field nobody defined are all refused, each naming the field by its path
//! (`body.components[1].kind`).

use crate::cbor::CborError;
use ciborium::value::Value;
use thiserror::Error;

/// Why a payload, record or message was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The bytes are not acceptable CBOR (size, syntax, determinism).
    #[error(transparent)]
    Cbor(#[from] CborError),
    /// A required field is absent.
    #[error("field `{0}` is missing")]
    Missing(String),
    /// A field holds the wrong CBOR type.
    #[error("field `{field}` must be {expected}")]
    WrongType {
        /// Path of the field.
        field: String,
        /// What the schema expects there.
        expected: &'static str,
    },
    /// A field has the right type but a value outside its domain.
    #[error("field `{field}` is invalid: {reason}")]
    Invalid {
        /// Path of the field.
        field: String,
        /// What is wrong with the value.
        reason: String,
    },
    /// A field the schema does not define (maps are closed in v1).
    #[error("unknown field `{0}`")]
    UnknownField(String),
    /// The schema version `v` is not one this build understands.
    #[error("field `v`: unsupported schema version {0} (this build reads version 1)")]
    UnsupportedVersion(u64),
    /// The event `type` is not in the v1 catalogue.
    #[error("field `type`: unknown event type `{0}`")]
    UnknownType(String),
}

impl DecodeError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        DecodeError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A closed CBOR map being taken apart field by field.
pub(crate) struct Fields {
    path: String,
    entries: Vec<(String, Value)>,
}

impl Fields {
    /// Opens `value` as a map whose keys are all text. `path` prefixes field names in errors
    /// (empty for the top level).
    pub(crate) fn new(value: Value, path: &str) -> Result<Self, DecodeError> {
        let Value::Map(raw) = value else {
            return Err(DecodeError::WrongType {
                field: if path.is_empty() {
                    "(top level)".into()
                } else {
                    path.into()
                },
                expected: "a map",
            });
        };
        let mut entries = Vec::with_capacity(raw.len());
        for (k, v) in raw {
            match k {
                Value::Text(k) => entries.push((k, v)),
                _ => {
                    return Err(DecodeError::WrongType {
                        field: format!(
                            "{path}{}",
                            if path.is_empty() { "(key)" } else { ".(key)" }
                        ),
                        expected: "a map with text keys",
                    })
                }
            }
        }
        Ok(Fields {
            path: path.to_owned(),
            entries,
        })
    }

    /// Full path of a field of this map, for error messages.
    pub(crate) fn path_of(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    fn take(&mut self, name: &str) -> Option<Value> {
        let i = self.entries.iter().position(|(k, _)| k == name)?;
        Some(self.entries.swap_remove(i).1)
    }

    pub(crate) fn required(&mut self, name: &str) -> Result<Value, DecodeError> {
        self.take(name)
            .ok_or_else(|| DecodeError::Missing(self.path_of(name)))
    }

    fn wrong(&self, name: &str, expected: &'static str) -> DecodeError {
        DecodeError::WrongType {
            field: self.path_of(name),
            expected,
        }
    }

    pub(crate) fn text(&mut self, name: &str) -> Result<String, DecodeError> {
        match self.required(name)? {
            Value::Text(s) => Ok(s),
            _ => Err(self.wrong(name, "a text string")),
        }
    }

    pub(crate) fn opt_text(&mut self, name: &str) -> Result<Option<String>, DecodeError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Text(s)) => Ok(Some(s)),
            Some(_) => Err(self.wrong(name, "a text string")),
        }
    }

    pub(crate) fn uint(&mut self, name: &str) -> Result<u64, DecodeError> {
        match self.required(name)? {
            Value::Integer(i) => {
                u64::try_from(i).map_err(|_| self.wrong(name, "an unsigned integer"))
            }
            _ => Err(self.wrong(name, "an unsigned integer")),
        }
    }

    pub(crate) fn bool(&mut self, name: &str) -> Result<bool, DecodeError> {
        match self.required(name)? {
            Value::Bool(b) => Ok(b),
            _ => Err(self.wrong(name, "a boolean")),
        }
    }

    pub(crate) fn bytes(&mut self, name: &str) -> Result<Vec<u8>, DecodeError> {
        match self.required(name)? {
            Value::Bytes(b) => Ok(b),
            _ => Err(self.wrong(name, "a byte string")),
        }
    }

    pub(crate) fn bytes_n<const N: usize>(&mut self, name: &str) -> Result<[u8; N], DecodeError> {
        match self.required(name)? {
            Value::Bytes(b) => b.try_into().map_err(|b: Vec<u8>| DecodeError::Invalid {
                field: self.path_of(name),
                reason: format!("must be exactly {N} bytes, got {}", b.len()),
            }),
            _ => Err(self.wrong(name, "a byte string")),
        }
    }

    pub(crate) fn array(&mut self, name: &str) -> Result<Vec<Value>, DecodeError> {
        match self.required(name)? {
            Value::Array(a) => Ok(a),
            _ => Err(self.wrong(name, "an array")),
        }
    }

    /// Refuses any field that was not taken.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.entries.into_iter().next() {
            None => Ok(()),
            Some((k, _)) => Err(DecodeError::UnknownField(if self.path.is_empty() {
                k
            } else {
                format!("{}.{k}", self.path)
            })),
        }
    }
}

/// Shorthand to build a CBOR map with text keys.
pub(crate) fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::Text(k.to_owned()), v))
            .collect(),
    )
}

pub(crate) fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

pub(crate) fn uint(n: u64) -> Value {
    Value::Integer(n.into())
}

pub(crate) fn bytes(b: &[u8]) -> Value {
    Value::Bytes(b.to_vec())
}
