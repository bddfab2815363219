//! The replay attack: bytes already committed, published again as they are, by a plain MQTT
//! client (rumqttc) holding the principal's credentials; returns the broker's answer.

use super::DemoError;
use pairbus_agent::sys;
use pairbus_schemas::identity::Identity;
use pairbus_schemas::messages::{Committed, Rejection};
use pairbus_schemas::{EventId, Topic};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS, SubscribeFilter};
use std::time::Duration;

/// Connects to `identity.broker` as `identity` (a client id of its own), publishes `cose` on
/// the principal's `in/` topic, and returns the broker's `committed/` answer for `id`.
/// A `rejected/` answer, or none within `timeout`, is an error.
pub async fn republish(
    identity: &Identity,
    cose: Vec<u8>,
    id: EventId,
    timeout: Duration,
) -> Result<Committed, DemoError> {
    let (host, port) = pairbus_agent::session::parse_broker(&identity.broker)?;
    let kid = identity.kid.clone();
    let client_id = format!("{kid}-replay-{}", hex::encode(sys::random::<4>()));
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_clean_session(true)
        .set_max_packet_size(256 * 1024, 256 * 1024)
        .set_credentials(
            kid.to_string(),
            identity.key.mint_token(&kid, sys::now_secs() + 120),
        );
    let (client, mut eventloop) = AsyncClient::new(o, 16);
    let committed = Topic::Committed(kid.clone()).to_string();
    let rejected = Topic::Rejected(kid.clone()).to_string();
    let mqtt = |e: rumqttc::ClientError| DemoError::Mqtt(e.to_string());
    let wait = async {
        loop {
            match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    // One SUBSCRIBE for both topics: one SUBACK, then one PUBLISH.
                    client
                        .subscribe_many([
                            SubscribeFilter::new(committed.clone(), QoS::AtLeastOnce),
                            SubscribeFilter::new(rejected.clone(), QoS::AtLeastOnce),
                        ])
                        .await
                        .map_err(mqtt)?;
                }
                Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                    client
                        .publish(
                            Topic::In(kid.clone()).to_string(),
                            QoS::AtLeastOnce,
                            false,
                            cose.clone(),
                        )
                        .await
                        .map_err(mqtt)?;
                }
                Ok(MqttEvent::Incoming(Packet::Publish(p))) if p.topic == committed => {
                    if let Ok(c) = Committed::decode(&p.payload) {
                        if c.id == id {
                            return Ok(c);
                        }
                    }
                }
                Ok(MqttEvent::Incoming(Packet::Publish(p))) if p.topic == rejected => {
                    if let Ok(r) = serde_json::from_slice::<Rejection>(&p.payload) {
                        if r.event_id.as_deref() == Some(id.to_hex().as_str()) {
                            return Err(DemoError::Refused {
                                by: "the broker".into(),
                                why: format!("{}: {}", r.reason, r.detail),
                            });
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(DemoError::Mqtt(e.to_string())),
            }
        }
    };
    let answer = tokio::time::timeout(timeout, wait).await;
    let _ = client.disconnect().await;
    answer.map_err(|_| DemoError::Timeout {
        what: "the broker's answer to the replayed event".into(),
        secs: timeout.as_secs(),
    })?
}
