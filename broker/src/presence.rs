//! The presence mirror: devices publish their retained presence card on the device plane
//! (`pairbus/v1/presence/<device_id>`, with an `offline` card as their last will), and
//! operators, who live on the operator plane, must see them. This module copies every card
//! to the same topic on the operator plane, retained, so that an operator (or any MQTT
//! client subscribed to `pairbus/v1/presence/+` there) discovers the devices online without
//! scanning.
//!
//! What is copied is decided by [`mirror`] (pure): the topic must be a presence topic and the
//! payload a small JSON object naming that device with an `online`/`offline` status (rumqttd
//! 0.20 has no ACLs, so a device could write junk on another's presence topic; junk is not
//! mirrored). An empty payload (a retained message being cleared) is mirrored as such.
//! Cards are not signed: presence is a hint, the log is the record.

use crate::mqtt::plane::{next_publish, Plane, PlaneError};
use crate::worker::Worker;
use pairbus_schemas::topics::{filters, Topic};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish as RouterPublish};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Largest presence card mirrored, bytes.
pub const MAX_CARD: usize = 4096;

/// Why a message on a presence topic is not mirrored.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NotMirrored {
    /// The topic is not `pairbus/v1/presence/<device_id>`.
    #[error("not a presence topic: {0}")]
    Topic(String),
    /// The card is larger than [`MAX_CARD`].
    #[error("presence card of {0} bytes (most {MAX_CARD})")]
    TooLarge(usize),
    /// The card is not a JSON object with `device` and `status`.
    #[error("presence card is not a JSON object with device and status: {0}")]
    NotACard(String),
    /// The card names another device than its topic.
    #[error("presence card for {card} on the topic of {topic}")]
    WrongDevice {
        /// The device of the topic.
        topic: String,
        /// The device the card names.
        card: String,
    },
}

/// Decides whether the message `payload` on `topic` (device plane) is mirrored: the topic to
/// publish on the operator plane, or why not.
pub fn mirror(topic: &str, payload: &[u8]) -> Result<String, NotMirrored> {
    let device = match Topic::parse(topic) {
        Ok(Topic::Presence(d)) => d,
        _ => return Err(NotMirrored::Topic(topic.to_owned())),
    };
    if payload.len() > MAX_CARD {
        return Err(NotMirrored::TooLarge(payload.len()));
    }
    if payload.is_empty() {
        return Ok(topic.to_owned());
    }
    let card: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| NotMirrored::NotACard(e.to_string()))?;
    let named = card
        .get("device")
        .and_then(|v| v.as_str())
        .ok_or_else(|| NotMirrored::NotACard("no `device` string".into()))?;
    match card.get("status").and_then(|v| v.as_str()) {
        Some("online" | "offline") => {}
        _ => {
            return Err(NotMirrored::NotACard(
                "`status` is not online or offline".into(),
            ))
        }
    }
    if named != device.as_str() {
        return Err(NotMirrored::WrongDevice {
            topic: device.to_string(),
            card: named.to_owned(),
        });
    }
    Ok(topic.to_owned())
}

/// The running mirror.
pub struct PresenceMirror {
    worker: Worker,
}

impl PresenceMirror {
    /// Subscribes to every presence topic of the device plane and starts the copying thread.
    pub fn start(device: &Plane, operator: &Plane) -> Result<Self, PlaneError> {
        let (mut sub, rx) = device.link("pairbus-presence")?;
        sub.subscribe(filters::ALL_PRESENCE)
            .map_err(|e| PlaneError::Link {
                plane: "device",
                client_id: "pairbus-presence".into(),
                reason: e.to_string(),
            })?;
        let (tx, _op_rx) = operator.link("pairbus-presence")?;
        let worker = Worker::spawn("pairbus-presence", move |stop| {
            // Both links stay alive as long as the thread: `sub` and `_op_rx` are held.
            let _keep = (sub, _op_rx);
            run(rx, tx, stop)
        })
        .map_err(|e| PlaneError::Runtime("presence", e))?;
        Ok(PresenceMirror { worker })
    }

    /// Stops the copying thread.
    pub fn stop(self) {
        self.worker.stop();
    }
}

fn run(mut rx: LinkRx, mut tx: LinkTx, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match next_publish(&mut rx, Duration::from_millis(100)) {
            Ok(Some(p)) => {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                match mirror(&topic, &p.payload) {
                    Ok(to) => {
                        let packet = Packet::Publish(
                            RouterPublish::new(bytes::Bytes::from(to), p.payload.clone(), true),
                            None,
                        );
                        // `send` only queues for the router: the future is ready at once.
                        if let Err(e) = futures_executor::block_on(tx.send(packet)) {
                            tracing::error!(%topic, error = %e, "presence mirror publish failed");
                        }
                    }
                    Err(e) => tracing::debug!(%topic, error = %e, "presence card not mirrored"),
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "presence link closed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "pairbus/v1/presence/e80421321203c37f";

    #[test]
    fn a_device_card_is_mirrored_on_its_topic() {
        let card = br#"{"device":"e80421321203c37f","status":"online","since":5}"#;
        assert_eq!(mirror(T, card), Ok(T.to_owned()));
        let will = br#"{"device":"e80421321203c37f","status":"offline"}"#;
        assert_eq!(mirror(T, will), Ok(T.to_owned()));
        assert_eq!(mirror(T, b""), Ok(T.to_owned()), "a cleared card");
    }

    #[test]
    fn junk_is_not_mirrored() {
        assert!(matches!(
            mirror("pairbus/v1/cmd/e80421321203c37f", b"{}"),
            Err(NotMirrored::Topic(_))
        ));
        assert!(matches!(
            mirror("pairbus/v1/presence/nothex", b"{}"),
            Err(NotMirrored::Topic(_))
        ));
        assert!(matches!(
            mirror(T, b"not json"),
            Err(NotMirrored::NotACard(_))
        ));
        assert!(matches!(
            mirror(T, br#"{"device":"e80421321203c37f","status":"happy"}"#),
            Err(NotMirrored::NotACard(_))
        ));
        assert!(matches!(
            mirror(T, br#"{"device":"0000000000000000","status":"online"}"#),
            Err(NotMirrored::WrongDevice { .. })
        ));
        let big = vec![b' '; MAX_CARD + 1];
        assert_eq!(mirror(T, &big), Err(NotMirrored::TooLarge(MAX_CARD + 1)));
    }
}
