//! Identifiers: principal key ids (`kid`), device ids and event ids.
//!
//! Every id that can appear in an MQTT topic level is restricted to `[A-Za-z0-9_.-]` (1 to 64
//! characters), so ids can never smuggle topic separators or wildcards.

use std::fmt;
use thiserror::Error;

/// Longest principal name or topic id accepted.
pub const MAX_ID_LEN: usize = 64;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdError {
    /// Empty, too long, or with a character outside `[A-Za-z0-9_.-]`.
    #[error("`{0}` is not a valid id: 1 to 64 characters from [A-Za-z0-9_.-]")]
    BadId(String),
    /// A kid that is not `factory:<name>`, `device:<device_id>`, `operator:<name>` or `broker`.
    #[error("`{0}` is not a valid kid: expected factory:<name>, device:<device_id>, operator:<name> or broker")]
    BadKid(String),
    /// A device id that is not 16 lower-case hex digits.
    #[error("`{0}` is not a valid device id: expected 16 lower-case hex digits")]
    BadDeviceId(String),
}

/// True when `s` may be used as a topic level: 1–64 characters of `[A-Za-z0-9_.-]`.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The kinds of principal that hold a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrincipalKind {
    /// A factory station: signs `device.manufactured` and QR payloads.
    Factory,
    /// A device: signs everything the device does.
    Device,
    /// An operator: activation, setup, pairing requests, revocation.
    Operator,
    /// The broker itself: signs log checkpoints.
    Broker,
}

impl PrincipalKind {
    /// The kind as written in kids and topics (`device`, `operator`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Factory => "factory",
            PrincipalKind::Device => "device",
            PrincipalKind::Operator => "operator",
            PrincipalKind::Broker => "broker",
        }
    }

    /// Parses `device`, `operator`, `factory` or `broker`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "factory" => PrincipalKind::Factory,
            "device" => PrincipalKind::Device,
            "operator" => PrincipalKind::Operator,
            "broker" => PrincipalKind::Broker,
            _ => return None,
        })
    }
}

impl fmt::Display for PrincipalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device id: the first 16 hex digits of the device's `serial_hash`.
///
/// Held inline (16 ASCII bytes, no heap allocation): ids are cloned, hashed and compared on
/// every event the projector folds. Ordering, equality and hashing are those of the text.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeviceId([u8; 16]);

impl DeviceId {
    /// Parses exactly 16 lower-case hex digits.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        match <[u8; 16]>::try_from(s.as_bytes()) {
            Ok(b) if b.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => Ok(DeviceId(b)),
            _ => Err(IdError::BadDeviceId(s.to_owned())),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Always ASCII hex (checked by `parse`, the only constructor), so this never fails.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The kid of this device (`device:<id>`).
    pub fn kid(&self) -> Kid {
        Kid {
            kind: PrincipalKind::Device,
            name: Name::Device(self.clone()),
        }
    }
}

/// Hashes the 16 bytes of the id (consistent with `Eq`; no UTF-8 check on this hot path).
impl std::hash::Hash for DeviceId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DeviceId").field(&self.as_str()).finish()
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A principal's key id: `factory:<name>`, `device:<device_id>`, `operator:<name>` or `broker`.
///
/// A device's name is held as a [`DeviceId`] (inline, no heap allocation): device kids are
/// parsed, compared and hashed on every event. Ordering is by kind, then name text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kid {
    kind: PrincipalKind,
    name: Name,
}

/// A kid's name: a device id for a device (always), text for the other kinds (always).
#[derive(Clone, PartialEq, Eq, Hash)]
enum Name {
    Device(DeviceId),
    Text(String),
}

impl Name {
    fn as_str(&self) -> &str {
        match self {
            Name::Device(d) => d.as_str(),
            Name::Text(s) => s,
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Name::Device(_) => 0,
            Name::Text(_) => 1,
        }
    }
}

/// By text (as when names were `String`s), the variant only breaking ties that the
/// constructors never produce (within one kind, the variant is fixed).
impl Ord for Name {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str()
            .cmp(other.as_str())
            .then(self.rank().cmp(&other.rank()))
    }
}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for Kid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kid")
            .field("kind", &self.kind)
            .field("name", &self.name())
            .finish()
    }
}

impl Kid {
    /// The broker's kid, `broker`.
    pub fn broker() -> Self {
        Kid {
            kind: PrincipalKind::Broker,
            name: Name::Text(String::new()),
        }
    }

    /// Builds `<kind>:<name>`; a device's name must be a device id, the broker has no name.
    pub fn new(kind: PrincipalKind, name: &str) -> Result<Self, IdError> {
        match kind {
            PrincipalKind::Broker if name.is_empty() => Ok(Kid::broker()),
            PrincipalKind::Broker => Err(IdError::BadKid(format!("broker:{name}"))),
            PrincipalKind::Device => Ok(DeviceId::parse(name)?.kid()),
            _ if is_valid_id(name) => Ok(Kid {
                kind,
                name: Name::Text(name.to_owned()),
            }),
            _ => Err(IdError::BadId(name.to_owned())),
        }
    }

