//! Discovery (operators): which devices are online, from the retained presence cards that
//! running agents publish on `pairbus/v1/presence/<device_id>` (their last will marks them
//! offline) and that the broker mirrors on the operator plane. Replaces the seed's IP scanning.
//!
//! [`parse_card`] and [`Discovered`] are pure; [`discover`] is the rumqttc shell: it
//! subscribes to `pairbus/v1/presence/+`, collects the retained cards for a while, and stops.

use crate::error::AgentError;
use crate::session::parse_broker;
use crate::sys;
use pairbus_schemas::identity::Identity;
use pairbus_schemas::topics::{filters, Topic};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, QoS};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// A presence card as read by an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Card {
    /// The device id.
    pub device: String,
    /// `online` or `offline`.
    pub status: String,
    /// Online since, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// The agent's name and version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Set up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configured: Option<bool>,
    /// Standalone mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standalone: Option<bool>,
    /// Its manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    /// The devices it manages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensors: Option<Vec<String>>,
    /// Events waiting for the broker's confirmation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_events: Option<usize>,
}

impl Card {
    /// Whether the device is online.
    pub fn online(&self) -> bool {
        self.status == "online"
    }

    /// One line for a terminal: `<device>  <status>  key=value…`.
    pub fn line(&self) -> String {
        let mut s = format!("{}  {}", self.device, self.status);
        if let Some(v) = self.since {
            s += &format!("  since={v}");
        }
        if let Some(v) = self.configured {
            s += &format!("  configured={v}");
        }
        if let Some(v) = self.standalone {
            s += &format!("  standalone={v}");
        }
        if let Some(v) = &self.manager {
            s += &format!("  manager={v}");
        }
        if let Some(v) = self.sensors.as_ref().filter(|v| !v.is_empty()) {
            s += &format!("  sensors={}", v.join(","));
        }
        if let Some(v) = &self.agent {
            s += &format!("  agent={v}");
        }
        s
    }
}

/// Reads one presence message: `Ok(None)` for a cleared (empty) card; an error if the topic
/// is not a presence topic or the card is not one, or names another device.
pub fn parse_card(topic: &str, payload: &[u8]) -> Result<Option<Card>, AgentError> {
    let device = match Topic::parse(topic) {
        Ok(Topic::Presence(d)) => d,
        _ => {
            return Err(AgentError::Invalid(format!(
                "not a presence topic: {topic}"
            )))
        }
    };
    if payload.is_empty() {
        return Ok(None);
    }
    let card: Card = serde_json::from_slice(payload)
        .map_err(|e| AgentError::Invalid(format!("presence card on {topic}: {e}")))?;
    if card.device != device.as_str() {
        return Err(AgentError::Invalid(format!(
            "presence card for {} on the topic of {device}",
            card.device
        )));
    }
    Ok(Some(card))
}

/// The cards seen so far, one per device (the latest wins).
#[derive(Debug, Default, Clone)]
pub struct Discovered(BTreeMap<String, Card>);

impl Discovered {
    /// Takes one presence message into account; returns why it was ignored, if it was.
    pub fn add(&mut self, topic: &str, payload: &[u8]) -> Result<(), AgentError> {
        match parse_card(topic, payload)? {
            Some(card) => {
                self.0.insert(card.device.clone(), card);
            }
            None => {
                if let Some(d) = topic.rsplit('/').next() {
                    self.0.remove(d);
                }
            }
        }
        Ok(())
    }

    /// Whether every device of `expected` has an online card.
    pub fn all_online(&self, expected: &[String]) -> bool {
        expected
            .iter()
            .all(|d| self.0.get(d).is_some_and(Card::online))
    }

    /// The devices of `expected` without an online card.
    pub fn missing(&self, expected: &[String]) -> Vec<String> {
        expected
            .iter()
            .filter(|d| !self.0.get(*d).is_some_and(Card::online))
            .cloned()
            .collect()
    }

    /// The cards, by device id; only the online ones unless `all`.
    pub fn cards(&self, all: bool) -> Vec<Card> {
        self.0
            .values()
            .filter(|c| all || c.online())
            .cloned()
            .collect()
    }
}

