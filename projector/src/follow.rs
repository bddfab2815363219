//! Following the log over MQTT: the pure decision logic of `pairbus-projector serve`.
//!
//! Records come from two streams: live ones on `pairbus/v1/log` (after each commit) and
//! catch-up ones in replies of the replay service (`pairbus/v1/replay/request` →
//! `replay/reply/<request_id>`, then an end marker). Both are QoS 0 inside the broker, so
//! either may lose messages. The [`Follower`] decides, from what arrives and the clock it is
//! given, which record to apply next and when to ask for a replay, so that every log position
//! is applied exactly once and in order:
//!
//! - a record is applied only if it is the next position (`seq = last + 1`), its `prev` is the
//!   last applied hash and its own hash is right; anything older is a duplicate (dropped, counted);
//! - after (re)connecting, and whenever a live record skips positions or breaks the chain, the
//!   follower *catches up*: it asks for `from_seq = last + 1` and applies the reply's records,
//!   buffering live records meanwhile (up to a bound: beyond it they are dropped, and fetched
//!   again by the catch-up, which goes on until a reply brings nothing new);
//! - a reply that ends without progress after bringing a record at the next position that does
//!   not link to the last applied one (the broker's log does not continue ours: another broker,
//!   or a log rewritten) *halts* the follower: nothing more
//!   is applied, and the shell reports it (an audit projector must not skip history);
//! - a catch-up that hears nothing for [`Follower::REPLY_TIMEOUT_MS`] asks again with a new id;
//! - a reply that brings nothing from `last + 1` on proves that the live records buffered
//!   before the request was sent are not in the broker's log (it publishes a record only after
//!   committing it): they are dropped, so a forged record on the log topic cannot make the
//!   follower ask again and again.
//!
//! No IO, no clock: the shell passes `now` (Unix ms) and carries out the [`Action`]s.

use pairbus_schemas::messages::ReplayRequest;
use pairbus_schemas::{Record, GENESIS};
use std::collections::BTreeMap;

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Apply this record (the next log position, chain checked).
    Apply(Record),
    /// Publish this request on `pairbus/v1/replay/request` (JSON).
    Request(ReplayRequest),
    /// The catch-up is over: every record the broker had is applied.
    CaughtUp {
        /// The last applied log position.
        last_seq: u64,
    },
    /// The broker's log does not continue the applied one: the follower stops applying.
    Halted(String),
}

/// Where the follower is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// No connection: nothing arrives.
    Disconnected,
    /// Waiting for the reply to a replay request.
    CatchingUp {
        /// The request's id (replies to other ids are ignored).
        request_id: String,
        /// Its `from_seq`.
        from_seq: u64,
        /// When the request is given up and asked again (Unix ms).
        deadline: u64,
        /// The reply brought a record at the next position that does not link to the last.
        foreign: bool,
    },
    /// Up to date: live records are applied as they come.
    Live,
    /// Stopped for good (see [`Action::Halted`]).
    Halted(String),
}

/// Counters of what the follower dropped or asked (exposed on `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Records applied.
    pub applied: u64,
    /// Records at or below the last applied position (already applied), dropped.
    pub duplicates: u64,
    /// Records whose hash is wrong or whose `prev` is not the last applied hash.
    pub chain_errors: u64,
    /// Live records dropped because the catch-up buffer was full (fetched again later).
    pub buffer_overflows: u64,
    /// Replay messages for a request that is not the current one, ignored.
    pub stale_replies: u64,
    /// Replay requests made.
    pub requests: u64,
    /// Gaps seen in the live stream (each starts a catch-up).
    pub gaps: u64,
}

/// The follower's state.
#[derive(Debug, Clone)]
pub struct Follower {
    last_seq: u64,
    last_hash: [u8; 32],
    mode: Mode,
    /// Buffered live records, each with the number of the next request at its arrival.
    buffer: BTreeMap<u64, (Record, u64)>,
    buffer_cap: usize,
    session: String,
    next_request: u64,
    /// What it dropped or asked so far.
    pub counters: Counters,
}

impl Follower {
    /// A catch-up that hears nothing for this long (ms) asks again.
    pub const REPLY_TIMEOUT_MS: u64 = 10_000;
    /// Default bound on live records buffered during a catch-up.
    pub const DEFAULT_BUFFER: usize = 100_000;

