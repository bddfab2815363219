//! The fold's rules, one scenario each, on really signed and chained logs.

use pairbus_projector::fold::{Config, Projector};
use pairbus_projector::graph::check_invariants;
use pairbus_projector::model::{Code, DeviceState, Status};
use pairbus_projector::testkit::{device, LogBuilder};
use pairbus_projector::{Effect, Projections};
use pairbus_schemas::vectors::{root, sample_events};
use pairbus_schemas::{seal, Record, GENESIS};

fn fold(log: &LogBuilder) -> Projections {
    let p = Projector::new(Config::default(), log.root()).rebuild(&log.records);
    check_invariants(&p).unwrap();
    p
}

fn last_status(p: &Projections, d: &pairbus_schemas::DeviceId) -> (Status, Option<Code>) {
    let e = p.trails[d].last().unwrap();
    (e.status, e.refusal.as_ref().map(|r| r.code))
}

fn alert_codes(p: &Projections) -> Vec<Code> {
    p.alerts.iter().map(|a| a.code).collect()
}

#[test]
fn lifecycle_from_factory_to_paired() {
    let mut log = LogBuilder::new();
    let m = log.manufacture(1);
    let p = fold(&log);
    assert_eq!(p.devices[&m].state, DeviceState::Unconfigured);
    assert_eq!(p.devices[&m].components[0].kind, "battery");

    log.activate(1, "alice", false);
    let p = fold(&log);
    assert_eq!(p.devices[&m].state, DeviceState::ActivationPending);
    assert_eq!(p.devices[&m].owner.as_deref(), Some("alice"));
    assert_eq!(p.devices[&m].activated_at, None);

    log.setup(&m, "alice");
    let p = fold(&log);
    assert_eq!(p.devices[&m].state, DeviceState::Configured);
    assert!(p.devices[&m].activated_at.is_some());
    assert_eq!(p.devices[&m].last_seen, Some(log.now - 1));

    let s = log.configured(2, "alice");
    log.pair(&m, &s);
    let p = fold(&log);
    assert_eq!(p.devices[&m].state, DeviceState::Paired);
    assert_eq!(p.devices[&s].state, DeviceState::Paired);
    assert_eq!(p.devices[&s].manager.as_ref(), Some(&m));
    assert!(p.devices[&m].sensors.contains(&s));
    assert!(p.alerts.is_empty(), "{:?}", p.alerts);

    log.unpair(&s, &m);
    let p = fold(&log);
    assert_eq!(p.devices[&m].state, DeviceState::Configured);
    assert_eq!(p.devices[&s].manager, None);
    log.standalone(&s);
    let p = fold(&log);
    assert_eq!(p.devices[&s].state, DeviceState::Standalone);
    assert!(p.alerts.is_empty(), "{:?}", p.alerts);
}

#[test]
fn second_activation_is_refused_and_alerted() {
    let mut log = LogBuilder::new();
    let d = log.manufacture(1);
    log.activate(1, "alice", false);
    log.activate(1, "mallory", false);
    let p = fold(&log);
    assert_eq!(
        last_status(&p, &d),
        (Status::Refused, Some(Code::AlreadyActivated))
    );
    assert_eq!(p.devices[&d].owner.as_deref(), Some("alice"));
    assert_eq!(alert_codes(&p), [Code::AlreadyActivated]);
}

