//! Events relayed to a device on its `cmd/` topic.
//!
//! A device holds no key but its own, so it cannot check the MAC of an event another
//! principal signed: it trusts relayed events because they arrive over its authenticated
//! broker connection, which only the broker can publish to after verifying them (DESIGN.md,
//! Relaying). The agent still parses them strictly: the COSE structure, the payload's strict
//! decoding, `src` = the envelope's kid and the signer rules of the catalogue.
//!
//! `pairbus-schemas` has no "payload without verification" accessor (by design: nothing
//! unverified is trusted on the broker side), so the payload is taken out here with `coset`
//! after [`Unverified::parse`] has checked the structure.

use coset::{CoseMac0, TaggedCborSerializable};
use pairbus_schemas::envelope::Unverified;
use pairbus_schemas::{Event, MAX_EVENT_SIZE};
use thiserror::Error;

/// Why a relayed message was ignored.
#[derive(Debug, Error)]
pub enum RelayedError {
    /// Not a pairbus envelope.
    #[error("envelope: {0}")]
    Envelope(#[from] pairbus_schemas::EnvelopeError),
    /// The payload is not a valid event.
    #[error("payload: {0}")]
    Payload(#[from] pairbus_schemas::DecodeError),
    /// `src` is not the envelope's kid.
    #[error("payload src {src} is not the envelope kid {kid}")]
    KidMismatch {
        /// Envelope kid.
        kid: String,
        /// Payload src.
        src: String,
    },
    /// The signer may not make this event.
    #[error("signer: {0}")]
    Signer(#[from] pairbus_schemas::event::SignerError),
}

/// The payload of a COSE_Mac0 whose structure [`Unverified::parse`] accepts (MAC unchecked).
pub fn payload_of(cose: &[u8]) -> Result<Vec<u8>, RelayedError> {
    Unverified::parse(cose, MAX_EVENT_SIZE)?;
    let mac0 = CoseMac0::from_tagged_slice(cose).map_err(|e| {
        RelayedError::Envelope(pairbus_schemas::EnvelopeError::Malformed(e.to_string()))
    })?;
    mac0.payload.ok_or(RelayedError::Envelope(
        pairbus_schemas::EnvelopeError::MissingPayload,
    ))
}

/// Parses a relayed event strictly, without its MAC (see the module documentation).
pub fn parse_relayed(cose: &[u8]) -> Result<Event, RelayedError> {
    let kid = Unverified::parse(cose, MAX_EVENT_SIZE)?.kid().clone();
    let event = Event::decode(&payload_of(cose)?, MAX_EVENT_SIZE)?;
    if event.src != kid {
        return Err(RelayedError::KidMismatch {
            kid: kid.to_string(),
            src: event.src.to_string(),
        });
    }
    event.check_signer()?;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pairbus_schemas::event::{Body, Revoked};
    use pairbus_schemas::ids::{DeviceId, EventId, Kid};
    use pairbus_schemas::keys::RootSecret;
    use pairbus_schemas::seal;

    #[test]
    fn parses_structure_without_the_key_and_refuses_garbage() {
        let op = Kid::parse("operator:admin").unwrap();
        let ev = Event {
            id: EventId([1; 16]),
            src: op.clone(),
            seq: 1,
            ts: 5,
            device: DeviceId::parse("0123456789abcdef").unwrap(),
            body: Body::Revoked(Revoked {
                reason: "lost".into(),
            }),
        };
        let cose = seal(&ev, &RootSecret::from_bytes([1; 32]).derive(&op));
        assert_eq!(parse_relayed(&cose).unwrap(), ev);
        assert!(parse_relayed(b"garbage").is_err());
        let mut bad = ev.clone();
        bad.src = Kid::parse("operator:other").unwrap();
        let forged_src = pairbus_schemas::envelope::seal_payload(
            &op,
            &RootSecret::from_bytes([1; 32]).derive(&op),
            bad.encode(),
        );
        assert!(matches!(
            parse_relayed(&forged_src),
            Err(RelayedError::KidMismatch { .. })
        ));
    }
}
