//! The local control socket of a running device (`<data dir>/control.sock`, Unix only).
//!
//! sled allows one process per database, so while `run` holds a device's outbox, `action`
//! (and the device's other local commands) hand their command to it over this socket: one
//! JSON line in, one JSON line out. The running session assigns id and seq, stores the event
//! durably, and answers with them. The socket file is created mode 0600 in the data directory.

use crate::device::LocalCommand;
use crate::draft::Draft;
use crate::error::AgentError;
use crate::session::ControlRequest;
use pairbus_schemas::ids::{DeviceId, EventId, Kid};
use pairbus_schemas::{Event, MAX_EVENT_SIZE};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tokio::sync::{mpsc, oneshot};

/// The socket's path in a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// A request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireRequest {
    /// `action`, `setup`, `command`, `unpair` or `standalone`; or `ping` (answered by the
    /// socket itself with an empty `ok`: the agent is running).
    pub op: String,
    /// For `action`, `setup`, `command`: the event as a template (hex of its CBOR payload;
    /// its id, seq and ts are replaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// For `unpair`: the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

/// One enqueued event in a reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enqueued {
    /// Event id, hex.
    pub id: String,
    /// The device's seq.
    pub seq: u64,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
}

impl Enqueued {
    /// Describes an enqueued event.
    pub fn of(ev: &Event) -> Self {
        Enqueued {
            id: ev.id.to_hex(),
            seq: ev.seq,
            event_type: ev.event_type().as_str().to_owned(),
        }
    }
}

/// A reply line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireReply {
    /// The events enqueued.
    #[serde(default)]
    pub ok: Vec<Enqueued>,
    /// Why nothing was enqueued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Encodes a local command for the socket.
pub fn to_wire(cmd: &LocalCommand, src: &Kid) -> WireRequest {
    let template = |d: &Draft| {
        Some(hex::encode(
            d.clone()
                .into_event(src.clone(), EventId([0; 16]), 1, 0)
                .encode(),
        ))
    };
    match cmd {
        LocalCommand::Action(d) => WireRequest {
            op: "action".into(),
            template: template(d),
            peer: None,
        },
        LocalCommand::Setup(d) => WireRequest {
            op: "setup".into(),
            template: template(d),
            peer: None,
        },
        LocalCommand::Command(d) => WireRequest {
            op: "command".into(),
            template: template(d),
            peer: None,
        },
        LocalCommand::Unpair(p) => WireRequest {
            op: "unpair".into(),
            template: None,
            peer: Some(p.to_string()),
        },
        LocalCommand::Standalone => WireRequest {
            op: "standalone".into(),
            template: None,
            peer: None,
        },
    }
}

/// Decodes a request from the socket (strictly: the template must be a valid event).
pub fn from_wire(req: &WireRequest) -> Result<LocalCommand, String> {
    let draft = || -> Result<Draft, String> {
        let hex_text = req.template.as_deref().ok_or("template missing")?;
        let bytes = hex::decode(hex_text).map_err(|e| format!("template: {e}"))?;
        let ev = Event::decode(&bytes, MAX_EVENT_SIZE).map_err(|e| format!("template: {e}"))?;
        Ok(Draft {
            device: ev.device,
            body: ev.body,
        })
    };
    let kind = |d: Draft, want: pairbus_schemas::event::EventType| {
        if d.body.event_type() == want {
            Ok(d)
        } else {
            Err(format!(
                "op `{}` carries a `{}` event",
                req.op,
                d.body.event_type()
            ))
        }
    };
    use pairbus_schemas::event::EventType as T;
    Ok(match req.op.as_str() {
        "action" => LocalCommand::Action(kind(draft()?, T::Action)?),
        "setup" => LocalCommand::Setup(kind(draft()?, T::SetupCompleted)?),
        "command" => LocalCommand::Command(kind(draft()?, T::CommandIssued)?),
        "unpair" => LocalCommand::Unpair(
            DeviceId::parse(req.peer.as_deref().ok_or("peer missing")?)
                .map_err(|e| e.to_string())?,
        ),
        "standalone" => LocalCommand::Standalone,
        other => return Err(format!("unknown op `{other}`")),
    })
}