#[test]
fn forged_expired_and_mismatched_qr_codes_are_refused() {
    let mut log = LogBuilder::new();
    let d = log.manufacture(1);
    log.activate(1, "alice", true);
    let p = fold(&log);
    assert_eq!(last_status(&p, &d), (Status::Refused, Some(Code::ForgedQr)));
    assert_eq!(p.devices[&d].state, DeviceState::Unconfigured);

    // The QR of device 2 used on device 1.
    let qr2 = log.qr(2, false);
    let op = log.operator.clone();
    log.push(
        &op,
        &d,
        pairbus_schemas::Body::Activated(pairbus_schemas::event::Activated {
            qr: qr2,
            owner: "x".into(),
            activation_token_hash: [0; 32],
            ip: None,
            user_agent: None,
            fingerprint: None,
        }),
    );
    let p = fold(&log);
    assert_eq!(
        last_status(&p, &d),
        (Status::Refused, Some(Code::QrMismatch))
    );

    // Past the QR's expiry (10 years).
    log.advance(11 * 365 * 24 * 3600 * 1000);
    log.activate(1, "alice", false);
    let p = fold(&log);
    assert_eq!(
        last_status(&p, &d),
        (Status::Refused, Some(Code::ExpiredQr))
    );

    // Without the factory key the QR cannot be checked.
    let p = Projector::new(Config::default(), pairbus_projector::NoKeys).rebuild(&log.records);
    assert_eq!(
        p.trails[&d].get(1).unwrap().refusal.unwrap().code,
        Code::UnknownFactory
    );
}

#[test]
fn activation_of_an_unknown_device_is_refused() {
    let mut log = LogBuilder::new();
    log.activate(9, "alice", false);
    let p = fold(&log);
    assert_eq!(
        last_status(&p, &device(9)),
        (Status::Refused, Some(Code::UnknownDevice))
    );
    assert!(!p.devices.contains_key(&device(9)));
}

#[test]
fn claim_window_lapses_back_to_unconfigured() {
    let mut log = LogBuilder::new();
    let d = log.manufacture(1);
    log.activate(1, "mallory", false);
    log.advance(24 * 3600 * 1000 + 10);
    log.setup(&d, "mallory");
    let p = fold(&log);
    assert_eq!(p.devices[&d].state, DeviceState::Unconfigured);
    assert_eq!(p.devices[&d].owner, None);
    assert!(alert_codes(&p).contains(&Code::ActivationLapsed));
    assert_eq!(
        last_status(&p, &d),
        (Status::Refused, Some(Code::NotActivated))
    );
    // A new activation is possible after the lapse, and completes with a proof in time.
    log.activate(1, "alice", false);
    log.action(&d, "login");
    let p = fold(&log);
    assert_eq!(p.devices[&d].state, DeviceState::Configured);
    assert_eq!(p.devices[&d].owner.as_deref(), Some("alice"));
    // A shorter configured window makes the same log lapse earlier.
    let short = Config {
        claim_window_ms: 0,
        ..Config::default()
    };
    let p2 = Projector::new(short, log.root()).rebuild(&log.records);
    assert_ne!(p2.devices[&d].state, DeviceState::Configured);
}

