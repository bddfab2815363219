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
        _ => kind != pairbus_schemas::PrincipalKind::Device || e.src.is_device(&e.device),
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

/// A closed map read in one pass: its text keys must come in deterministic order (shorter
/// first, then bytewise), which is the order the decoders below ask for them in; an unknown,
/// missing, duplicate or misplaced key makes `key` fail (and the caller fall back).
pub(crate) struct Obj<'r, 'a> {
    r: &'r mut Reader<'a>,
    left: u64,
}

impl<'r, 'a> Obj<'r, 'a> {
    #[inline]
    pub(crate) fn open(r: &'r mut Reader<'a>) -> Option<Self> {
        let left = r.map_len()?;
        Some(Obj { r, left })
    }

    /// True (key consumed) when the next key is `name`.
    #[inline]
    fn opt(&mut self, name: &[u8]) -> bool {
        if self.left == 0 {
            return false;
        }
        let mut peek = *self.r;
        match peek.text_bytes() {
            Some(k) if k == name => {
                *self.r = peek;
                self.left -= 1;
                true
            }
            _ => false,
        }
    }

    /// The reader positioned on the value of the required key `name`.
    #[inline]
    pub(crate) fn key(&mut self, name: &[u8]) -> Option<&mut Reader<'a>> {
        self.opt(name).then_some(&mut *self.r)
    }

    fn text(&mut self, name: &[u8]) -> Option<String> {
        self.key(name)?.text().map(str::to_owned)
    }

    fn device(&mut self, name: &[u8]) -> Option<DeviceId> {
        DeviceId::parse(self.key(name)?.text()?).ok()
    }

    /// An optional text; kept only when `keep` (validated either way).
    fn opt_text(&mut self, name: &[u8], keep: bool) -> Option<Option<String>> {
        if !self.opt(name) {
            return Some(None);
        }
        let t = self.r.text()?;
        Some(keep.then(|| t.to_owned()))
    }

    #[inline]
    pub(crate) fn end(self) -> Option<()> {
        (self.left == 0).then_some(())
    }
}

