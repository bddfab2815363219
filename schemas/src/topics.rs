//! MQTT topic names of DESIGN.md (Topics): builders, a strict parser, and the filters the
//! broker and operators subscribe with. Every topic lives under `pairbus/v1/`.

use crate::ids::{is_valid_id, DeviceId, Kid, PrincipalKind};
use std::fmt;
use thiserror::Error;

/// The prefix of every pairbus v1 topic.
pub const PREFIX: &str = "pairbus/v1";

/// Why a topic name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicError {
    /// Contains `+` or `#` (a filter, not a topic name).
    #[error("`{0}`: wildcards are not allowed in a topic name")]
    Wildcard(String),
    /// Contains an empty level (`a//b`, a leading or trailing `/`).
    #[error("`{0}`: empty topic level")]
    EmptyLevel(String),
    /// An id level outside `[A-Za-z0-9_.-]` (1–64 characters).
    #[error("`{0}`: id `{1}` must be 1 to 64 characters from [A-Za-z0-9_.-]")]
    BadId(String, String),
    /// Not a pairbus v1 topic.
    #[error("`{0}` is not a pairbus/v1 topic")]
    Unknown(String),
}

/// The kinds of principal that publish events (`in/<kind>/<id>`).
pub fn publishing_kinds() -> [PrincipalKind; 3] {
    [
        PrincipalKind::Device,
        PrincipalKind::Operator,
        PrincipalKind::Factory,
    ]
}

/// Every pairbus v1 topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `pairbus/v1/in/<kind>/<id>`: events from the principal `<kind>:<id>`.
    In(Kid),
    /// `pairbus/v1/committed/<kind>/<id>`: durable-append confirmations.
    Committed(Kid),
    /// `pairbus/v1/rejected/<kind>/<id>`: refusals.
    Rejected(Kid),
    /// `pairbus/v1/log`: committed log records.
    Log,
    /// `pairbus/v1/checkpoints`: signed chain heads.
    Checkpoints,
    /// `pairbus/v1/cmd/<device_id>`: events relayed to a device.
    Cmd(DeviceId),
    /// `pairbus/v1/presence/<device_id>`: retained presence card.
    Presence(DeviceId),
    /// `pairbus/v1/audit/devices/<device_id>`: retained device state view.
    AuditDevice(DeviceId),
    /// `pairbus/v1/audit/events/<device_id>`: the device's trail.
    AuditEvents(DeviceId),
    /// `pairbus/v1/audit/graph`: retained pairing graph.
    AuditGraph,
    /// `pairbus/v1/audit/alerts`: anomalies.
    AuditAlerts,
    /// `pairbus/v1/replay/request`: replay requests.
    ReplayRequest,
    /// `pairbus/v1/replay/reply/<request_id>`: a replay's records.
    ReplayReply(String),
}

impl Topic {
    /// A reply topic; `request_id` must be a valid id.
    pub fn replay_reply(request_id: &str) -> Result<Self, TopicError> {
        if is_valid_id(request_id) {
            Ok(Topic::ReplayReply(request_id.to_owned()))
        } else {
            Err(TopicError::BadId(
                format!("{PREFIX}/replay/reply/{request_id}"),
                request_id.to_owned(),
            ))
        }
    }

