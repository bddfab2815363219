//! The text renderings of the views shared by the CLI (`pairbus-projector history|alerts`) and
//! other front ends (`pairbus-broker demo`), so that every tool prints the same lines.

use crate::model::Alert;
use crate::query::History;
use chrono::{DateTime, Utc};
use std::fmt::Write as _;

/// A Unix ms time as RFC 3339 UTC with milliseconds, or `-`.
pub fn time(ms: Option<u64>) -> String {
    ms.and_then(|m| i64::try_from(m).ok())
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| "-".into())
}

/// `history` as text: one line per entry (log seq, time, type, signer, accepted or the
/// refusal), the event's details on the next line, then a count.
pub fn history(h: &History) -> String {
    let mut o = String::new();
    for e in &h.entries {
        let status = match &e.entry.refusal {
            None => "accepted".to_owned(),
            Some(r) => format!("REFUSED {}: {}", r.code.as_str(), r.detail),
        };
        let gap = e
            .entry
            .gap
            .as_ref()
            .map(|g| format!(" [seq gap: expected {}, got {}]", g.expected, g.got))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "#{:<8} {}  {:<22} {:<26} {}{}",
            e.entry.seq,
            time(Some(e.entry.received_at)),
            e.entry.event_type.map_or("(undecodable)", |t| t.as_str()),
            e.entry.src.as_ref().map_or("-".into(), |s| s.to_string()),
            status,
            gap
        );
        if let Some(d) = &e.details {
            let _ = writeln!(o, "          {d}");
        }
    }
    let _ = writeln!(o, "{} entr(y/ies) for {}", h.entries.len(), h.device);
    o
}

/// `alerts` as text: one line per alert, then a count.
pub fn alerts(v: &[Alert]) -> String {
    let mut o = String::new();
    for a in v {
        let _ = writeln!(
            o,
            "#{:<8} {}  {:<20} {:<16} {}",
            a.seq,
            time(Some(a.at)),
            a.code.as_str(),
            a.device.as_ref().map_or("-".into(), |d| d.to_string()),
            a.detail
        );
    }
    let _ = writeln!(o, "{} alert(s)", v.len());
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{run, Query, Response};
    use crate::testkit::LogBuilder;
    use crate::{Config, Projector};

    #[test]
    fn history_and_alerts_lines() {
        let mut b = LogBuilder::new();
        let d = b.manufacture(1);
        b.activate(1, "alice", true);
        let p = Projector::new(Config::default(), b.root()).rebuild(b.records.iter());
        let Ok(Response::History(h)) = run(
            &p,
            b.records.as_slice(),
            &Query::History {
                id: d.to_string(),
                since: None,
                until: None,
                types: vec![],
            },
        ) else {
            panic!("history")
        };
        let text = history(&h);
        assert!(text.contains("device.manufactured"), "{text}");
        assert!(text.contains("REFUSED forged_qr"), "{text}");
        assert!(
            text.ends_with(&format!("2 entr(y/ies) for {d}\n")),
            "{text}"
        );
        let a = alerts(&p.alerts);
        assert!(
            a.contains("forged_qr") && a.ends_with("1 alert(s)\n"),
            "{a}"
        );
        assert_eq!(time(Some(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(None), "-");
    }
}