#[test]
fn pairing_handshake_rules() {
    let mut log = LogBuilder::new();
    let m = log.configured(1, "a");
    let s = log.configured(2, "a");
    let t = log.configured(3, "a");

    // Offer without a request.
    let n1 = log.nonce();
    log.offer(&m, &s, n1, 600_000);
    assert_eq!(
        last_status(&fold(&log), &m),
        (Status::Refused, Some(Code::NoRequest))
    );

    // Request, offer, accept by the wrong sensor, then expiry.
    log.request(&m, &s);
    let n2 = log.nonce();
    log.offer(&m, &s, n2, 600_000);
    log.accept(&t, &m, n2);
    assert_eq!(
        last_status(&fold(&log), &t),
        (Status::Refused, Some(Code::WrongParty))
    );
    log.advance(600_001);
    log.accept(&s, &m, n2);
    assert_eq!(
        last_status(&fold(&log), &s),
        (Status::Refused, Some(Code::OfferExpired))
    );
    assert_eq!(fold(&log).devices[&s].manager, None);

    // The whole handshake, then a replay of the acceptance.
    let n3 = log.pair(&m, &s);
    let p = fold(&log);
    assert_eq!(p.devices[&s].manager.as_ref(), Some(&m));
    log.accept(&s, &m, n3);
    assert_eq!(
        last_status(&fold(&log), &s),
        (Status::Refused, Some(Code::NonceReused))
    );

    // A second manager for the same sensor.
    log.request(&t, &s);
    assert_eq!(
        last_status(&fold(&log), &t),
        (Status::Refused, Some(Code::SensorHasManager))
    );

    // A cycle: s manages t is fine, t managing m is fine, m under t would close the loop.
    log.pair(&s, &t);
    let p = fold(&log);
    assert_eq!(p.devices[&t].manager.as_ref(), Some(&s));
    log.request(&t, &m);
    assert_eq!(
        last_status(&fold(&log), &t),
        (Status::Refused, Some(Code::Cycle))
    );

    // Pairing with an unactivated device.
    let u = log.manufacture(4);
    log.request(&m, &u);
    assert_eq!(
        last_status(&fold(&log), &m),
        (Status::Refused, Some(Code::NotPairable))
    );

    // Declined and cancelled offers close them.
    let x = log.configured(5, "a");
    log.request(&m, &x);
    let n4 = log.nonce();
    log.offer(&m, &x, n4, 600_000);
    log.push(
        &x.kid(),
        &x,
        pairbus_schemas::Body::PairingDeclined(pairbus_schemas::event::PairingEnded {
            nonce: n4,
            reason: "no".into(),
        }),
    );
    log.accept(&x, &m, n4);
    let p = fold(&log);
    assert_eq!(
        last_status(&p, &x),
        (Status::Refused, Some(Code::NonceReused))
    );
    assert_eq!(p.devices[&x].manager, None);
    check_invariants(&p).unwrap();
}

#[test]
fn commands_need_a_manager_and_a_matching_unexpired_completion() {
    let mut log = LogBuilder::new();
    let m = log.configured(1, "a");
    let s = log.configured(2, "a");
    let t = log.configured(3, "a");
    let refused = log.command(&m, &s, 60_000);
    assert_eq!(
        last_status(&fold(&log), &m),
        (Status::Refused, Some(Code::NotManager))
    );
    log.complete(&s, refused.id);
    assert_eq!(
        last_status(&fold(&log), &s),
        (Status::Refused, Some(Code::UnknownCommand))
    );

    log.pair(&m, &s);
    let c = log.command(&m, &s, 60_000);
    log.complete(&t, c.id);
    assert_eq!(
        last_status(&fold(&log), &t),
        (Status::Refused, Some(Code::WrongTarget))
    );
    log.complete(&s, c.id);
    let p = fold(&log);
    assert_eq!(last_status(&p, &s), (Status::Accepted, None));
    // The issuer sees the completion on its trail too.
    assert_eq!(
        p.trails[&m].last().unwrap().event_type.unwrap().as_str(),
        "command.completed"
    );
    log.complete(&s, c.id);
    assert_eq!(
        last_status(&fold(&log), &s),
        (Status::Refused, Some(Code::AlreadyCompleted))
    );

    let late = log.command(&m, &s, 1_000);
    log.advance(2_000);
    log.complete(&s, late.id);
    assert_eq!(
        last_status(&fold(&log), &s),
        (Status::Refused, Some(Code::CommandExpired))
    );
}

#[test]
fn revocation_unpairs_and_refuses_later_events() {
    let mut log = LogBuilder::new();
    let m = log.configured(1, "a");
    let s = log.configured(2, "a");
    log.pair(&m, &s);
    log.revoke(&s);
    let p = fold(&log);
    assert_eq!(p.devices[&s].state, DeviceState::Revoked);
    assert_eq!(p.devices[&m].state, DeviceState::Configured);
    assert!(p.devices[&m].sensors.is_empty());
    log.action(&s, "login");
    log.revoke(&s);
    let p = fold(&log);
    assert_eq!(
        p.trails[&s]
            .get(p.trails[&s].len() - 2)
            .unwrap()
            .refusal
            .unwrap()
            .code,
        Code::Revoked
    );
    assert_eq!(
        last_status(&p, &s),
        (Status::Refused, Some(Code::AlreadyRevoked))
    );
    assert!(alert_codes(&p).contains(&Code::Revoked));
}

