//! The pure decision on one message read from an `in/` topic: refuse it (with the reason code
//! and the principal to tell) or hand a verified event to the log.

use super::keys::KeyCache;
use crate::log::VerifiedEvent;
use crate::mqtt::auth::PlaneKind;
use pairbus_schemas::messages::{RejectReason, Rejection};
use pairbus_schemas::{open_event, Event, Kid, Topic};

/// What to do with one message.
#[derive(Debug)]
pub enum Checked {
    /// Verified: append it.
    Accepted {
        /// The decoded event (boxed: it is much larger than a refusal).
        event: Box<Event>,
        /// What the log needs.
        verified: VerifiedEvent,
    },
    /// Refused: publish `rejection` on the principal's `rejected/` topic.
    Refused {
        /// The principal named by the topic.
        principal: Kid,
        /// Why.
        rejection: Rejection,
    },
    /// Not an `in/` topic of this plane's principals (nobody to answer).
    Ignored,
}

/// Checks a message published on `topic` of `plane`: the topic must be `in/<kind>/<id>` of a
/// principal that belongs to this plane; the envelope must open with that principal's key
/// (size, structure, MAC, payload, signer rules); the event's kid must be the topic's principal.
pub fn check(
    plane: PlaneKind,
    topic: &[u8],
    payload: Vec<u8>,
    keys: &mut KeyCache,
    limit: usize,
) -> Checked {
    let principal = match std::str::from_utf8(topic).ok().map(Topic::parse) {
        Some(Ok(Topic::In(kid))) if PlaneKind::of(kid.kind()) == Some(plane) => kid,
        _ => return Checked::Ignored,
    };
    let refuse =
        |reason: RejectReason, detail: String, event_id: Option<String>| Checked::Refused {
            principal: principal.clone(),
            rejection: Rejection {
                reason,
                detail,
                event_id,
            },
        };
    let event = match open_event(&payload, limit, |kid| Some(keys.key(kid))) {
        Ok(e) => e,
        Err(e) => return refuse(e.reason(), e.to_string(), None),
    };
    if event.src != principal {
        return refuse(
            RejectReason::TopicMismatch,
            format!(
                "event signed by {} was published on the topic of {principal}",
                event.src
            ),
            Some(event.id.to_hex()),
        );
    }
    let verified = VerifiedEvent::from_event(&event, payload);
    Checked::Accepted {
        event: Box::new(event),
        verified,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pairbus_schemas::vectors::{root, sample_events};
    use pairbus_schemas::{seal, EventType, MAX_EVENT_SIZE};

    fn action() -> Event {
        sample_events()
            .into_iter()
            .find(|e| e.event_type() == EventType::Action)
            .unwrap()
    }

    fn run(plane: PlaneKind, topic: &str, bytes: Vec<u8>) -> Checked {
        check(
            plane,
            topic.as_bytes(),
            bytes,
            &mut KeyCache::new(root(), 16),
            MAX_EVENT_SIZE,
        )
    }

    fn reason(c: Checked) -> RejectReason {
        match c {
            Checked::Refused { rejection, .. } => rejection.reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_signed_event_on_its_own_topic_is_accepted() {
        let e = action();
        let topic = Topic::In(e.src.clone()).to_string();
        match run(PlaneKind::Device, &topic, seal(&e, &root().derive(&e.src))) {
            Checked::Accepted { event, verified } => {
                assert_eq!(*event, e);
                assert_eq!(verified.id, e.id);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_carry_their_codes() {
        let e = action();
        let good = seal(&e, &root().derive(&e.src));
        let topic = Topic::In(e.src.clone()).to_string();
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert_eq!(
            reason(run(PlaneKind::Device, &topic, bad)),
            RejectReason::BadMac
        );
        assert_eq!(
            reason(run(PlaneKind::Device, &topic, vec![0xff; 10])),
            RejectReason::Malformed
        );
        let big = vec![0; MAX_EVENT_SIZE + 1];
        assert_eq!(
            reason(run(PlaneKind::Device, &topic, big)),
            RejectReason::TooLarge
        );
        // Another device's topic: the MAC is fine, the principal is not.
        let other = Topic::In(sample_events()[5].src.clone()).to_string();
        assert_ne!(other, topic);
        assert_eq!(
            reason(run(PlaneKind::Device, &other, good.clone())),
            RejectReason::TopicMismatch
        );
        // Wrong plane or not an in/ topic: ignored, nobody to answer.
        assert!(matches!(
            run(PlaneKind::Operator, &topic, good.clone()),
            Checked::Ignored
        ));
        assert!(matches!(
            run(PlaneKind::Device, "pairbus/v1/log", good.clone()),
            Checked::Ignored
        ));
        assert!(matches!(
            run(PlaneKind::Device, "pairbus/v1/in/device/+", good),
            Checked::Ignored
        ));
    }
}