    /// A follower whose last applied record is `last_seq` with hash `last_hash` (0 and
    /// [`GENESIS`] for an empty store). `session` prefixes its request ids (`[A-Za-z0-9_.-]`,
    /// unique per process so that two projectors never read each other's replies).
    pub fn new(last_seq: u64, last_hash: [u8; 32], session: &str) -> Self {
        Follower {
            last_seq,
            last_hash: if last_seq == 0 { GENESIS } else { last_hash },
            mode: Mode::Disconnected,
            buffer: BTreeMap::new(),
            buffer_cap: Self::DEFAULT_BUFFER,
            session: session.to_owned(),
            next_request: 1,
            counters: Counters::default(),
        }
    }

    /// Sets the bound on buffered live records (at least 1).
    pub fn with_buffer(mut self, cap: usize) -> Self {
        self.buffer_cap = cap.max(1);
        self
    }

    /// The last applied log position.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Where the follower is.
    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// Live records waiting for the catch-up.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The connection is up and subscribed to the log and the replies: catch up.
    pub fn connected(&mut self, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.is_halted() {
            self.request(now, &mut out);
        }
        out
    }

    /// The connection is down.
    pub fn disconnected(&mut self) {
        if !self.is_halted() {
            self.mode = Mode::Disconnected;
        }
    }

    /// A record from `pairbus/v1/log`.
    pub fn live(&mut self, rec: Record, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        match &self.mode {
            Mode::Halted(_) => {}
            Mode::Live => {
                if rec.seq <= self.last_seq {
                    self.counters.duplicates += 1;
                } else if rec.seq == self.last_seq + 1 && self.follows(&rec) {
                    self.apply(rec, &mut out);
                } else {
                    // A skipped position (a lost message) or a broken link: ask the broker.
                    if rec.seq == self.last_seq + 1 {
                        self.counters.chain_errors += 1;
                    } else {
                        self.counters.gaps += 1;
                        self.keep(rec);
                    }
                    self.request(now, &mut out);
                }
            }
            Mode::Disconnected | Mode::CatchingUp { .. } => {
                if rec.seq <= self.last_seq {
                    self.counters.duplicates += 1;
                } else if rec.seq == self.last_seq + 1 && self.follows(&rec) {
                    // The next one, whichever stream brings it first.
                    self.apply(rec, &mut out);
                } else {
                    self.keep(rec);
                }
            }
        }
        out
    }

    /// A record in the reply to `request_id`.
    pub fn replayed(&mut self, request_id: &str, rec: Record, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        let Mode::CatchingUp {
            request_id: current,
            deadline,
            foreign,
            ..
        } = &mut self.mode
        else {
            self.counters.stale_replies += 1;
            return out;
        };
        if current != request_id {
            self.counters.stale_replies += 1;
            return out;
        }
        *deadline = now + Self::REPLY_TIMEOUT_MS;
        if rec.seq <= self.last_seq {
            self.counters.duplicates += 1;
        } else if rec.seq == self.last_seq + 1 {
            if rec.prev == self.last_hash && rec.hash_is_valid() {
                self.apply(rec, &mut out);
            } else {
                *foreign = true;
                self.counters.chain_errors += 1;
            }
        } else {
            // A reply message was lost: keep it; the next request fills the hole.
            self.keep(rec);
        }
        out
    }

    /// The end marker of the reply to `request_id`, which carried `count` records.
    pub fn replay_end(&mut self, request_id: &str, count: u64, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        let (from_seq, foreign) = match &self.mode {
            Mode::CatchingUp {
                request_id: current,
                from_seq,
                foreign,
                ..
            } if current == request_id => (*from_seq, *foreign),
            _ => {
                self.counters.stale_replies += 1;
                return out;
            }
        };
        let progress = self.last_seq >= from_seq;
        if foreign && !progress {
            let why = format!(
                "the broker's log does not continue the applied one: record {from_seq} does not follow hash {} (a different or rewritten log)",
                hex::encode(self.last_hash)
            );
            self.mode = Mode::Halted(why.clone());
            self.buffer.clear();
            out.push(Action::Halted(why));
        } else if count > 0 {
            // More may follow: replies are capped.
            self.request(now, &mut out);
        } else if self.drop_unknown_to_the_broker() {
            // Live records arrived after the request was sent: they may be real, ask again.
            self.request(now, &mut out);
        } else {
            self.mode = Mode::Live;
            out.push(Action::CaughtUp {
                last_seq: self.last_seq,
            });
        }
        out
    }

