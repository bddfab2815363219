//! The fast path of [`Event::decode`]: one pass over the payload's `ciborium-ll` heads that
//! fills the `Event` directly, without a `Value` tree.
//!
//! Fast accept, slow refuse: [`decode`] returns `Some` only for a payload that the strict
//! decoder accepts (every head in its shortest form, definite lengths, no float, tag or other
//! simple value, UTF-8 text, map keys strictly increasing by encoded bytes, nothing after the
//! item — the same conditions as `cbor::decode_fast`) *and* whose fields all pass the checks
//! of `Event::from_value`, and then it returns the very event `from_value` builds. On any
//! doubt it returns `None` and [`Event::decode`] takes the reference path, which produces
//! every error. Compared with the reference by the proptests and the `fast_paths` fuzz target.

use crate::cbor::{fast_head, fast_slice};
use crate::event::*;
use crate::ids::{DeviceId, EventId, Kid};
use ciborium_ll::Header;

/// A value of a field, read according to the field's name alone (each name has one type
/// across the catalogue).
enum Val<'a> {
    Text(&'a str),
    Bytes(&'a [u8]),
    Uint(u64),
    Meta(Metadata),
    Components(Vec<Component>),
    Map(Fields<'a>),
}

/// The fields of one map, in input order.
struct Fields<'a>(Vec<(&'a str, Val<'a>)>);

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn head(&mut self) -> Option<Header> {
        let (h, next) = fast_head(self.bytes, self.pos)?;
        self.pos = next;
        Some(h)
    }

    fn slice(&mut self, len: usize) -> Option<&'a [u8]> {
        let (b, next) = fast_slice(self.bytes, self.pos, len)?;
        self.pos = next;
        Some(b)
    }

    fn text_after(&mut self, h: Header) -> Option<&'a str> {
        match h {
            Header::Text(Some(len)) => std::str::from_utf8(self.slice(len)?).ok(),
            _ => None,
        }
    }

    fn text(&mut self) -> Option<&'a str> {
        let h = self.head()?;
        self.text_after(h)
    }

    /// A map's length, bounded by what is left (every entry takes at least two bytes).
    fn map_len(&mut self) -> Option<usize> {
        match self.head()? {
            Header::Map(Some(n)) if n <= (self.bytes.len() - self.pos) / 2 => Some(n),
            _ => None,
        }
    }

    /// A text key, which must sort strictly after `previous` (the previous key's encoding).
    fn key(&mut self, previous: &mut &'a [u8], first: bool) -> Option<&'a str> {
        let start = self.pos;
        let k = self.text()?;
        let encoded = &self.bytes[start..self.pos];
        if !first && *previous >= encoded {
            return None;
        }
        *previous = encoded;
        Some(k)
    }

    fn map(&mut self, depth: usize) -> Option<Fields<'a>> {
        let n = self.map_len()?;
        let mut fields = Vec::with_capacity(n);
        let mut previous: &[u8] = &[];
        for i in 0..n {
            let k = self.key(&mut previous, i == 0)?;
            let v = self.value(k, depth)?;
            fields.push((k, v));
        }
        Some(Fields(fields))
    }

    fn value(&mut self, name: &str, depth: usize) -> Option<Val<'a>> {
        Some(match name {
            "body" if depth == 0 => Val::Map(self.map(depth + 1)?),
            "metadata" | "params" | "result" => Val::Meta(self.metadata()?),
            "components" => Val::Components(self.components()?),
            _ => match self.head()? {
                Header::Positive(n) => Val::Uint(n),
                Header::Bytes(Some(len)) => Val::Bytes(self.slice(len)?),
                h @ Header::Text(Some(_)) => Val::Text(self.text_after(h)?),
                _ => return None,
            },
        })
    }

    fn metadata(&mut self) -> Option<Metadata> {
        let n = self.map_len()?;
        let mut out = Metadata::new();
        let mut previous: &[u8] = &[];
        for i in 0..n {
            let k = self.key(&mut previous, i == 0)?;
            let v = match self.head()? {
                h @ Header::Text(Some(_)) => MetaValue::Text(self.text_after(h)?.to_owned()),
                Header::Positive(n) => MetaValue::Int(i64::try_from(n).ok()?),
                Header::Negative(n) => MetaValue::Int(-1 - i64::try_from(n).ok()?),
                Header::Simple(ciborium_ll::simple::FALSE) => MetaValue::Bool(false),
                Header::Simple(ciborium_ll::simple::TRUE) => MetaValue::Bool(true),
                _ => return None,
            };
            out.insert(k.to_owned(), v);
        }
        Some(out)
    }

    fn components(&mut self) -> Option<Vec<Component>> {
        let n = match self.head()? {
            Header::Array(Some(n)) if n <= self.bytes.len() - self.pos => n,
            _ => return None,
        };
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            // Exactly {"kind": text, "spec": text}, in that (deterministic) order.
            if self.map_len()? != 2 {
                return None;
            }
            let mut previous: &[u8] = &[];
            if self.key(&mut previous, true)? != "kind" {
                return None;
            }
            let kind = self.text()?.to_owned();
            if self.key(&mut previous, false)? != "spec" {
                return None;
            }
            let spec = self.text()?.to_owned();
            out.push(Component { kind, spec });
        }
        Some(out)
    }
}