/// A metadata map (text keys in deterministic order; text, integer or boolean values); the
/// entries are kept only when `keep`.
fn metadata(r: &mut Reader<'_>, keep: bool) -> Option<Metadata> {
    let n = r.map_len()?;
    let mut out = Metadata::new();
    let mut prev: Option<&[u8]> = None;
    for _ in 0..n {
        let mut k = *r;
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
                MetaValue::Text(if keep { t.to_owned() } else { String::new() })
            }
            crate::cbor::SIMPLE => MetaValue::Bool(r.boolean()?),
            _ => return None,
        };
        if keep {
            out.insert(key.to_owned(), v);
        }
    }
    Some(out)
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
    let mut o = Obj::open(&mut r)?;
    if o.left != 8 || o.key(b"v")?.uint()? != SCHEMA_VERSION {
        return None;
    }
    let id = EventId(o.key(b"id")?.bytes_n()?);
    let ts = o.key(b"ts")?.uint()?;
    let seq = o.key(b"seq")?.uint()?;
    let src_text = o.key(b"src")?.text()?;
    let body_r = o.key(b"body")?;
    let mut body_at = *body_r;
    body_r.skip()?;
    let t = EventType::parse(o.key(b"type")?.text()?)?;
    let device_text = o.key(b"device")?.text()?;
    o.end()?;
    if !r.is_empty() || seq == 0 || body_at.peek_major()? != MAP {
        return None;
    }
    let device = DeviceId::parse(device_text).ok()?;
    // A device signing about itself (the common case): its kid is built from the device id.
    let src = match src_text.strip_prefix("device:") {
        Some(name) if name == device_text => device.kid(),
        _ => Kid::parse(src_text).ok()?,
    };
    let body = decode_body(t, &mut body_at, full)?;
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
    let mut f = Obj::open(r)?;
    let body = match t {
        EventType::Manufactured => {
            let name = f.text(b"name")?;
            let model = f.text(b"model")?;
            let comps = f.key(b"components")?;
            let n = comps.array_len()?;
            let mut components = Vec::with_capacity(usize::try_from(n.min(64)).ok()?);
            for _ in 0..n {
                let mut c = Obj::open(comps)?;
                let comp = Component {
                    kind: c.text(b"kind")?,
                    spec: c.text(b"spec")?,
                };
                c.end()?;
                components.push(comp);
            }
            let device_type = f.text(b"device_type")?;
            let serial_hash = f.key(b"serial_hash")?.bytes_n()?;
            let manufacturer = f.text(b"manufacturer")?;
            let qr_expires_at = f.key(b"qr_expires_at")?.uint()?;
            Body::Manufactured(Manufactured {
                serial_hash,
                device_type,
                model,
                manufacturer,
                name,
                components,
                qr_expires_at,
            })
        }
        EventType::Activated => {
            let ip = f.opt_text(b"ip", true)?;
            let qr = f.text(b"qr")?;
            let owner = f.text(b"owner")?;
            let user_agent = f.opt_text(b"user_agent", true)?;
            let fingerprint = f.opt_text(b"fingerprint", true)?;
            let activation_token_hash = f.key(b"activation_token_hash")?.bytes_n()?;
            Body::Activated(Activated {
                qr,
                owner,
                activation_token_hash,
                ip,
                user_agent,
                fingerprint,
            })
        }
        EventType::SetupCompleted => {
            let role = Role::parse(f.key(b"role")?.text()?)?;
            let owner = f.text(b"owner")?;
            Body::SetupCompleted(SetupCompleted { owner, role })
        }
        EventType::PairingRequested => {
            let sensor = f.device(b"sensor")?;
            let manager = f.device(b"manager")?;
            Body::PairingRequested(PairingRequested { manager, sensor })
        }
        EventType::PairingOffered => {
            let nonce = f.key(b"nonce")?.bytes_n()?;
            let sensor = f.device(b"sensor")?;
            let expires_at = f.key(b"expires_at")?.uint()?;
            Body::PairingOffered(PairingOffered {
                sensor,
                nonce,
                expires_at,
            })
        }
        EventType::PairingAccepted => {
            let nonce = f.key(b"nonce")?.bytes_n()?;
            let manager = f.device(b"manager")?;
            Body::PairingAccepted(PairingAccepted { manager, nonce })
        }
        EventType::PairingDeclined | EventType::PairingCancelled => {
            let b = PairingEnded {
                nonce: f.key(b"nonce")?.bytes_n()?,
                reason: f.text(b"reason")?,
            };
            if t == EventType::PairingDeclined {
                Body::PairingDeclined(b)
            } else {
                Body::PairingCancelled(b)
            }
        }
        EventType::PairingUnpaired => Body::PairingUnpaired(Unpaired {
            peer: f.device(b"peer")?,
        }),
        EventType::ModeChanged => {
            if f.key(b"mode")?.text()? != "standalone" {
                return None;
            }
            Body::ModeChanged(ModeChanged)
        }
        EventType::Action => {
            let ip = f.opt_text(b"ip", full)?;
            let action = f.text(b"action")?;
            let metadata = metadata(f.key(b"metadata")?, full)?;
            let user_agent = f.opt_text(b"user_agent", full)?;
            Body::Action(Action {
                action,
                metadata,
                ip,
                user_agent,
            })
        }
        EventType::CommandIssued => {
            let params = metadata(f.key(b"params")?, full)?;
            let target = f.device(b"target")?;
            let command = Command::parse(f.key(b"command")?.text()?)?;
            let expires_at = f.key(b"expires_at")?.uint()?;
            Body::CommandIssued(CommandIssued {
                target,
                command,
                params,
                expires_at,
            })
        }
        EventType::CommandCompleted => {
            let result = metadata(f.key(b"result")?, full)?;
            let outcome = Outcome::parse(f.key(b"outcome")?.text()?)?;
            let command_id = EventId(f.key(b"command_id")?.bytes_n()?);
            Body::CommandCompleted(CommandCompleted {
                command_id,
                outcome,
                result,
            })
        }
        EventType::Revoked => Body::Revoked(Revoked {
            reason: f.text(b"reason")?,
        }),
    };
    f.end()?;
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
