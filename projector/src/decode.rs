//! Decoding a log record's event without re-verifying its MAC.
//!
//! Records reach the projector after the broker verified their MAC, `src` = kid and the signer
//! rules (`open_event`). Re-checking an HMAC per event would cap the fold far below its goal, so
//! the projector trusts the log's MACs (the chain hash protects the log itself) and only decodes:
//!
//! 1. [`split_cose`] walks the COSE_Mac0 bytes in place (tag 17, `[protected, {}, payload,
//!    tag]`, protected = `{1: 5, 4: kid}`) and returns the kid and the payload slice;
//! 2. [`decode_payload`] reads the payload into a [`pairbus_schemas::Event`] with a zero-copy
//!    reader that accepts only the deterministic encoding and the closed maps of the catalogue;
//! 3. anything the fast path does not accept is handed to the strict decoders of
//!    `pairbus-schemas` ([`pairbus_schemas::Unverified::parse`], [`pairbus_schemas::Event::decode`])
//!    which either decode it or say precisely why not.
//!
//! Then the defensive checks that cost no cryptography run again: `src` = kid and
//! [`pairbus_schemas::Event::check_signer`]. A record that fails any of this becomes a refused
//! trail entry and an alert in the fold, never a panic.

use crate::cbor::{Reader, MAP, TEXT};
use pairbus_schemas::event::{
    Action, Activated, Command, CommandCompleted, CommandIssued, Component, Manufactured,
    MetaValue, Metadata, ModeChanged, Outcome, PairingAccepted, PairingEnded, PairingOffered,
    PairingRequested, Revoked, Role, SetupCompleted, Unpaired,
};
use pairbus_schemas::{
    Body, DeviceId, Event, EventId, EventType, Kid, Unverified, MAX_EVENT_SIZE, SCHEMA_VERSION,
};

/// Why a record's event could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventDecodeError {
    /// The COSE_Mac0 envelope is malformed.
    #[error("envelope: {0}")]
    Envelope(String),
    /// The payload is not a valid v1 event.
    #[error("payload: {0}")]
    Payload(String),
    /// The payload's `src` differs from the envelope's kid.
    #[error("payload src {src} does not equal the envelope kid {kid}")]
    KidMismatch {
        /// The envelope's kid.
        kid: String,
        /// The payload's src.
        src: String,
    },
    /// The signer may not make this event.
    #[error("{0}")]
    Signer(String),
}

/// Decodes the event held by a record (MAC not checked: see the module docs).
pub fn decode_event(cose: &[u8]) -> Result<Event, EventDecodeError> {
    decode_with(cose, true)
}

/// Decodes for the fold: like [`decode_event`], with every field validated, but the free-form
/// maps (action `metadata`, command `params` and `result`) and the optional client details
/// (`ip`, `user_agent`, `fingerprint` of actions) are left empty, since the fold never reads
/// them (`history` decodes the record again in full). Saves most of the allocations per event.
pub fn decode_event_lite(cose: &[u8]) -> Result<Event, EventDecodeError> {
    decode_with(cose, false)
}

fn decode_with(cose: &[u8], full: bool) -> Result<Event, EventDecodeError> {
    let (kid, payload) = match split_cose(cose) {
        Some(parts) => parts,
        None => return Err(slow_envelope_error(cose)),
    };
    let kid = Kid::parse(kid).map_err(|e| EventDecodeError::Envelope(e.to_string()))?;
    let event = match decode_payload_with(payload, full) {
        Some(e) => e,
        None => Event::decode(payload, MAX_EVENT_SIZE)
            .map_err(|e| EventDecodeError::Payload(e.to_string()))?,
    };
    if event.src != kid {
        return Err(EventDecodeError::KidMismatch {
            kid: kid.to_string(),
            src: event.src.to_string(),
        });
    }
    if !signer_ok(&event) {
        event
            .check_signer()
            .map_err(|e| EventDecodeError::Signer(e.to_string()))?;
    }
    Ok(event)
}

/// [`Event::check_signer`] without its allocation on the common path: `true` when the signer
/// may make the event; `false` sends the caller to `check_signer` for the precise error.
fn signer_ok(e: &Event) -> bool {
    let kind = e.src.kind();
    if !e.event_type().signers().contains(&kind) {
        return false;
    }
    match &e.body {
        Body::Manufactured(_) => e.check_signer().is_ok(),
        _ => kind != pairbus_schemas::PrincipalKind::Device || e.src.name() == e.device.as_str(),
    }
}

