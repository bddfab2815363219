//! Shared helpers for the log's integration tests: signed events and a temp store.
#![allow(dead_code)]

use pairbus_broker::log::{LogConfig, SledLog, VerifiedEvent};
use pairbus_schemas::event::{Action, MetaValue, Revoked};
use pairbus_schemas::vectors::root;
use pairbus_schemas::{seal, Body, DeviceId, Event, EventId, Kid};
use std::path::Path;

/// The device id number `n`.
pub fn device(n: u64) -> DeviceId {
    DeviceId::parse(&format!("{n:016x}")).unwrap()
}

/// A signed `device.action` (~200 bytes) by device `dev` with principal seq `kid_seq`; `uniq`
/// makes the event id unique.
pub fn action(dev: u64, kid_seq: u64, uniq: u64) -> Event {
    let d = device(dev);
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert("n".to_string(), MetaValue::Int(uniq as i64));
    Event {
        id: EventId::new_v7(1_767_225_600_000 + uniq, rand10(uniq)),
        src: d.kid(),
        seq: kid_seq,
        ts: 1_767_225_600_000 + uniq,
        device: d,
        body: Body::Action(Action {
            action: "voice_recording".into(),
            metadata,
            ip: Some("192.168.10.42".into()),
            user_agent: Some("pairbus-agent/0.1 (linux; arm64)".into()),
        }),
    }
}

fn rand10(uniq: u64) -> [u8; 10] {
    let mut r = [0u8; 10];
    r[..8].copy_from_slice(&uniq.to_be_bytes());
    r
}

/// `device.revoked` about device `dev`, signed by `operator:admin`.
pub fn revoke(dev: u64, op_seq: u64, uniq: u64) -> Event {
    Event {
        id: EventId::new_v7(1_767_225_600_000 + uniq, {
            let mut r = rand10(uniq);
            r[9] = 0xee;
            r
        }),
        src: Kid::parse("operator:admin").unwrap(),
        seq: op_seq,
        ts: 1_767_225_600_000 + uniq,
        device: device(dev),
        body: Body::Revoked(Revoked {
            reason: "stolen".into(),
        }),
    }
}

/// Seals and wraps an event.
pub fn verified(e: &Event) -> VerifiedEvent {
    let bytes = seal(e, &root().derive(&e.src));
    VerifiedEvent::from_event(e, bytes)
}

/// Opens a store at `dir` with the vector root secret.
pub fn open(dir: &Path) -> SledLog {
    SledLog::open(LogConfig::new(dir), root()).unwrap()
}

/// Opens with a small cache and the given checkpoint cadence.
pub fn open_with(dir: &Path, every: u64, interval_ms: u64) -> SledLog {
    let mut c = LogConfig::new(dir);
    c.checkpoint_every = every;
    c.checkpoint_interval_ms = interval_ms;
    c.cache_capacity = 64 << 20;
    SledLog::open(c, root()).unwrap()
}