    /// Parses a kid from its text form.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s == "broker" {
            return Ok(Kid::broker());
        }
        let bad = || IdError::BadKid(s.to_owned());
        let (kind, name) = s.split_once(':').ok_or_else(bad)?;
        match PrincipalKind::parse(kind) {
            Some(PrincipalKind::Broker) | None => Err(bad()),
            Some(kind) => Kid::new(kind, name),
        }
    }

    /// The principal's kind.
    pub fn kind(&self) -> PrincipalKind {
        self.kind
    }

    /// The name after the colon (the device id for a device; empty for the broker).
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// True when this is the kid of device `d` (compares the ids inline, no allocation).
    pub fn is_device(&self, d: &DeviceId) -> bool {
        matches!(&self.name, Name::Device(x) if self.kind == PrincipalKind::Device && x == d)
    }

    /// The device id, when this is a device's kid.
    pub fn device_id(&self) -> Option<DeviceId> {
        match &self.name {
            Name::Device(d) if self.kind == PrincipalKind::Device => Some(d.clone()),
            _ => None,
        }
    }
}

impl fmt::Display for Kid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PrincipalKind::Broker => f.write_str("broker"),
            kind => write!(f, "{kind}:{}", self.name()),
        }
    }
}

/// An event id: a UUIDv7 (16 bytes), the idempotency key of an event.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub [u8; 16]);

impl EventId {
    /// Builds a UUIDv7 from a Unix time in milliseconds and 10 random bytes (the caller brings
    /// both: this crate has no clock and no randomness of its own).
    pub fn new_v7(unix_ms: u64, random: [u8; 10]) -> Self {
        EventId(
            *uuid::Builder::from_unix_timestamp_millis(unix_ms, &random)
                .into_uuid()
                .as_bytes(),
        )
    }

    /// The 32 lower-case hex digits of the id.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 32 hex digits, or the hyphenated UUID form.
    pub fn parse(s: &str) -> Option<Self> {
        uuid::Uuid::try_parse(s)
            .ok()
            .map(|u| EventId(*u.as_bytes()))
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.to_hex())
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kids_round_trip_and_refuse_bad_forms() {
        for s in [
            "factory:line-1",
            "device:e80421321203c37f",
            "operator:admin",
            "broker",
        ] {
            assert_eq!(Kid::parse(s).unwrap().to_string(), s);
        }
        for s in [
            "",
            "factory:",
            "factory:a/b",
            "factory:+",
            "device:E80421321203C37F",
            "device:e80421321203c3",
            "broker:x",
            "admin:x",
            "operator",
        ] {
            assert!(Kid::parse(s).is_err(), "{s} must be refused");
        }
    }

    #[test]
    fn inline_ids_order_compare_and_print_as_their_text() {
        let texts = [
            "broker",
            "device:0000000000000001",
            "device:e80421321203c37f",
            "factory:a",
            "factory:line-1",
            "operator:admin",
            "operator:b",
        ];
        let mut kids: Vec<Kid> = texts.iter().rev().map(|s| Kid::parse(s).unwrap()).collect();
        kids.sort();
        // Kids order by kind, then by name text (as when the name was a `String`).
        let by_kid: Vec<(PrincipalKind, String)> = kids
            .iter()
            .map(|k| (k.kind(), k.name().to_owned()))
            .collect();
        let mut by_text: Vec<(PrincipalKind, String)> = texts
            .iter()
            .map(|s| {
                let k = Kid::parse(s).unwrap();
                (k.kind(), k.name().to_owned())
            })
            .collect();
        by_text.sort();
        assert_eq!(by_kid, by_text);
        let d = DeviceId::parse("e80421321203c37f").unwrap();
        let e = DeviceId::parse("e80421321203c37e").unwrap();
        assert!(e < d);
        assert_eq!(d.as_str(), "e80421321203c37f");
        assert_eq!(format!("{d:?}"), r#"DeviceId("e80421321203c37f")"#);
        let k = d.kid();
        assert!(k.is_device(&d) && !k.is_device(&e));
        assert_eq!(k.device_id(), Some(d.clone()));
        assert_eq!(k, Kid::parse("device:e80421321203c37f").unwrap());
        assert_eq!(
            format!("{k:?}"),
            r#"Kid { kind: Device, name: "e80421321203c37f" }"#
        );
        let op = Kid::parse("operator:e80421321203c37f").unwrap();
        assert!(!op.is_device(&d));
        assert_eq!(op.device_id(), None);
        assert_ne!(op, k);
    }

    #[test]
    fn event_id_is_a_uuid_v7_with_the_given_time() {
        let id = EventId::new_v7(1_700_000_000_000, [7; 10]);
        let u = uuid::Uuid::from_bytes(id.0);
        assert_eq!(u.get_version_num(), 7);
        assert_eq!(EventId::parse(&id.to_hex()), Some(id));
    }
}