impl<'a> Fields<'a> {
    fn take(&mut self, name: &str) -> Option<Val<'a>> {
        let i = self.0.iter().position(|(k, _)| *k == name)?;
        Some(self.0.swap_remove(i).1)
    }

    fn text(&mut self, name: &str) -> Option<String> {
        match self.take(name)? {
            Val::Text(s) => Some(s.to_owned()),
            _ => None,
        }
    }

    /// `Some(None)` when absent, `None` when present with another type.
    fn opt_text(&mut self, name: &str) -> Option<Option<String>> {
        match self.take(name) {
            None => Some(None),
            Some(Val::Text(s)) => Some(Some(s.to_owned())),
            Some(_) => None,
        }
    }

    fn uint(&mut self, name: &str) -> Option<u64> {
        match self.take(name)? {
            Val::Uint(n) => Some(n),
            _ => None,
        }
    }

    fn bytes_n<const N: usize>(&mut self, name: &str) -> Option<[u8; N]> {
        match self.take(name)? {
            Val::Bytes(b) => b.try_into().ok(),
            _ => None,
        }
    }

    fn device(&mut self, name: &str) -> Option<DeviceId> {
        match self.take(name)? {
            Val::Text(s) => DeviceId::parse(s).ok(),
            _ => None,
        }
    }

    fn wire<T>(&mut self, name: &str, parse: fn(&str) -> Option<T>) -> Option<T> {
        match self.take(name)? {
            Val::Text(s) => parse(s),
            _ => None,
        }
    }

    fn meta(&mut self, name: &str) -> Option<Metadata> {
        match self.take(name)? {
            Val::Meta(m) => Some(m),
            _ => None,
        }
    }

    /// Every field was taken (maps are closed).
    fn finish(self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

/// `Some(event)` exactly when the reference decoder would return `Ok(event)` and the payload is
/// of the plain kind handled here; `None` otherwise (the caller then asks the reference).
pub(crate) fn decode(payload: &[u8]) -> Option<Event> {
    let mut c = Cursor {
        bytes: payload,
        pos: 0,
    };
    let mut f = c.map(0)?;
    if c.pos != payload.len() {
        return None;
    }
    if f.uint("v")? != SCHEMA_VERSION {
        return None;
    }
    let t = f.wire("type", EventType::parse)?;
    let id = EventId(f.bytes_n("id")?);
    let src = match f.take("src")? {
        Val::Text(s) => Kid::parse(s).ok()?,
        _ => return None,
    };
    let seq = f.uint("seq")?;
    let ts = f.uint("ts")?;
    let device = f.device("device")?;
    let Val::Map(b) = f.take("body")? else {
        return None;
    };
    let body = body(t, b)?;
    f.finish()?;
    if seq == 0 {
        return None;
    }
    Some(Event {
        id,
        src,
        seq,
        ts,
        device,
        body,
    })
}

fn body(t: EventType, mut f: Fields<'_>) -> Option<Body> {
    let body = match t {
        EventType::Manufactured => Body::Manufactured(Manufactured {
            serial_hash: f.bytes_n("serial_hash")?,
            device_type: f.text("device_type")?,
            model: f.text("model")?,
            manufacturer: f.text("manufacturer")?,
            name: f.text("name")?,
            components: match f.take("components")? {
                Val::Components(c) => c,
                _ => return None,
            },
            qr_expires_at: f.uint("qr_expires_at")?,
        }),
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
            role: f.wire("role", Role::parse)?,
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
            f.wire("mode", |s| (s == "standalone").then_some(()))?;
            Body::ModeChanged(ModeChanged)
        }
        EventType::Action => Body::Action(Action {
            action: f.text("action")?,
            metadata: f.meta("metadata")?,
            ip: f.opt_text("ip")?,
            user_agent: f.opt_text("user_agent")?,
        }),
        EventType::CommandIssued => Body::CommandIssued(CommandIssued {
            target: f.device("target")?,
            command: f.wire("command", Command::parse)?,
            params: f.meta("params")?,
            expires_at: f.uint("expires_at")?,
        }),
        EventType::CommandCompleted => Body::CommandCompleted(CommandCompleted {
            command_id: EventId(f.bytes_n("command_id")?),
            outcome: f.wire("outcome", Outcome::parse)?,
            result: f.meta("result")?,
        }),
        EventType::Revoked => Body::Revoked(Revoked {
            reason: f.text("reason")?,
        }),
    };
    f.finish()?;
    Some(body)
}
