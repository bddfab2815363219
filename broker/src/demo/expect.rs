//! The demo's expectations, as pure checks over the embedded projector's state (and the
//! broker's answers): each returns `Ok(())` when it holds, or why not. The driver waits for a
//! check to hold (the bus works asynchronously) or fails the demo naming it.

use pairbus_projector::graph::Graph;
use pairbus_projector::model::{Code, DeviceState, Status, TrailEntry};
use pairbus_projector::Projections;
use pairbus_schemas::event::Outcome;
use pairbus_schemas::messages::{CommitStatus, Committed};
use pairbus_schemas::{DeviceId, EventId};

/// The outcome of one check: `Err` says what was seen instead.
pub type Check = Result<(), String>;

/// The trail entry of event `id` in `device`'s trail.
pub fn entry(p: &Projections, device: &DeviceId, id: &EventId) -> Option<TrailEntry> {
    p.trails
        .get(device)?
        .iter()
        .find(|e| e.event_id.as_ref() == Some(id))
}

/// `device` is in `state`.
pub fn state_is(p: &Projections, device: &DeviceId, state: DeviceState) -> Check {
    match p.devices.get(device) {
        Some(c) if c.state == state => Ok(()),
        Some(c) => Err(format!(
            "{device} is {}, not {}",
            c.state.as_str(),
            state.as_str()
        )),
        None => Err(format!("{device} is unknown to the projector")),
    }
}

/// Event `id` is in `device`'s trail, accepted.
pub fn accepted(p: &Projections, device: &DeviceId, id: &EventId) -> Check {
    match entry(p, device, id) {
        Some(e) if e.status == Status::Accepted => Ok(()),
        Some(e) => Err(format!(
            "event {id} was refused: {}",
            e.refusal
                .as_ref()
                .map_or("?".into(), |r| format!("{}: {}", r.code.as_str(), r.detail))
        )),
        None => Err(format!("event {id} is not in {device}'s trail yet")),
    }
}

/// Event `id` is in `device`'s trail, refused with `code`, and an alert with that code was
/// raised for its record.
pub fn refused_with_alert(p: &Projections, device: &DeviceId, id: &EventId, code: Code) -> Check {
    let e =
        entry(p, device, id).ok_or_else(|| format!("event {id} is not in {device}'s trail yet"))?;
    match &e.refusal {
        Some(r) if r.code == code => {}
        Some(r) => {
            return Err(format!(
                "event {id} was refused as {}, not {}",
                r.code.as_str(),
                code.as_str()
            ))
        }
        None => return Err(format!("event {id} was accepted")),
    }
    if p.alerts.iter().any(|a| a.seq == e.seq && a.code == code) {
        Ok(())
    } else {
        Err(format!("no {} alert for record {}", code.as_str(), e.seq))
    }
}

/// `manager` manages exactly `sensors` (in the cards of all of them).
pub fn manages(p: &Projections, manager: &DeviceId, sensors: &[DeviceId]) -> Check {
    let m = p
        .devices
        .get(manager)
        .ok_or_else(|| format!("{manager} is unknown to the projector"))?;
    let want: std::collections::BTreeSet<&DeviceId> = sensors.iter().collect();
    let have: std::collections::BTreeSet<&DeviceId> = m.sensors.iter().collect();
    if want != have {
        return Err(format!(
            "{manager} manages [{}], not [{}]",
            join(have.iter().map(|d| d.as_str())),
            join(want.iter().map(|d| d.as_str()))
        ));
    }
    for s in sensors {
        let card = p
            .devices
            .get(s)
            .ok_or_else(|| format!("{s} is unknown to the projector"))?;
        if card.manager.as_ref() != Some(manager) {
            return Err(format!(
                "{s}'s manager is {}, not {manager}",
                card.manager.as_ref().map_or("none", |d| d.as_str())
            ));
        }
    }
    Ok(())
}

/// Command `id` was completed with outcome `ok`.
pub fn command_completed(p: &Projections, id: &EventId) -> Check {
    match p.commands.get(id) {
        Some(c) => match c.completed {
            Some((_, Outcome::Ok)) => Ok(()),
            Some((seq, o)) => Err(format!(
                "command {id} completed at record {seq} with outcome {o:?}"
            )),
            None => Err(format!(
                "command {id} ({}) not completed yet",
                c.command.as_str()
            )),
        },
        None => Err(format!("command {id} not issued (or refused)")),
    }
}

/// The broker's answer to an event re-published byte for byte: `already_committed` at the
/// original log position, and the log did not grow.
pub fn replay_refused(
    answer: &Committed,
    original: &EventId,
    original_seq: u64,
    head_before: u64,
    head_after: u64,
) -> Check {
    if answer.id != *original {
        return Err(format!("answer for {}, not {original}", answer.id));
    }
    if answer.status != CommitStatus::AlreadyCommitted {
        return Err("the broker answered `committed`: the replay was appended".into());
    }
    if answer.seq != original_seq {
        return Err(format!(
            "answered with log seq {}, the original is at {original_seq}",
            answer.seq
        ));
    }
    if head_after != head_before {
        return Err(format!(
            "the log grew from {head_before} to {head_after} records"
        ));
    }
    Ok(())
}