/// Serves the socket until the session's channel closes. Each connection carries one request.
#[cfg(unix)]
pub async fn serve(path: PathBuf, tx: mpsc::Sender<ControlRequest>) -> Result<(), AgentError> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).map_err(|e| AgentError::io(&path, e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    loop {
        let (stream, _) = listener
            .accept()
            .await
            .map_err(|e| AgentError::Control(e.to_string()))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(r.take(2 * MAX_EVENT_SIZE as u64 + 1024));
            let reply = match reader.read_line(&mut line).await {
                Err(e) => WireReply {
                    ok: vec![],
                    error: Some(e.to_string()),
                },
                Ok(_) => match serde_json::from_str::<WireRequest>(&line)
                    .map_err(|e| e.to_string())
                    .and_then(|r| {
                        if r.op == PING {
                            Ok(None)
                        } else {
                            from_wire(&r).map(Some)
                        }
                    }) {
                    Ok(None) => WireReply {
                        ok: vec![],
                        error: None,
                    },
                    Err(e) => WireReply {
                        ok: vec![],
                        error: Some(format!("bad request: {e}")),
                    },
                    Ok(Some(cmd)) => {
                        let (rtx, rrx) = oneshot::channel();
                        if tx.send(ControlRequest { cmd, reply: rtx }).await.is_err() {
                            WireReply {
                                ok: vec![],
                                error: Some("the session is stopping".into()),
                            }
                        } else {
                            match rrx.await {
                                Ok(Ok(evs)) => WireReply {
                                    ok: evs.iter().map(Enqueued::of).collect(),
                                    error: None,
                                },
                                Ok(Err(e)) => WireReply {
                                    ok: vec![],
                                    error: Some(e),
                                },
                                Err(_) => WireReply {
                                    ok: vec![],
                                    error: Some("the session stopped".into()),
                                },
                            }
                        }
                    }
                },
            };
            let mut text = serde_json::to_string(&reply).unwrap_or_default();
            text.push('\n');
            let _ = w.write_all(text.as_bytes()).await;
        });
    }
}

/// The request that only asks whether the agent is there.
const PING: &str = "ping";

/// Sends a command to the running session listening on `path` (blocking). `Ok(None)` when
/// nothing listens there.
#[cfg(unix)]
pub fn request(
    path: &Path,
    cmd: &LocalCommand,
    src: &Kid,
) -> Result<Option<WireReply>, AgentError> {
    exchange(path, &to_wire(cmd, src), std::time::Duration::from_secs(30))
}

/// Asks the agent listening on `path` whether it is running (blocking, 5 s at most): `true`
/// when it answers, `false` when nothing listens there.
#[cfg(unix)]
pub fn ping(path: &Path) -> Result<bool, AgentError> {
    let req = WireRequest {
        op: PING.into(),
        template: None,
        peer: None,
    };
    match exchange(path, &req, std::time::Duration::from_secs(5))? {
        None => Ok(false),
        Some(WireReply { error: None, .. }) => Ok(true),
        Some(WireReply { error: Some(e), .. }) => Err(AgentError::Control(e)),
    }
}

/// One request line out, one reply line back; `Ok(None)` when nothing listens on `path`.
#[cfg(unix)]
fn exchange(
    path: &Path,
    req: &WireRequest,
    timeout: std::time::Duration,
) -> Result<Option<WireReply>, AgentError> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    let io = |e: std::io::Error| AgentError::Control(e.to_string());
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_string(req).map_err(|e| AgentError::Control(e.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer)
        .map(Some)
        .map_err(|e| AgentError::Control(format!("bad reply: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::draft;
    use pairbus_schemas::event::Metadata;

    #[cfg(unix)]
    #[test]
    fn ping_answers_only_when_an_agent_serves_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        assert!(!ping(&path).unwrap(), "nothing listens yet");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let server = rt.spawn(serve(path.clone(), tx));
        // The socket file appears at bind, just before listen: poll, bounded.
        let answered = (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            ping(&path).unwrap()
        });
        assert!(answered, "the served socket answers the ping");
        // A ping never reaches the session.
        assert!(rx.try_recv().is_err());
        server.abort();
    }

    #[test]
    fn wire_round_trip() {
        let me = DeviceId::parse("0123456789abcdef").unwrap();
        let cmds = vec![
            LocalCommand::Action(draft::action(
                me.clone(),
                "login".into(),
                Metadata::new(),
                Some("1.2.3.4".into()),
                None,
            )),
            LocalCommand::Unpair(DeviceId::parse("0123456789abcdee").unwrap()),
            LocalCommand::Standalone,
        ];
        for c in cmds {
            let w = to_wire(&c, &me.kid());
            let j = serde_json::to_string(&w).unwrap();
            assert_eq!(from_wire(&serde_json::from_str(&j).unwrap()).unwrap(), c);
        }
        let bad = WireRequest {
            op: "setup".into(),
            template: to_wire(
                &LocalCommand::Action(draft::action(
                    me.clone(),
                    "x".into(),
                    Metadata::new(),
                    None,
                    None,
                )),
                &me.kid(),
            )
            .template,
            peer: None,
        };
        assert!(from_wire(&bad).is_err());
        assert!(from_wire(&WireRequest {
            op: "nuke".into(),
            template: None,
            peer: None
        })
        .is_err());
    }
}
