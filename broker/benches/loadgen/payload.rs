//! What the publishers send: signed `device.action` envelopes for pairbus, or unsigned
//! bytes of the same size for a plain broker, each carrying (publisher, seq) so that whatever
//! arrives can be matched to its publish time.

use pairbus_schemas::event::{Action, Component, Manufactured, MetaValue};
use pairbus_schemas::{seal, Body, DeviceId, Event, EventId, Key, Kid};
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// (publisher, seq) inside an event id: byte 7 is the publisher, bytes 9..16 the seq (56
/// bits); bytes 6 and 8 carry the UUIDv7 version and variant.
pub fn event_id(ms: u64, run: u8, publisher: u8, seq: u64) -> EventId {
    let mut rand = [0u8; 10];
    rand[0] = run;
    rand[1] = publisher;
    rand[3..10].copy_from_slice(&seq.to_be_bytes()[1..8]);
    EventId::new_v7(ms, rand)
}

/// The seq of an id made by [`event_id`].
pub fn seq_of(id: &EventId) -> u64 {
    let mut b = [0u8; 8];
    b[1..8].copy_from_slice(&id.0[9..16]);
    u64::from_be_bytes(b)
}

/// The `device.manufactured` event by which `factory` (its key `key`, its event number `seq`)
/// makes `device`, whose serial hashes to `serial_hash`: after it, the device's events are
/// ordinary ones (an unknown device's are refused by the projector, each with an alert).
pub fn manufactured(
    factory: &Kid,
    key: &Key,
    seq: u64,
    device: &DeviceId,
    serial_hash: [u8; 32],
) -> Vec<u8> {
    let ms = now_ms();
    let mut random = [0u8; 10];
    fastrand::fill(&mut random);
    let e = Event {
        id: EventId::new_v7(ms, random),
        src: factory.clone(),
        seq,
        ts: ms,
        device: device.clone(),
        body: Body::Manufactured(Manufactured {
            serial_hash,
            device_type: "sensor".into(),
            model: "LG-1".into(),
            manufacturer: "loadgen".into(),
            name: format!("load generator device {seq}"),
            components: vec![Component {
                kind: "radio".into(),
                spec: "none".into(),
            }],
            qr_expires_at: (ms / 1000 + 3600) * 1000,
        }),
    };
    seal(&e, key)
}

/// Makes one publisher's signed events.
pub struct Signer {
    /// The device.
    pub device: DeviceId,
    key: Key,
    run: u8,
    publisher: u8,
    pad: String,
}

impl Signer {
    /// A signer for `device` whose envelopes are about `size` bytes.
    pub fn new(device: DeviceId, key: Key, run: u8, publisher: u8, size: usize) -> Self {
        let mut s = Signer {
            device,
            key,
            run,
            publisher,
            pad: String::new(),
        };
        let base = s.sign(1).len();
        s.pad = "x".repeat(size.saturating_sub(base));
        s
    }

    /// The envelope of the publisher's event number `seq` (its kid seq too).
    pub fn sign(&self, seq: u64) -> Vec<u8> {
        let ms = now_ms();
        let mut metadata = BTreeMap::new();
        metadata.insert("pad".to_string(), MetaValue::Text(self.pad.clone()));
        let e = Event {
            id: event_id(ms, self.run, self.publisher, seq),
            src: self.device.kid(),
            seq,
            ts: ms,
            device: self.device.clone(),
            body: Body::Action(Action {
                action: "qr_scan".into(),
                metadata,
                ip: Some("10.0.0.42".into()),
                user_agent: None,
            }),
        };
        seal(&e, &self.key)
    }
}

/// An unsigned payload of `size` bytes (at least 10): publisher (u16) then seq (u64), big
/// endian, then padding.
pub fn plain(publisher: u16, seq: u64, size: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(size.max(10));
    p.extend_from_slice(&publisher.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.resize(size.max(10), b'x');
    p
}

/// (publisher, seq) of a [`plain`] payload.
pub fn parse_plain(p: &[u8]) -> Option<(u16, u64)> {
    let publisher = u16::from_be_bytes(p.get(0..2)?.try_into().ok()?);
    let seq = u64::from_be_bytes(p.get(2..10)?.try_into().ok()?);
    Some((publisher, seq))
}