#[test]
fn actions_count_per_day_and_seq_gaps_are_recorded() {
    let mut log = LogBuilder::new();
    let d = log.configured(1, "a");
    log.action(&d, "login");
    log.action(&d, "login");
    log.push_with(
        &d.kid(),
        &d,
        pairbus_schemas::Body::ModeChanged(pairbus_schemas::event::ModeChanged),
        3,
    );
    let p = fold(&log);
    let day = log.now / 86_400_000;
    assert_eq!(p.stats["login"][&day], 2);
    let last = p.trails[&d].last().unwrap();
    assert_eq!(last.status, Status::Accepted);
    let gap = last.gap.as_deref().copied().unwrap();
    assert_eq!(gap.got - gap.expected, 3);
    assert_eq!(alert_codes(&p), [Code::SeqGap]);
}

#[test]
fn undecodable_records_are_refused_entries_not_panics() {
    let mut log = LogBuilder::new();
    log.manufacture(1);
    log.push_raw(b"not cbor".to_vec());
    log.push_raw(vec![]);
    let p = fold(&log);
    assert_eq!(p.unattributed.len(), 2);
    assert!(p.unattributed.iter().all(|e| e.status == Status::Refused));
    assert_eq!(alert_codes(&p), [Code::Malformed, Code::Malformed]);
}

#[test]
fn stale_records_are_ignored_and_gaps_in_the_log_alerted() {
    let mut log = LogBuilder::new();
    log.manufacture(1);
    log.manufacture(2);
    log.manufacture(3);
    let pr = Projector::new(Config::default(), log.root());
    let mut p = Projections::new();
    assert!(!pr.apply(&mut p, &log.records[0]).is_empty());
    assert!(pr.apply(&mut p, &log.records[0]).is_empty());
    pr.apply(&mut p, &log.records[2]);
    assert_eq!(alert_codes(&p), [Code::LogGap, Code::SeqGap]);
    assert_eq!(p.last_seq, 3);
}

#[test]
fn effects_describe_what_to_publish() {
    let mut log = LogBuilder::new();
    let m = log.configured(1, "a");
    let s = log.configured(2, "a");
    let n = log.nonce();
    log.request(&m, &s);
    log.offer(&m, &s, n, 600_000);
    log.accept(&s, &m, n);
    let pr = Projector::new(Config::default(), log.root());
    let (last, head) = log.records.split_last().unwrap();
    let mut p = pr.rebuild(head);
    let fx = pr.apply(&mut p, last);
    assert!(fx.contains(&Effect::GraphChanged));
    assert!(fx.contains(&Effect::DeviceChanged(m.clone())));
    assert!(fx.contains(&Effect::DeviceChanged(s.clone())));
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Trail { device: Some(d), .. } if *d == m)));
}

#[test]
fn the_schema_sample_events_fold_without_panics() {
    let mut prev = GENESIS;
    let records: Vec<Record> = sample_events()
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let r = Record::chain(prev, i as u64 + 1, e.ts, seal(e, &root().derive(&e.src)));
            prev = r.hash;
            r
        })
        .collect();
    let p = Projector::new(Config::default(), root()).rebuild(&records);
    check_invariants(&p).unwrap();
    assert_eq!(p.last_seq, records.len() as u64);
}

#[test]
fn extreme_seqs_do_not_overflow() {
    let mut log = LogBuilder::new();
    let d = log.configured(1, "a");
    log.push_with(
        &d.kid(),
        &d,
        pairbus_schemas::Body::ModeChanged(pairbus_schemas::event::ModeChanged),
        u64::MAX,
    );
    log.action(&d, "login"); // the builder saturates: seq u64::MAX again
    let p = fold(&log);
    assert_eq!(alert_codes(&p), [Code::SeqGap, Code::SeqOutOfOrder]);
}