/// Connects to the identity's broker (an operator's: the operator plane), subscribes to every
/// presence card and collects what arrives within `listen` after the subscription is
/// acknowledged (the retained cards come at once), or until every device of `expect` is
/// online if that list is not empty (the caller checks [`Discovered::missing`]).
pub async fn discover(
    identity: &Identity,
    listen: Duration,
    expect: &[String],
) -> Result<Discovered, AgentError> {
    let (host, port) = parse_broker(&identity.broker)?;
    let kid = identity.kid.to_string();
    let client_id = format!("{kid}-discover-{}", hex::encode(sys::random::<4>()));
    let mut o = MqttOptions::new(client_id, host, port);
    let token = identity
        .key
        .mint_token(&identity.kid, sys::now_secs() + 600);
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_credentials(kid, token);
    let (client, mut events) = AsyncClient::new(o, 64);
    let mut seen = Discovered::default();
    let mut until: Option<tokio::time::Instant> = None;
    loop {
        let next = match until {
            Some(t) => match tokio::time::timeout_at(t, events.poll()).await {
                Ok(e) => e,
                Err(_) => break,
            },
            None => events.poll().await,
        };
        match next.map_err(|e| AgentError::Mqtt(format!("broker {}: {e}", identity.broker)))? {
            Event::Incoming(Packet::ConnAck(a)) => {
                if a.code != ConnectReturnCode::Success {
                    return Err(AgentError::Mqtt(format!(
                        "broker {} refused the connection: {:?}",
                        identity.broker, a.code
                    )));
                }
                client
                    .subscribe(filters::ALL_PRESENCE, QoS::AtLeastOnce)
                    .await
                    .map_err(|e| AgentError::Mqtt(e.to_string()))?;
            }
            Event::Incoming(Packet::SubAck(_)) => {
                until = Some(tokio::time::Instant::now() + listen);
                if !expect.is_empty() && seen.all_online(expect) {
                    break;
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                if let Err(e) = seen.add(&p.topic, &p.payload) {
                    tracing::warn!(error = %e, "presence card ignored");
                }
                if !expect.is_empty() && until.is_some() && seen.all_online(expect) {
                    break;
                }
            }
            _ => {}
        }
    }
    let _ = client.disconnect().await;
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "e80421321203c37f";

    fn topic(d: &str) -> String {
        format!("pairbus/v1/presence/{d}")
    }

    #[test]
    fn online_and_offline_cards() {
        let mut seen = Discovered::default();
        let on = format!(
            r#"{{"device":"{D}","status":"online","since":5,"agent":"pairbus-agent/0.1.0","configured":true,"standalone":false,"sensors":["0000000000000001"],"pending_events":0}}"#
        );
        seen.add(&topic(D), on.as_bytes()).unwrap();
        let cards = seen.cards(false);
        assert_eq!(cards.len(), 1);
        assert_eq!(
            cards[0].sensors.as_deref(),
            Some(&["0000000000000001".to_owned()][..])
        );
        assert!(cards[0].line().contains("sensors=0000000000000001"));
        // The last will replaces it.
        let off = format!(r#"{{"device":"{D}","status":"offline","agent":"x"}}"#);
        seen.add(&topic(D), off.as_bytes()).unwrap();
        assert!(seen.cards(false).is_empty());
        assert_eq!(seen.cards(true)[0].status, "offline");
        // A cleared card removes it.
        assert_eq!(seen.missing(&[D.to_owned()]), vec![D.to_owned()]);
        seen.add(&topic(D), b"").unwrap();
        assert!(seen.cards(true).is_empty());
        seen.add(&topic(D), on.as_bytes()).unwrap();
        assert!(seen.all_online(&[D.to_owned()]));
        assert!(!seen.all_online(&[D.to_owned(), "0000000000000001".to_owned()]));
    }

    #[test]
    fn bad_cards_are_errors() {
        let mut seen = Discovered::default();
        assert!(seen.add("pairbus/v1/log", b"{}").is_err());
        assert!(seen.add(&topic(D), b"junk").is_err());
        let other = r#"{"device":"0000000000000001","status":"online"}"#;
        assert!(seen.add(&topic(D), other.as_bytes()).is_err());
        assert!(seen.cards(true).is_empty());
    }
}