    /// Parses a topic name strictly: no wildcards, no empty levels, ids from `[A-Za-z0-9_.-]`.
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let own = || topic.to_owned();
        if topic.contains(['+', '#']) {
            return Err(TopicError::Wildcard(own()));
        }
        let levels: Vec<&str> = topic.split('/').collect();
        if levels.iter().any(|l| l.is_empty()) {
            return Err(TopicError::EmptyLevel(own()));
        }
        let rest = match levels.as_slice() {
            ["pairbus", "v1", rest @ ..] => rest,
            _ => return Err(TopicError::Unknown(own())),
        };
        let id = |s: &str| -> Result<String, TopicError> {
            if is_valid_id(s) {
                Ok(s.to_owned())
            } else {
                Err(TopicError::BadId(own(), s.to_owned()))
            }
        };
        let device = |s: &str| -> Result<DeviceId, TopicError> {
            id(s)?;
            DeviceId::parse(s).map_err(|_| TopicError::BadId(own(), s.to_owned()))
        };
        let kid = |kind: &str, name: &str| -> Result<Kid, TopicError> {
            id(name)?;
            let kind = PrincipalKind::parse(kind)
                .filter(|k| publishing_kinds().contains(k))
                .ok_or_else(|| TopicError::Unknown(own()))?;
            Kid::new(kind, name).map_err(|_| TopicError::BadId(own(), name.to_owned()))
        };
        Ok(match rest {
            ["in", k, n] => Topic::In(kid(k, n)?),
            ["committed", k, n] => Topic::Committed(kid(k, n)?),
            ["rejected", k, n] => Topic::Rejected(kid(k, n)?),
            ["log"] => Topic::Log,
            ["checkpoints"] => Topic::Checkpoints,
            ["cmd", d] => Topic::Cmd(device(d)?),
            ["presence", d] => Topic::Presence(device(d)?),
            ["audit", "devices", d] => Topic::AuditDevice(device(d)?),
            ["audit", "events", d] => Topic::AuditEvents(device(d)?),
            ["audit", "graph"] => Topic::AuditGraph,
            ["audit", "alerts"] => Topic::AuditAlerts,
            ["replay", "request"] => Topic::ReplayRequest,
            ["replay", "reply", r] => Topic::ReplayReply(id(r)?),
            _ => return Err(TopicError::Unknown(own())),
        })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let principal = |f: &mut fmt::Formatter<'_>, what: &str, kid: &Kid| {
            write!(f, "{PREFIX}/{what}/{}/{}", kid.kind(), kid.name())
        };
        match self {
            Topic::In(k) => principal(f, "in", k),
            Topic::Committed(k) => principal(f, "committed", k),
            Topic::Rejected(k) => principal(f, "rejected", k),
            Topic::Log => write!(f, "{PREFIX}/log"),
            Topic::Checkpoints => write!(f, "{PREFIX}/checkpoints"),
            Topic::Cmd(d) => write!(f, "{PREFIX}/cmd/{d}"),
            Topic::Presence(d) => write!(f, "{PREFIX}/presence/{d}"),
            Topic::AuditDevice(d) => write!(f, "{PREFIX}/audit/devices/{d}"),
            Topic::AuditEvents(d) => write!(f, "{PREFIX}/audit/events/{d}"),
            Topic::AuditGraph => write!(f, "{PREFIX}/audit/graph"),
            Topic::AuditAlerts => write!(f, "{PREFIX}/audit/alerts"),
            Topic::ReplayRequest => write!(f, "{PREFIX}/replay/request"),
            Topic::ReplayReply(r) => write!(f, "{PREFIX}/replay/reply/{r}"),
        }
    }
}

/// Subscription filters used by the parts of pairbus.
pub mod filters {
    /// Every principal's incoming events (the broker's ingest).
    pub const ALL_IN: &str = "pairbus/v1/in/+/+";
    /// Every presence card (mirrored to operators).
    pub const ALL_PRESENCE: &str = "pairbus/v1/presence/+";
    /// Every audit view.
    pub const ALL_AUDIT: &str = "pairbus/v1/audit/#";
    /// Every device's state view.
    pub const AUDIT_DEVICES: &str = "pairbus/v1/audit/devices/+";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_round_trips() {
        let dev = DeviceId::parse("e80421321203c37f").unwrap();
        let topics = [
            Topic::In(dev.kid()),
            Topic::In(Kid::parse("operator:admin").unwrap()),
            Topic::In(Kid::parse("factory:line-1").unwrap()),
            Topic::Committed(dev.kid()),
            Topic::Rejected(Kid::parse("operator:o.1").unwrap()),
            Topic::Log,
            Topic::Checkpoints,
            Topic::Cmd(dev.clone()),
            Topic::Presence(dev.clone()),
            Topic::AuditDevice(dev.clone()),
            Topic::AuditEvents(dev.clone()),
            Topic::AuditGraph,
            Topic::AuditAlerts,
            Topic::ReplayRequest,
            Topic::replay_reply("r-1").unwrap(),
        ];
        for t in topics {
            assert_eq!(Topic::parse(&t.to_string()).unwrap(), t, "{t}");
        }
        assert_eq!(
            Topic::In(dev.kid()).to_string(),
            "pairbus/v1/in/device/e80421321203c37f"
        );
    }

    #[test]
    fn wildcards_empty_levels_and_bad_ids_are_refused() {
        assert!(matches!(
            Topic::parse("pairbus/v1/in/device/+"),
            Err(TopicError::Wildcard(_))
        ));
        assert!(matches!(
            Topic::parse("pairbus/v1/audit/#"),
            Err(TopicError::Wildcard(_))
        ));
        assert!(matches!(
            Topic::parse("pairbus/v1//log"),
            Err(TopicError::EmptyLevel(_))
        ));
        assert!(matches!(
            Topic::parse("pairbus/v1/log/"),
            Err(TopicError::EmptyLevel(_))
        ));
        assert!(matches!(
            Topic::parse("/pairbus/v1/log"),
            Err(TopicError::EmptyLevel(_))
        ));
        assert!(matches!(
            Topic::parse("pairbus/v1/in/operator/a b"),
            Err(TopicError::BadId(..))
        ));
        assert!(matches!(
            Topic::parse("pairbus/v1/replay/reply/x$y"),
            Err(TopicError::BadId(..))
        ));
        assert!(matches!(
            Topic::parse("pairbus/v1/cmd/NOTHEX"),
            Err(TopicError::BadId(..))
        ));
        assert!(matches!(
            Topic::parse("pairbus/v1/in/broker/x"),
            Err(TopicError::Unknown(_))
        ));
        assert!(matches!(
            Topic::parse("pairbus/v2/log"),
            Err(TopicError::Unknown(_))
        ));
        assert!(Topic::replay_reply("a/b").is_err());
    }
}