/// The part of the pairing graph that concerns `devices` (edges with an end among them, and
/// the nodes of those edges).
pub fn subgraph(g: &Graph, devices: &[DeviceId]) -> Graph {
    let ours = |d: &str| devices.iter().any(|x| x.as_str() == d);
    let edges: Vec<_> = g
        .edges
        .iter()
        .filter(|e| ours(&e.manager) || ours(&e.sensor))
        .cloned()
        .collect();
    let nodes = g
        .nodes
        .iter()
        .filter(|n| {
            edges
                .iter()
                .any(|e| e.manager == n.device || e.sensor == n.device)
        })
        .cloned()
        .collect();
    Graph { nodes, edges }
}

fn join<'a>(it: impl Iterator<Item = &'a str>) -> String {
    it.collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use pairbus_projector::graph::graph;
    use pairbus_projector::testkit::LogBuilder;
    use pairbus_projector::{Config, Projector};

    fn fold(b: &LogBuilder) -> Projections {
        Projector::new(Config::default(), b.root()).rebuild(b.records.iter())
    }

    #[test]
    fn states_pairs_and_refusals() {
        let mut b = LogBuilder::new();
        let (m, s1, s2) = (
            b.configured(1, "alice"),
            b.configured(2, "alice"),
            b.configured(3, "alice"),
        );
        let p = fold(&b);
        assert!(state_is(&p, &m, DeviceState::Configured).is_ok());
        assert!(state_is(&p, &m, DeviceState::Paired)
            .unwrap_err()
            .contains("is configured"));
        assert!(manages(&p, &m, std::slice::from_ref(&s1)).is_err());

        let nonce = b.pair(&m, &s1);
        b.pair(&m, &s2);
        let replayed = b.accept(&s1, &m, nonce);
        let p = fold(&b);
        assert!(manages(&p, &m, &[s1.clone(), s2.clone()]).is_ok());
        assert!(
            manages(&p, &m, std::slice::from_ref(&s1)).is_err(),
            "exactly"
        );
        assert!(manages(&p, &s1, &[]).is_ok());
        assert!(state_is(&p, &s2, DeviceState::Paired).is_ok());
        assert!(refused_with_alert(&p, &s1, &replayed.id, Code::NonceReused).is_ok());
        assert!(refused_with_alert(&p, &s1, &replayed.id, Code::ForgedQr)
            .unwrap_err()
            .contains("nonce_reused"));
        assert!(accepted(&p, &s1, &replayed.id).is_err());
        let other = b.action(&s2, "login");
        assert!(accepted(&p, &s2, &other.id).unwrap_err().contains("not in"));
        let p = fold(&b);
        assert!(accepted(&p, &s2, &other.id).is_ok());
        assert!(refused_with_alert(&p, &s2, &other.id, Code::NonceReused)
            .unwrap_err()
            .contains("accepted"));

        // Only the edges of the given devices.
        let x = b.configured(4, "bob");
        let y = b.configured(5, "bob");
        b.pair(&x, &y);
        let g = graph(&fold(&b));
        assert_eq!(g.edges.len(), 3);
        let sub = subgraph(&g, &[m.clone(), s1, s2]);
        assert_eq!(sub.edges.len(), 2);
        assert!(sub.edges.iter().all(|e| e.manager == m.as_str()));
        assert_eq!(sub.nodes.len(), 3);
    }

    #[test]
    fn forged_activation_is_refused_with_an_alert() {
        let mut b = LogBuilder::new();
        let d = b.manufacture(1);
        let forged = b.activate(1, "mallory", true);
        let p = fold(&b);
        assert!(refused_with_alert(&p, &d, &forged.id, Code::ForgedQr).is_ok());
        assert!(state_is(&p, &d, DeviceState::Unconfigured).is_ok());
    }

    #[test]
    fn commands() {
        let mut b = LogBuilder::new();
        let (m, s) = (b.configured(1, "a"), b.configured(2, "a"));
        b.pair(&m, &s);
        let c = b.command(&m, &s, 60_000);
        assert!(command_completed(&fold(&b), &c.id)
            .unwrap_err()
            .contains("not completed"));
        b.complete(&s, c.id);
        assert!(command_completed(&fold(&b), &c.id).is_ok());
        assert!(command_completed(&fold(&b), &EventId([9; 16]))
            .unwrap_err()
            .contains("not issued"));
    }

    #[test]
    fn replays() {
        let id = EventId([1; 16]);
        let answer = |status, seq| Committed { id, seq, status };
        assert!(replay_refused(&answer(CommitStatus::AlreadyCommitted, 7), &id, 7, 20, 20).is_ok());
        assert!(
            replay_refused(&answer(CommitStatus::Committed, 21), &id, 7, 20, 21)
                .unwrap_err()
                .contains("appended")
        );
        assert!(
            replay_refused(&answer(CommitStatus::AlreadyCommitted, 7), &id, 7, 20, 21)
                .unwrap_err()
                .contains("grew")
        );
        assert!(
            replay_refused(&answer(CommitStatus::AlreadyCommitted, 8), &id, 7, 20, 20).is_err()
        );
        assert!(replay_refused(
            &answer(CommitStatus::AlreadyCommitted, 7),
            &EventId([2; 16]),
            7,
            20,
            20
        )
        .is_err());
    }
}
