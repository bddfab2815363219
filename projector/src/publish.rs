//! What to publish on the audit topics for a batch of effects (pure: the shell sends them).
//!
//! | effect | topic | retained | payload (JSON) |
//! |---|---|---|---|
//! | `DeviceChanged(id)` | `pairbus/v1/audit/devices/<id>` | yes | the device card |
//! | `Trail { device: Some(id), index }` | `pairbus/v1/audit/events/<id>` | no | the trail entry with the event's `details`, as in `history` |
//! | `GraphChanged` | `pairbus/v1/audit/graph` | yes | the pairing graph |
//! | `Alert(index)` | `pairbus/v1/audit/alerts` | no | the alert |
//!
//! Retained views are coalesced: one card per device and one graph per batch, taken from the
//! projections after the batch (the latest state is what a retained message must hold). Trail
//! entries of undecodable records (`device: None`) have no device topic; their alert is
//! published on `audit/alerts`.

use crate::fold::{Effect, Projections};
use crate::graph::graph;
use crate::query::{details, HistoryEntry, RecordSource};
use pairbus_schemas::{DeviceId, Topic};
use std::collections::BTreeSet;

/// One MQTT message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The topic.
    pub topic: Topic,
    /// Whether the broker should retain it.
    pub retain: bool,
    /// The JSON payload.
    pub payload: Vec<u8>,
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // The view types always serialize (string keys, no floats).
    serde_json::to_vec(v).unwrap_or_default()
}

/// The messages for `effects` (all applied to `p`), in effect order, retained views last and
/// coalesced. `log` gives the records the effects came from (for the events' details; the
/// just-applied records, or [`crate::query::NoRecords`]).
pub fn publications<S: RecordSource + ?Sized>(
    p: &Projections,
    effects: &[Effect],
    log: &S,
) -> Vec<Publication> {
    let mut out = Vec::new();
    let mut cards: BTreeSet<&DeviceId> = BTreeSet::new();
    let mut graph_changed = false;
    for fx in effects {
        match fx {
            Effect::Trail {
                device: Some(d),
                index,
            } => {
                if let Some(e) = p.trails.get(d).and_then(|t| t.get(*index)) {
                    let entry = HistoryEntry {
                        details: details(log, e.seq),
                        entry: e,
                    };
                    out.push(Publication {
                        topic: Topic::AuditEvents(d.clone()),
                        retain: false,
                        payload: json(&entry),
                    });
                }
            }
            Effect::Trail { device: None, .. } => {}
            Effect::Alert(i) => {
                if let Some(a) = p.alerts.get(*i) {
                    out.push(Publication {
                        topic: Topic::AuditAlerts,
                        retain: false,
                        payload: json(a),
                    });
                }
            }
            Effect::DeviceChanged(d) => {
                cards.insert(d);
            }
            Effect::GraphChanged => graph_changed = true,
            Effect::CommandChanged(_) => {}
        }
    }
    for d in cards {
        if let Some(c) = p.devices.get(d) {
            out.push(Publication {
                topic: Topic::AuditDevice(d.clone()),
                retain: true,
                payload: json(c),
            });
        }
    }
    if graph_changed {
        out.push(Publication {
            topic: Topic::AuditGraph,
            retain: true,
            payload: json(&graph(p)),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fold::{Config, Projector};
    use crate::testkit::LogBuilder;

    #[test]
    fn a_pairing_publishes_trails_cards_and_the_graph() {
        let mut log = LogBuilder::new();
        let m = log.configured(1, "a");
        let s = log.configured(2, "a");
        log.pair(&m, &s);
        log.command(&s, &m, 1000); // refused: s does not manage m
        let pr = Projector::new(Config::default(), log.root());
        let n = log.records.len();
        let mut p = pr.rebuild(&log.records[..n - 2]);
        let mut fx = Vec::new();
        for r in &log.records[n - 2..] {
            pr.apply_into(&mut p, r, &mut fx);
        }
        let pubs = publications(&p, &fx, log.records.as_slice());
        let topics: Vec<String> = pubs.iter().map(|x| x.topic.to_string()).collect();
        assert!(topics.contains(&format!("pairbus/v1/audit/events/{m}")));
        assert!(topics.contains(&"pairbus/v1/audit/alerts".to_string()));
        assert_eq!(
            topics
                .iter()
                .filter(|t| **t == format!("pairbus/v1/audit/devices/{s}"))
                .count(),
            1,
            "cards are coalesced"
        );
        let g = pubs.iter().find(|x| x.topic == Topic::AuditGraph).unwrap();
        assert!(g.retain);
        let v: serde_json::Value = serde_json::from_slice(&g.payload).unwrap();
        assert_eq!(v["edges"][0]["sensor"], s.to_string());
        let command = pubs
            .iter()
            .filter(|x| x.topic == Topic::AuditEvents(s.clone()))
            .map(|x| serde_json::from_slice::<serde_json::Value>(&x.payload).unwrap())
            .find(|v| v["type"] == "command.issued")
            .unwrap();
        assert_eq!(command["status"], "refused");
        assert_eq!(command["details"]["target"], m.to_string(), "{command}");
        let alert = pubs.iter().find(|x| x.topic == Topic::AuditAlerts).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&alert.payload).unwrap();
        assert_eq!(v["code"], "not_manager");
    }
}
