//! The projector embedded in `serve`: every committed record is folded in-process, the audit
//! views are published on the operator plane, and events are relayed to the devices they
//! concern.
//!
//! At start the projections are rebuilt from the whole log (the fold runs at about a million
//! records per second, see BENCHMARKS.md); persisting them with a checkpoint is the
//! standalone projector's job and comes to the embedded one later.

use crate::ingest::Publish;
use crate::log::{LogError, LogStore};
use crate::mqtt::auth::PlaneKind;
use crate::relay;
use pairbus_projector::publish::publications;
use pairbus_projector::{Config, Effect, Projections, Projector, Status};
use pairbus_schemas::{Event, Record, RootSecret, Topic};

/// The embedded projector's state.
pub struct Embedded {
    projector: Projector,
    state: Projections,
    fx: Vec<Effect>,
}

impl Embedded {
    /// Folds the whole log from genesis.
    pub fn rebuild(root: RootSecret, log: &dyn LogStore) -> Result<Self, LogError> {
        let projector = Projector::new(Config::default(), root);
        let mut state = Projections::new();
        let mut fx = Vec::new();
        let head = log.head().seq;
        let mut next = 1;
        while next <= head {
            let end = (next + 10_000).min(head + 1);
            for r in log.range(next..end)? {
                fx.clear();
                projector.apply_into(&mut state, &r, &mut fx);
            }
            next = end;
        }
        tracing::info!(
            records = head,
            devices = state.devices.len(),
            "projections rebuilt"
        );
        Ok(Embedded {
            projector,
            state,
            fx: Vec::new(),
        })
    }

    /// The current projections.
    pub fn state(&self) -> &Projections {
        &self.state
    }

    /// Folds one newly committed record, publishes what changed and relays the event.
    pub fn on_commit(&mut self, record: &Record, event: &Event, out: &mut dyn Publish) {
        let targets = relay::targets(event, &self.state);
        self.fx.clear();
        self.projector
            .apply_into(&mut self.state, record, &mut self.fx);
        let accepted = self
            .state
            .trails
            .get(&event.device)
            .and_then(|t| t.last())
            .is_some_and(|e| e.seq == record.seq && e.status == Status::Accepted);
        // Views first, then relays. The two planes are separate routers, so this narrows but
        // does not close the window in which a device has heard a relay while an operator still
        // reads the previous retained view; the new view follows within the same commit.
        for p in publications(&self.state, &self.fx, std::slice::from_ref(record)) {
            out.publish(
                PlaneKind::Operator,
                p.topic.to_string(),
                p.payload,
                p.retain,
            );
        }
        if accepted {
            for d in targets {
                out.publish(
                    PlaneKind::Device,
                    Topic::Cmd(d).to_string(),
                    record.event.clone(),
                    false,
                );
            }
        }
    }
}
