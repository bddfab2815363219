//! The read side: filters, errors, details, as-of by time, and the JSON contract's key fields.

use pairbus_projector::fold::{Config, Projector};
use pairbus_projector::model::Code;
use pairbus_projector::query::{self, NoRecords, Query, QueryError, Response};
use pairbus_projector::testkit::LogBuilder;

fn history(resp: Response) -> query::History {
    match resp {
        Response::History(h) => h,
        other => panic!("not a history: {other:?}"),
    }
}

#[test]
fn history_filters_details_and_errors() {
    let mut log = LogBuilder::new();
    let m = log.configured(1, "alice");
    let s = log.configured(2, "alice");
    log.action(&m, "login");
    let mid = log.now;
    log.advance(10_000);
    log.pair(&m, &s);
    log.action(&m, "qr_scan");
    log.activate(1, "mallory", false); // refused: second activation
    let pr = Projector::new(Config::default(), log.root());
    let p = pr.rebuild(&log.records);
    let recs = log.records.as_slice();
    let q = |since, until, types: &[&str]| Query::History {
        id: m.to_string(),
        since,
        until,
        types: types.iter().map(|t| t.to_string()).collect(),
    };

    let all = history(query::run(&p, recs, &q(None, None, &[])).unwrap());
    assert_eq!(all.entries.len(), p.trails[&m].len());
    assert!(all
        .entries
        .windows(2)
        .all(|w| w[0].entry.seq < w[1].entry.seq));
    assert!(all.entries.iter().all(|e| e.details.is_some()));
    let refused = all.entries.last().unwrap();
    assert_eq!(
        refused.entry.refusal.as_ref().unwrap().code,
        Code::AlreadyActivated
    );
    // The QR (a bearer token) never appears in details, only its hash.
    let d = refused.details.as_ref().unwrap();
    assert!(d.get("qr").is_none() && d["qr_sha256"].is_string());

    let actions = history(query::run(&p, recs, &q(None, None, &["device.action"])).unwrap());
    assert_eq!(actions.entries.len(), 2);
    assert_eq!(
        actions.entries[0].details.as_ref().unwrap()["metadata"]["ok"],
        true
    );
    let early = history(query::run(&p, recs, &q(None, Some(mid), &[])).unwrap());
    let late = history(query::run(&p, recs, &q(Some(mid + 1), None, &[])).unwrap());
    assert_eq!(early.entries.len() + late.entries.len(), all.entries.len());

    let bare = history(query::run(&p, &NoRecords, &q(None, None, &[])).unwrap());
    assert!(bare.entries.iter().all(|e| e.details.is_none()));

    assert!(matches!(
        query::run(&p, recs, &q(None, None, &["device.nope"])),
        Err(QueryError::BadArgument(_))
    ));
    let unknown = Query::Device {
        id: "0123456789abcdef".into(),
    };
    assert!(matches!(
        query::run(&p, recs, &unknown),
        Err(QueryError::UnknownDevice(_))
    ));
    let bad = Query::Device { id: "xyz".into() };
    assert!(matches!(
        query::run(&p, recs, &bad),
        Err(QueryError::BadArgument(_))
    ));
}

#[test]
fn as_of_time_and_json_shapes() {
    let mut log = LogBuilder::new();
    let m = log.configured(1, "alice");
    let s = log.configured(2, "alice");
    let before = log.now - 1;
    log.pair(&m, &s);
    let pr = Projector::new(Config::default(), log.root());
    let then = query::as_of_time(&pr, &log.records, before);
    let now = pr.rebuild(&log.records);
    let g_then =
        serde_json::to_value(query::run(&then, &NoRecords, &Query::Graph).unwrap()).unwrap();
    let g_now = serde_json::to_value(query::run(&now, &NoRecords, &Query::Graph).unwrap()).unwrap();
    assert_eq!(g_then["edges"].as_array().unwrap().len(), 0);
    assert_eq!(g_now["edges"][0]["manager"], m.to_string());
    assert_eq!(g_now["edges"][0]["sensor"], s.to_string());

    let card = serde_json::to_value(
        query::run(&now, &NoRecords, &Query::Device { id: s.to_string() }).unwrap(),
    )
    .unwrap();
    for key in [
        "device_id",
        "state",
        "owner",
        "device_type",
        "model",
        "components",
        "manager",
        "sensors",
        "activated_at",
        "last_seen",
    ] {
        assert!(card.get(key).is_some(), "card lacks {key}");
    }
    assert_eq!(card["state"], "paired");
    assert_eq!(card["manager"], m.to_string());

    let stats = serde_json::to_value(query::run(&now, &NoRecords, &Query::Stats).unwrap()).unwrap();
    assert_eq!(stats["devices"]["paired"], 2);
    // Queries are plain tagged JSON (the HTTP API's requests later).
    let q: Query = serde_json::from_str(r#"{"query":"devices","state":"paired"}"#).unwrap();
    assert!(
        matches!(query::run(&now, &NoRecords, &q).unwrap(), Response::Devices(v) if v.len() == 2)
    );
}
