//! The demo's principals: each one a real `pairbus-agent` session (rumqttc, durable outbox)
//! running as a tokio task, exactly as `pairbus-agent run` runs a device. The demo hands events
//! to them through their outbox (operators, the factory) or their control channel (a
//! device's own commands), and waits for the broker's confirmations.

use super::DemoError;
use pairbus_agent::device::{LocalCommand, SimulatedSensor};
use pairbus_agent::draft::Draft;
use pairbus_agent::outbox::Outbox;
use pairbus_agent::session::{self, ControlRequest, Session, SessionOptions, SessionReport};
use pairbus_agent::{sys, AgentError};
use pairbus_schemas::identity::Identity;
use pairbus_schemas::Event;
use std::path::Path;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// The one event an action produced (each step's actions make exactly one).
pub fn single(evs: Vec<Event>) -> Result<Event, DemoError> {
    let n = evs.len();
    let mut it = evs.into_iter();
    match (it.next(), it.next()) {
        (Some(e), None) => Ok(e),
        _ => Err(DemoError::Expectation {
            what: "one event queued".into(),
            why: format!("{n} queued"),
        }),
    }
}

/// One principal online: its session task, its outbox, and (a device) its control channel.
pub struct Principal {
    /// Who it is.
    pub identity: Identity,
    /// Its outbox (shared with the running session).
    pub outbox: Outbox,
    control: mpsc::Sender<ControlRequest>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<SessionReport, AgentError>>,
}

impl Principal {
    /// Opens the outbox in `outbox_dir` and starts the session (on the current runtime).
    pub fn start(identity: Identity, outbox_dir: &Path) -> Result<Self, DemoError> {
        let outbox = Outbox::open(outbox_dir)?;
        let opts = SessionOptions {
            resend_after: Duration::from_secs(2),
            ..Default::default()
        };
        let (control, rx) = mpsc::channel(8);
        let (stop, stopped) = oneshot::channel::<()>();
        let s = Session::new(
            identity.clone(),
            outbox.clone(),
            opts,
            Box::new(SimulatedSensor::default()),
        );
        let task = tokio::spawn(s.run(rx, async {
            let _ = stopped.await;
        }));
        Ok(Principal {
            identity,
            outbox,
            control,
            stop: Some(stop),
            task,
        })
    }

    /// Stores drafts in the outbox (ids and seqs assigned, fsync'd); the running session sends
    /// them on its next tick.
    pub fn enqueue(&self, drafts: Vec<Draft>) -> Result<Vec<Event>, DemoError> {
        Ok(session::enqueue(&self.outbox, &self.identity, drafts)?)
    }

    /// Like [`Principal::enqueue`], with a state-tree change in the same transaction.
    pub fn enqueue_with(
        &self,
        drafts: Vec<Draft>,
        state: &[(&str, Option<Vec<u8>>)],
    ) -> Result<Vec<Event>, DemoError> {
        Ok(self
            .outbox
            .enqueue(&self.identity, drafts, state, sys::now_ms(), sys::random)?)
    }

    /// A device's own command, through its running session (as `pairbus-agent action|setup|
    /// command` do through the control socket).
    pub async fn local(&self, cmd: LocalCommand) -> Result<Vec<Event>, DemoError> {
        let (reply, answer) = oneshot::channel();
        self.control
            .send(ControlRequest { cmd, reply })
            .await
            .map_err(|_| DemoError::Stopped(self.identity.kid.to_string()))?;
        answer
            .await
            .map_err(|_| DemoError::Stopped(self.identity.kid.to_string()))?
            .map_err(|why| DemoError::Refused {
                by: self.identity.kid.to_string(),
                why,
            })
    }

    /// Waits until the broker confirmed every one of `events` (they left the outbox); fails if
    /// the broker refused one, or after `timeout`.
    pub async fn delivered(&self, events: &[Event], timeout: Duration) -> Result<(), DemoError> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            let mut waiting = 0;
            for e in events {
                if self.outbox.get(e.seq)?.is_some_and(|p| p.id == e.id) {
                    waiting += 1;
                }
            }
            if waiting == 0 {
                break;
            }
            if tokio::time::Instant::now() >= end {
                return Err(DemoError::Timeout {
                    what: format!(
                        "the broker's confirmation of {waiting} event(s) from {}",
                        self.identity.kid
                    ),
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let refused = self.outbox.refused()?;
        for e in events {
            if let Some(r) = refused.iter().find(|r| r.id == e.id.to_hex()) {
                return Err(DemoError::Refused {
                    by: "the broker".into(),
                    why: format!(
                        "{} from {} ({}): {}",
                        e.event_type(),
                        self.identity.kid,
                        r.reason,
                        r.detail
                    ),
                });
            }
        }
        Ok(())
    }

    /// Stops the session (it publishes its offline card and disconnects) and waits for it.
    pub async fn stop(mut self) -> Result<SessionReport, DemoError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.task.await {
            Ok(r) => Ok(r?),
            Err(e) => Err(DemoError::Stopped(format!("{}: {e}", self.identity.kid))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pairbus_schemas::event::{Body, ModeChanged};
    use pairbus_schemas::{DeviceId, EventId};

    #[test]
    fn single_wants_exactly_one_event() {
        let d = DeviceId::parse("0123456789abcdef").unwrap();
        let ev = Event {
            id: EventId([1; 16]),
            src: d.kid(),
            seq: 1,
            ts: 5,
            device: d,
            body: Body::ModeChanged(ModeChanged),
        };
        assert_eq!(single(vec![ev.clone()]).unwrap(), ev);
        assert!(single(vec![]).is_err());
        assert!(single(vec![ev.clone(), ev]).is_err());
    }
}