    /// The clock: a catch-up past its deadline asks again.
    pub fn tick(&mut self, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if let Mode::CatchingUp { deadline, .. } = self.mode {
            if now >= deadline {
                self.request(now, &mut out);
            }
        }
        out
    }

    fn is_halted(&self) -> bool {
        matches!(self.mode, Mode::Halted(_))
    }

    /// The record's own hash is right and it links to the last applied one.
    fn follows(&self, rec: &Record) -> bool {
        rec.prev == self.last_hash && rec.hash_is_valid()
    }

    fn keep(&mut self, rec: Record) {
        if !rec.hash_is_valid() {
            self.counters.chain_errors += 1;
        } else if self.buffer.contains_key(&rec.seq) {
            // The first copy stays; if it is not the real one, the catch-up fetches that.
            self.counters.duplicates += 1;
        } else if self.buffer.len() < self.buffer_cap {
            self.buffer.insert(rec.seq, (rec, self.next_request));
        } else {
            self.counters.buffer_overflows += 1;
        }
    }

    /// After a reply with nothing from `last + 1` on: drops the buffered records that arrived
    /// before the request was sent (the broker's head was already past any real one, so these
    /// are not in its log: forged or foreign, counted as chain errors); true if some arrived
    /// later (and may be real).
    fn drop_unknown_to_the_broker(&mut self) -> bool {
        let current = self.next_request - 1;
        let before = self.buffer.len();
        self.buffer.retain(|_, (_, tag)| *tag > current);
        self.counters.chain_errors += (before - self.buffer.len()) as u64;
        !self.buffer.is_empty()
    }

    /// Applies `rec`, then every buffered record that follows.
    fn apply(&mut self, rec: Record, out: &mut Vec<Action>) {
        self.last_seq = rec.seq;
        self.last_hash = rec.hash;
        self.counters.applied += 1;
        out.push(Action::Apply(rec));
        // Drop what is now old, then take the buffered successors.
        while let Some(entry) = self.buffer.first_entry() {
            let seq = *entry.key();
            if seq <= self.last_seq {
                entry.remove();
                self.counters.duplicates += 1;
            } else if seq == self.last_seq + 1 {
                let (next, _) = entry.remove();
                if !self.follows(&next) {
                    self.counters.chain_errors += 1;
                    break;
                }
                self.last_seq = next.seq;
                self.last_hash = next.hash;
                self.counters.applied += 1;
                out.push(Action::Apply(next));
            } else {
                break;
            }
        }
    }

