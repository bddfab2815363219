//! Serde helpers: pairbus ids and event types as their wire text in JSON.

use pairbus_schemas::{DeviceId, EventId, EventType, Kid};
use serde::{de::Error as _, Deserialize, Deserializer, Serializer};
use std::collections::BTreeSet;

/// A type written in JSON as its wire text.
pub trait WireText: Sized {
    /// The wire text.
    fn to_wire(&self) -> String;
    /// Parses the wire text.
    fn from_wire(s: &str) -> Option<Self>;
}

impl WireText for DeviceId {
    fn to_wire(&self) -> String {
        self.as_str().to_owned()
    }
    fn from_wire(s: &str) -> Option<Self> {
        DeviceId::parse(s).ok()
    }
}

impl WireText for Kid {
    fn to_wire(&self) -> String {
        self.to_string()
    }
    fn from_wire(s: &str) -> Option<Self> {
        Kid::parse(s).ok()
    }
}

impl WireText for EventType {
    fn to_wire(&self) -> String {
        self.as_str().to_owned()
    }
    fn from_wire(s: &str) -> Option<Self> {
        EventType::parse(s)
    }
}

impl WireText for EventId {
    fn to_wire(&self) -> String {
        self.to_hex()
    }
    fn from_wire(s: &str) -> Option<Self> {
        EventId::parse(s)
    }
}

fn parse<'de, T: WireText, D: Deserializer<'de>>(s: &str) -> Result<T, D::Error> {
    T::from_wire(s).ok_or_else(|| D::Error::custom(format!("invalid id or type `{s}`")))
}

/// `T` as text.
pub fn serialize<T: WireText, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_wire())
}

/// `T` from text.
pub fn deserialize<'de, T: WireText, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    parse::<T, D>(&s)
}

/// `Option<T>` as text or null.
pub mod opt {
    use super::*;

    /// Serializes.
    pub fn serialize<T: WireText, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&v.to_wire()),
            None => s.serialize_none(),
        }
    }

    /// Deserializes.
    pub fn deserialize<'de, T: WireText, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => parse::<T, D>(&s).map(Some),
            None => Ok(None),
        }
    }
}

/// `BTreeSet<T>` as an array of text.
pub mod set {
    use super::*;
    use serde::ser::SerializeSeq;

    /// Serializes.
    pub fn serialize<T: WireText, S: Serializer>(v: &BTreeSet<T>, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for x in v {
            seq.serialize_element(&x.to_wire())?;
        }
        seq.end()
    }

    /// Deserializes.
    pub fn deserialize<'de, T: WireText + Ord, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeSet<T>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| parse::<T, D>(s))
            .collect()
    }
}