fn slow_envelope_error(cose: &[u8]) -> EventDecodeError {
    match Unverified::parse(cose, MAX_EVENT_SIZE) {
        Err(e) => EventDecodeError::Envelope(e.to_string()),
        // The strict parser accepts what the fast one did not: a layout this reader does not
        // know. Refusing is safe but would diverge from the broker, so say so loudly.
        Ok(_) => EventDecodeError::Envelope(
            "COSE_Mac0 accepted by pairbus-schemas but not by the projector's reader (a projector bug)".into(),
        ),
    }
}

/// Splits a COSE_Mac0 in pairbus's one accepted layout into (kid text, payload bytes).
pub fn split_cose(cose: &[u8]) -> Option<(&str, &[u8])> {
    if cose.len() > MAX_EVENT_SIZE {
        return None;
    }
    let mut r = Reader::new(cose);
    // tag 17, array of 4
    if r.head()? != (crate::cbor::TAG, 17) || r.array_len()? != 4 {
        return None;
    }
    let protected = r.bytes()?;
    let mut p = Reader::new(protected);
    if p.map_len()? != 2 {
        return None;
    }
    // `{1: 5, 4: kid}`; the entries are taken in either order (the broker's strict parser
    // decides which encodings enter the log; this reader only has to read them).
    let mut kid = None;
    let mut alg = false;
    for _ in 0..2 {
        match p.uint()? {
            1 if !alg => {
                if p.uint()? != 5 {
                    return None;
                }
                alg = true;
            }
            4 if kid.is_none() => kid = Some(std::str::from_utf8(p.bytes()?).ok()?),
            _ => return None,
        }
    }
    let kid = kid?;
    if !p.is_empty() || r.map_len()? != 0 {
        return None;
    }
    let payload = r.bytes()?;
    let tag = r.bytes()?;
    if tag.len() != 32 || !r.is_empty() {
        return None;
    }
    Some((kid, payload))
}

/// A closed map read in place: text keys in deterministic order, values as sub-readers.
struct MapView<'a> {
    keys: [&'a [u8]; 8],
    values: [Reader<'a>; 8],
    len: usize,
    used: u8,
    /// Materialize free-form maps and optional client details (else only validate them).
    full: bool,
}

impl<'a> MapView<'a> {
    fn read(r: &mut Reader<'a>) -> Option<Self> {
        let n = usize::try_from(r.map_len()?).ok()?;
        if n > 8 {
            return None;
        }
        let empty = Reader::new(&[]);
        let mut m = MapView {
            keys: [b""; 8],
            values: [empty; 8],
            len: n,
            used: 0,
            full: true,
        };
        let mut prev: &[u8] = b"";
        for i in 0..n {
            // Keys are compared as bytes with the catalogue's ASCII names: a key that is not
            // valid UTF-8 matches none and fails `finish`, so no UTF-8 check is needed here.
            let k = r.text_bytes()?;
            // Deterministic order of short text keys: shorter first, then bytewise; strictly
            // increasing also refuses duplicates.
            if i > 0 && (k.len(), k) <= (prev.len(), prev) {
                return None;
            }
            if k.len() >= 24 {
                return None;
            }
            prev = k;
            m.keys[i] = k;
            let start = *r;
            r.skip()?;
            m.values[i] = start;
        }
        Some(m)
    }

    fn get(&mut self, name: &str) -> Option<Reader<'a>> {
        let name = name.as_bytes();
        // Length and first byte first: most candidates differ there, which saves a memcmp call.
        let same = |k: &[u8]| k.len() == name.len() && k.first() == name.first() && k == name;
        (0..self.len).find(|&i| same(self.keys[i])).map(|i| {
            self.used |= 1 << i;
            self.values[i]
        })
    }

    fn finish(&self) -> Option<()> {
        (u32::from(self.used).count_ones() as usize == self.len).then_some(())
    }

    fn text(&mut self, name: &str) -> Option<String> {
        self.get(name)?.text().map(str::to_owned)
    }

    fn opt_text(&mut self, name: &str) -> Option<Option<String>> {
        match self.get(name) {
            None => Some(None),
            Some(mut r) => r.text().map(|s| Some(s.to_owned())),
        }
    }

    fn uint(&mut self, name: &str) -> Option<u64> {
        self.get(name)?.uint()
    }

    fn bytes_n<const N: usize>(&mut self, name: &str) -> Option<[u8; N]> {
        self.get(name)?.bytes_n()
    }

    fn device(&mut self, name: &str) -> Option<DeviceId> {
        DeviceId::parse(self.get(name)?.text()?).ok()
    }

    /// An optional text kept only in full mode (validated either way).
    fn detail_text(&mut self, name: &str) -> Option<Option<String>> {
        let full = self.full;
        match self.get(name) {
            None => Some(None),
            Some(mut r) => r.text().map(|s| full.then(|| s.to_owned())),
        }
    }

    fn metadata(&mut self, name: &str) -> Option<Metadata> {
        let full = self.full;
        let mut r = self.get(name)?;
        let n = r.map_len()?;
        let mut out = Metadata::new();
        let mut prev: Option<&[u8]> = None;
        for _ in 0..n {
            let mut k = r;
            let kbytes = r.skip()?;
            if prev.is_some_and(|p| kbytes <= p) {
                return None;
            }
            prev = Some(kbytes);
            let key = k.text()?;
            let v = match r.peek_major()? {
                crate::cbor::UINT | crate::cbor::NINT => MetaValue::Int(r.int()?),
                TEXT => {
                    let t = r.text()?;
                    MetaValue::Text(if full { t.to_owned() } else { String::new() })
                }
                crate::cbor::SIMPLE => MetaValue::Bool(r.boolean()?),
                _ => return None,
            };
            if full {
                out.insert(key.to_owned(), v);
            }
        }
        Some(out)
    }
}