    fn request(&mut self, now: u64, out: &mut Vec<Action>) {
        let request_id = format!("{}-{}", self.session, self.next_request);
        self.next_request += 1;
        self.counters.requests += 1;
        let from_seq = self.last_seq + 1;
        self.mode = Mode::CatchingUp {
            request_id: request_id.clone(),
            from_seq,
            deadline: now + Self::REPLY_TIMEOUT_MS,
            foreign: false,
        };
        out.push(Action::Request(ReplayRequest {
            request_id,
            from_seq,
            to_seq: None,
            device: None,
            types: None,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chained log of `n` records.
    fn log(n: u64) -> Vec<Record> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let r = Record::chain(prev, seq, 1000 + seq, vec![seq as u8; 3]);
                prev = r.hash;
                r
            })
            .collect()
    }

    fn applied(actions: &[Action]) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Apply(r) => Some(r.seq),
                _ => None,
            })
            .collect()
    }

    fn request(actions: &[Action]) -> ReplayRequest {
        actions
            .iter()
            .find_map(|a| match a {
                Action::Request(r) => Some(r.clone()),
                _ => None,
            })
            .expect("a replay request")
    }

    #[test]
    fn catches_up_then_follows_live_without_duplicates() {
        let l = log(6);
        let mut f = Follower::new(0, GENESIS, "s");
        let req = request(&f.connected(0));
        assert_eq!(req.from_seq, 1);
        assert_eq!(req.request_id, "s-1");
        // Live records 4 and 5 arrive while the reply is streaming: buffered.
        assert!(f.live(l[3].clone(), 1).is_empty());
        assert!(f.live(l[4].clone(), 1).is_empty());
        let mut seen = Vec::new();
        for r in &l[..4] {
            seen.extend(applied(&f.replayed("s-1", r.clone(), 2)));
        }
        // 1, 2, 3 from the reply, 4 from the reply (the buffered 4 is a duplicate), then 5.
        assert_eq!(seen, vec![1, 2, 3, 4, 5]);
        // The reply carried records: ask again from 6.
        let req = request(&f.replay_end("s-1", 4, 3));
        assert_eq!(req.from_seq, 6);
        let end = f.replay_end(&req.request_id, 0, 4);
        assert_eq!(end, vec![Action::CaughtUp { last_seq: 5 }]);
        assert_eq!(applied(&f.live(l[5].clone(), 5)), vec![6]);
        assert_eq!(f.live(l[5].clone(), 5), vec![], "a re-delivery is dropped");
        assert_eq!(f.counters.applied, 6);
        assert_eq!(f.counters.duplicates, 2);
    }

    #[test]
    fn a_live_gap_starts_a_catch_up_from_the_first_missing_record() {
        let l = log(5);
        let mut f = Follower::new(2, l[1].hash, "s");
        let req = request(&f.connected(0));
        assert_eq!(req.from_seq, 3);
        assert!(!f.replay_end(&req.request_id, 0, 0).is_empty());
        assert_eq!(f.mode(), &Mode::Live);
        // Record 3 is lost; 4 arrives: a gap.
        let req = request(&f.live(l[3].clone(), 1));
        assert_eq!(req.from_seq, 3);
        assert_eq!(f.counters.gaps, 1);
        assert_eq!(
            applied(&f.replayed(&req.request_id, l[2].clone(), 2)),
            vec![3, 4]
        );
        assert_eq!(
            applied(&f.replayed(&req.request_id, l[3].clone(), 2)),
            Vec::<u64>::new()
        );
        assert_eq!(
            applied(&f.live(l[4].clone(), 2)),
            vec![5],
            "the next one, even live"
        );
        let again = request(&f.replay_end(&req.request_id, 2, 3));
        assert_eq!(again.from_seq, 6);
        f.replay_end(&again.request_id, 0, 5);
        assert_eq!(f.last_seq(), 5);
        assert_eq!(f.mode(), &Mode::Live);
    }

    #[test]
    fn a_reply_whose_records_were_lost_is_asked_again() {
        let l = log(2);
        let mut f = Follower::new(0, GENESIS, "s");
        let r = request(&f.connected(0));
        // Two records sent, both lost (QoS 0), only the end marker arrives.
        let again = request(&f.replay_end(&r.request_id, 2, 1));
        assert_eq!(again.from_seq, 1);
        assert_eq!(
            applied(&f.replayed(&again.request_id, l[0].clone(), 2)),
            vec![1]
        );
    }

    #[test]
    fn a_forged_future_record_does_not_make_it_ask_forever() {
        let l = log(2);
        let mut f = Follower::new(0, GENESIS, "s");
        let r = request(&f.connected(0));
        f.replay_end(&r.request_id, 0, 0);
        // Live, a record far ahead (well formed, not in the broker's log): a gap.
        let forged = Record::chain([7; 32], 9, 5, b"x".to_vec());
        let r = request(&f.live(forged, 1));
        // The broker has nothing from 1 on: the forged record goes, the catch-up ends.
        let out = f.replay_end(&r.request_id, 0, 2);
        assert_eq!(out, vec![Action::CaughtUp { last_seq: 0 }]);
        assert_eq!(f.buffered(), 0);
        assert_eq!(f.counters.chain_errors, 1);
        // The same for a well-chained record the broker does not have.
        let r = request(&f.live(l[1].clone(), 3));
        let again = f.replay_end(&r.request_id, 0, 4);
        assert_eq!(again, vec![Action::CaughtUp { last_seq: 0 }]);
        // But a record that arrives after the request was sent may be real: ask again.
        let r = request(&f.live(l[1].clone(), 5));
        let late = Record::chain([8; 32], 20, 5, b"y".to_vec());
        f.live(late, 6);
        assert!(matches!(
            f.replay_end(&r.request_id, 0, 7).as_slice(),
            [Action::Request(_)]
        ));
    }

    #[test]
    fn replies_to_other_requests_are_ignored() {
        let l = log(2);
        let mut f = Follower::new(0, GENESIS, "s");
        f.connected(0);
        assert!(f.replayed("other-1", l[0].clone(), 1).is_empty());
        assert!(f.replay_end("other-1", 0, 1).is_empty());
        assert_eq!(f.counters.stale_replies, 2);
        assert_eq!(f.last_seq(), 0);
    }

    #[test]
    fn a_silent_catch_up_asks_again_after_the_timeout() {
        let mut f = Follower::new(0, GENESIS, "s");
        let first = request(&f.connected(0));
        assert!(f.tick(Follower::REPLY_TIMEOUT_MS - 1).is_empty());
        let second = request(&f.tick(Follower::REPLY_TIMEOUT_MS));
        assert_ne!(first.request_id, second.request_id);
        assert_eq!(second.from_seq, 1);
        // The old reply's end marker no longer counts.
        assert!(f.replay_end(&first.request_id, 0, 20_000).is_empty());
        assert!(matches!(f.mode(), Mode::CatchingUp { .. }));
    }

    #[test]
    fn a_reconnect_catches_up_again() {
        let l = log(3);
        let mut f = Follower::new(0, GENESIS, "s");
        let r = request(&f.connected(0));
        f.replay_end(&r.request_id, 0, 0);
        f.live(l[0].clone(), 1);
        f.disconnected();
        assert_eq!(f.mode(), &Mode::Disconnected);
        let r = request(&f.connected(2));
        assert_eq!(r.from_seq, 2);
    }

    #[test]
    fn forged_or_foreign_records_are_never_applied() {
        let l = log(3);
        let mut f = Follower::new(0, GENESIS, "s");
        let r = request(&f.connected(0));
        f.replay_end(&r.request_id, 0, 0);
        // A record with a wrong hash.
        let mut bad = l[0].clone();
        bad.event.push(0);
        let r = request(&f.live(bad, 1));
        assert_eq!(f.counters.chain_errors, 1);
        assert_eq!(f.last_seq(), 0);
        // The replay brings the same foreign record 1 (another log): no progress, halt.
        let other = Record::chain([9; 32], 1, 5, b"x".to_vec());
        assert!(applied(&f.replayed(&r.request_id, other, 2)).is_empty());
        let out = f.replay_end(&r.request_id, 1, 2);
        assert!(matches!(out.as_slice(), [Action::Halted(_)]), "{out:?}");
        assert!(f.live(l[0].clone(), 3).is_empty());
        assert!(f.connected(4).is_empty());
        assert!(matches!(f.mode(), Mode::Halted(_)));
    }

    #[test]
    fn the_buffer_is_bounded_and_what_it_drops_is_fetched_again() {
        let l = log(5);
        let mut f = Follower::new(0, GENESIS, "s").with_buffer(2);
        let r = request(&f.connected(0));
        for rec in &l[2..5] {
            f.live(rec.clone(), 1);
        }
        assert_eq!(f.buffered(), 2);
        assert_eq!(f.counters.buffer_overflows, 1);
        let mut seen = applied(&f.replayed(&r.request_id, l[0].clone(), 2));
        seen.extend(applied(&f.replayed(&r.request_id, l[1].clone(), 2)));
        assert_eq!(seen, vec![1, 2, 3, 4]);
        let r = request(&f.replay_end(&r.request_id, 2, 3));
        assert_eq!(r.from_seq, 5);
        assert_eq!(
            applied(&f.replayed(&r.request_id, l[4].clone(), 4)),
            vec![5]
        );
    }

    #[test]
    fn any_interleaving_applies_each_record_once_in_order() {
        // Live copies of every record arrive at every point of a catch-up in pieces.
        let l = log(12);
        for split in 0..12 {
            let mut f = Follower::new(0, GENESIS, "s").with_buffer(4);
            let mut seen = Vec::new();
            let mut r = request(&f.connected(0));
            for rec in &l[split..] {
                seen.extend(applied(&f.live(rec.clone(), 1)));
            }
            let mut now = 1;
            loop {
                let from = r.from_seq as usize;
                let part: Vec<Record> = l.iter().skip(from - 1).take(5).cloned().collect();
                for rec in &part {
                    seen.extend(applied(&f.replayed(&r.request_id, rec.clone(), now)));
                }
                now += 1;
                match f
                    .replay_end(&r.request_id, part.len() as u64, now)
                    .as_slice()
                {
                    [Action::Request(next)] => r = next.clone(),
                    [Action::CaughtUp { last_seq }] => {
                        assert_eq!(*last_seq, 12);
                        break;
                    }
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(seen, (1..=12).collect::<Vec<_>>(), "split {split}");
        }
    }
}