/// Reads a deterministic v1 payload; `None` when it is not one (the caller then asks the strict
/// decoder why).
pub fn decode_payload(payload: &[u8]) -> Option<Event> {
    decode_payload_with(payload, true)
}

fn decode_payload_with(payload: &[u8], full: bool) -> Option<Event> {
    if payload.len() > MAX_EVENT_SIZE {
        return None;
    }
    let mut r = Reader::new(payload);
    let mut m = MapView::read(&mut r)?;
    if !r.is_empty() || m.uint("v")? != SCHEMA_VERSION {
        return None;
    }
    let t = EventType::parse(m.get("type")?.text()?)?;
    let id = EventId(m.bytes_n("id")?);
    let src = Kid::parse(m.get("src")?.text()?).ok()?;
    let seq = m.uint("seq")?;
    let ts = m.uint("ts")?;
    let device = m.device("device")?;
    let mut body_r = m.get("body")?;
    m.finish()?;
    if seq == 0 || body_r.peek_major()? != MAP {
        return None;
    }
    let body = decode_body(t, &mut body_r, full)?;
    Some(Event {
        id,
        src,
        seq,
        ts,
        device,
        body,
    })
}

fn decode_body(t: EventType, r: &mut Reader<'_>, full: bool) -> Option<Body> {
    let mut f = MapView::read(r)?;
    f.full = full;
    let body = match t {
        EventType::Manufactured => {
            let mut comps = f.get("components")?;
            let n = comps.array_len()?;
            let mut components = Vec::with_capacity(usize::try_from(n.min(64)).ok()?);
            for _ in 0..n {
                let mut c = MapView::read(&mut comps)?;
                let comp = Component {
                    kind: c.text("kind")?,
                    spec: c.text("spec")?,
                };
                c.finish()?;
                components.push(comp);
            }
            Body::Manufactured(Manufactured {
                serial_hash: f.bytes_n("serial_hash")?,
                device_type: f.text("device_type")?,
                model: f.text("model")?,
                manufacturer: f.text("manufacturer")?,
                name: f.text("name")?,
                components,
                qr_expires_at: f.uint("qr_expires_at")?,
            })
        }
        EventType::Activated => Body::Activated(Activated {
            qr: f.text("qr")?,
            owner: f.text("owner")?,
            activation_token_hash: f.bytes_n("activation_token_hash")?,
            ip: f.opt_text("ip")?,
            user_agent: f.opt_text("user_agent")?,
            fingerprint: f.opt_text("fingerprint")?,
        }),
        EventType::SetupCompleted => Body::SetupCompleted(SetupCompleted {
            owner: f.text("owner")?,
            role: Role::parse(f.get("role")?.text()?)?,
        }),
        EventType::PairingRequested => Body::PairingRequested(PairingRequested {
            manager: f.device("manager")?,
            sensor: f.device("sensor")?,
        }),
        EventType::PairingOffered => Body::PairingOffered(PairingOffered {
            sensor: f.device("sensor")?,
            nonce: f.bytes_n("nonce")?,
            expires_at: f.uint("expires_at")?,
        }),
        EventType::PairingAccepted => Body::PairingAccepted(PairingAccepted {
            manager: f.device("manager")?,
            nonce: f.bytes_n("nonce")?,
        }),
        EventType::PairingDeclined | EventType::PairingCancelled => {
            let b = PairingEnded {
                nonce: f.bytes_n("nonce")?,
                reason: f.text("reason")?,
            };
            if t == EventType::PairingDeclined {
                Body::PairingDeclined(b)
            } else {
                Body::PairingCancelled(b)
            }
        }
        EventType::PairingUnpaired => Body::PairingUnpaired(Unpaired {
            peer: f.device("peer")?,
        }),
        EventType::ModeChanged => {
            if f.get("mode")?.text()? != "standalone" {
                return None;
            }
            Body::ModeChanged(ModeChanged)
        }
        EventType::Action => Body::Action(Action {
            action: f.text("action")?,
            metadata: f.metadata("metadata")?,
            ip: f.detail_text("ip")?,
            user_agent: f.detail_text("user_agent")?,
        }),
        EventType::CommandIssued => Body::CommandIssued(CommandIssued {
            target: f.device("target")?,
            command: Command::parse(f.get("command")?.text()?)?,
            params: f.metadata("params")?,
            expires_at: f.uint("expires_at")?,
        }),
        EventType::CommandCompleted => Body::CommandCompleted(CommandCompleted {
            command_id: EventId(f.bytes_n("command_id")?),
            outcome: Outcome::parse(f.get("outcome")?.text()?)?,
            result: f.metadata("result")?,
        }),
        EventType::Revoked => Body::Revoked(Revoked {
            reason: f.text("reason")?,
        }),
    };
    f.finish()?;
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pairbus_schemas::vectors::{root, sample_events};
    use pairbus_schemas::{open_event, seal};

    #[test]
    fn fast_path_agrees_with_the_strict_decoder_on_every_sample() {
        for e in sample_events() {
            let cose = seal(&e, &root().derive(&e.src));
            let (kid, payload) = split_cose(&cose).expect("pairbus layout");
            assert_eq!(kid, e.src.to_string());
            assert_eq!(
                decode_payload(payload).as_ref(),
                Some(&e),
                "{}",
                e.event_type()
            );
            let strict = open_event(&cose, MAX_EVENT_SIZE, |k| Some(root().derive(k))).unwrap();
            assert_eq!(decode_event(&cose).unwrap(), strict);
        }
    }

    #[test]
    fn protected_header_entries_in_either_order() {
        let e = &sample_events()[0];
        let cose = seal(e, &root().derive(&e.src));
        let (kid, payload) = split_cose(&cose).unwrap();
        // Rebuild the envelope with `{4: kid, 1: 5}` by hand.
        let kid_b = kid.as_bytes();
        let mut prot = vec![0xa2, 0x04];
        prot.push(0x40 | kid_b.len() as u8);
        prot.extend_from_slice(kid_b);
        prot.extend_from_slice(&[0x01, 0x05]);
        let mut out = vec![0xd1, 0x84, 0x40 | prot.len() as u8];
        out.extend_from_slice(&prot);
        out.push(0xa0);
        match payload.len() {
            n if n < 24 => out.push(0x40 | n as u8),
            n if n < 256 => out.extend_from_slice(&[0x58, n as u8]),
            n => out.extend_from_slice(&[0x59, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(payload);
        out.extend_from_slice(&[0x58, 0x20]);
        out.extend_from_slice(&[0u8; 32]);
        // (Whether the strict parser accepts this order is pairbus-schemas' call; the reader
        // takes both, which is harmless since it never decides what enters the log.)
        assert_eq!(split_cose(&out), Some((kid, payload)));
        assert_eq!(decode_event(&out).unwrap(), *e);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_event(&[]).is_err());
        assert!(decode_event(&[0xd1, 0x84, 0x40]).is_err());
        let e = &sample_events()[0];
        let mut cose = seal(e, &root().derive(&e.src));
        for i in 0..cose.len() {
            cose[i] ^= 0x40;
            let _ = decode_event(&cose);
            cose[i] ^= 0x40;
        }
    }
}

#[cfg(test)]
mod fleet_tests {
    use super::*;

    #[test]
    fn fast_path_takes_every_event_of_a_generated_fleet() {
        let log = crate::testkit::fleet(8, 400);
        for r in &log.records {
            let (_, payload) = split_cose(&r.event).expect("layout");
            assert!(
                decode_payload(payload).is_some(),
                "{:?}",
                Event::decode(payload, MAX_EVENT_SIZE).map(|e| e.event_type())
            );
        }
    }
}
