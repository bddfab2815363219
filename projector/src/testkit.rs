//! Builders of signed, hash-chained logs for tests, property tests and benchmarks.
//!
//! Every event is really sealed with its principal's key derived from the test root secret
//! ([`pairbus_schemas::vectors::root`]) and chained with [`Record::chain`], so a log built here
//! is exactly what a broker would have written. Hostile events (wrong parties, replays, forged
//! QR codes, seq gaps, undecodable bytes) are made with the same tools.

use fxhash::FxHashMap;
use pairbus_schemas::event::*;
use pairbus_schemas::keys::device_id_from_serial_hash;
use pairbus_schemas::qr::{encode_qr, QrClaims, DEFAULT_QR_TTL_SECS};
use pairbus_schemas::vectors::{root, T0_MS};
use pairbus_schemas::{
    seal, Body, DeviceId, Event, EventId, Key, Kid, Record, RootSecret, GENESIS,
};

/// Builds a log, one signed record at a time.
pub struct LogBuilder {
    root: RootSecret,
    keys: FxHashMap<Kid, Key>,
    seqs: FxHashMap<Kid, u64>,
    /// The records so far.
    pub records: Vec<Record>,
    /// The broker clock: `received_at` of the next record, Unix ms (advances 1 ms per record).
    pub now: u64,
    counter: u64,
    /// The factory station used by [`LogBuilder::manufacture`].
    pub factory: Kid,
    /// The operator used by operator events.
    pub operator: Kid,
}

impl Default for LogBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// The device id of test serial number `n` (`SN-<n>`).
pub fn device(n: u32) -> DeviceId {
    device_id_from_serial_hash(&root().serial_hash(&format!("SN-{n}")))
}

impl LogBuilder {
    /// An empty log at [`T0_MS`], signed under the test vectors' root secret.
    pub fn new() -> Self {
        LogBuilder {
            root: root(),
            keys: FxHashMap::default(),
            seqs: FxHashMap::default(),
            records: Vec::new(),
            now: T0_MS,
            counter: 0,
            factory: Kid::parse("factory:line-1").expect("valid kid"),
            operator: Kid::parse("operator:admin").expect("valid kid"),
        }
    }

    /// The root secret (a [`crate::KeyResolver`] for the fold).
    pub fn root(&self) -> RootSecret {
        self.root.clone()
    }

    fn key(&mut self, kid: &Kid) -> Key {
        if let Some(k) = self.keys.get(kid) {
            return k.clone();
        }
        let k = self.root.derive(kid);
        self.keys.insert(kid.clone(), k.clone());
        k
    }

    /// Moves the broker clock forward.
    pub fn advance(&mut self, ms: u64) {
        self.now += ms;
    }

    /// Appends raw event bytes as a record (for undecodable or foreign input).
    pub fn push_raw(&mut self, event: Vec<u8>) {
        let prev = self.records.last().map_or(GENESIS, |r| r.hash);
        let seq = self.records.len() as u64 + 1;
        self.records.push(Record::chain(prev, seq, self.now, event));
        self.now += 1;
    }

    /// Signs and appends an event from `src` about `device`, with the next seq of `src`
    /// (plus `skip`, to make a gap). Returns the event.
    pub fn push_with(&mut self, src: &Kid, device: &DeviceId, body: Body, skip: u64) -> Event {
        let seq = {
            let s = self.seqs.entry(src.clone()).or_insert(0);
            *s = s.saturating_add(1).saturating_add(skip);
            *s
        };
        self.counter += 1;
        let c = self.counter;
        let mut rnd = [0u8; 10];
        rnd[..8].copy_from_slice(&c.to_be_bytes());
        let ev = Event {
            id: EventId::new_v7(self.now, rnd),
            src: src.clone(),
            seq,
            ts: self.now,
            device: device.clone(),
            body,
        };
        let key = self.key(src);
        self.push_raw(seal(&ev, &key));
        ev
    }

    /// Signs and appends an event with the next seq of `src`.
    pub fn push(&mut self, src: &Kid, device: &DeviceId, body: Body) -> Event {
        self.push_with(src, device, body, 0)
    }

    /// `device.manufactured` for serial `SN-<n>`; returns the device id.
    pub fn manufacture(&mut self, n: u32) -> DeviceId {
        let serial_hash = self.root.serial_hash(&format!("SN-{n}"));
        let d = device_id_from_serial_hash(&serial_hash);
        let f = self.factory.clone();
        self.push(
            &f,
            &d,
            Body::Manufactured(Manufactured {
                serial_hash,
                device_type: if n & 1 == 0 { "phone" } else { "sensor" }.into(),
                model: format!("M{}", n % 3),
                manufacturer: "Acme".into(),
                name: format!("Device {n}"),
                components: vec![Component {
                    kind: "battery".into(),
                    spec: "4000mAh".into(),
                }],
                qr_expires_at: (self.now / 1000 + DEFAULT_QR_TTL_SECS) * 1000,
            }),
        );
        d
    }

    /// The QR text of device `n`, signed by the factory (or by `key` to forge one).
    pub fn qr(&mut self, n: u32, forged: bool) -> String {
        let d = device(n);
        let claims = QrClaims {
            device_id: d,
            device_type: if n & 1 == 0 { "phone" } else { "sensor" }.into(),
            model: format!("M{}", n % 3),
            iat: T0_MS / 1000,
            exp: T0_MS / 1000 + DEFAULT_QR_TTL_SECS,
        };
        let f = self.factory.clone();
        let key = if forged {
            RootSecret::from_bytes([0xee; 32]).derive(&f)
        } else {
            self.key(&f)
        };
        encode_qr(&claims, &f, &key)
    }

    /// `device.activated` of device `n` by the operator, for `owner`.
    pub fn activate(&mut self, n: u32, owner: &str, forged: bool) -> Event {
        let qr = self.qr(n, forged);
        let op = self.operator.clone();
        self.push(
            &op,
            &device(n),
            Body::Activated(Activated {
                qr,
                owner: owner.into(),
                activation_token_hash: [7; 32],
                ip: Some("192.0.2.1".into()),
                user_agent: Some("pairbus-agent/0.1".into()),
                fingerprint: None,
            }),
        )
    }

    /// A `device.action` by the device itself (also its proof of possession).
    pub fn action(&mut self, d: &DeviceId, action: &str) -> Event {
        let mut metadata = Metadata::new();
        metadata.insert("n".into(), MetaValue::Int(self.counter as i64));
        metadata.insert("ok".into(), MetaValue::Bool(true));
        self.push(
            &d.kid(),
            d,
            Body::Action(Action {
                action: action.into(),
                metadata,
                ip: Some("192.0.2.7".into()),
                user_agent: None,
            }),
        )
    }

    /// `device.setup_completed` signed by the device.
    pub fn setup(&mut self, d: &DeviceId, owner: &str) -> Event {
        self.push(
            &d.kid(),
            d,
            Body::SetupCompleted(SetupCompleted {
                owner: owner.into(),
                role: Role::Owner,
            }),
        )
    }

    /// Manufactures, activates and proves device `n` (configured).
    pub fn configured(&mut self, n: u32, owner: &str) -> DeviceId {
        let d = self.manufacture(n);
        self.activate(n, owner, false);
        self.setup(&d, owner);
        d
    }

    /// `pairing.requested` by the operator.
    pub fn request(&mut self, m: &DeviceId, s: &DeviceId) -> Event {
        let op = self.operator.clone();
        self.push(
            &op,
            m,
            Body::PairingRequested(PairingRequested {
                manager: m.clone(),
                sensor: s.clone(),
            }),
        )
    }

    /// `pairing.offered` by manager `m` with `nonce`, valid `ttl` ms.
    pub fn offer(&mut self, m: &DeviceId, s: &DeviceId, nonce: [u8; 16], ttl: u64) -> Event {
        let expires_at = self.now + ttl;
        self.push(
            &m.kid(),
            m,
            Body::PairingOffered(PairingOffered {
                sensor: s.clone(),
                nonce,
                expires_at,
            }),
        )
    }

    /// `pairing.accepted` by sensor `s` (signed as `signer`, normally `s`).
    pub fn accept(&mut self, signer: &DeviceId, m: &DeviceId, nonce: [u8; 16]) -> Event {
        self.push(
            &signer.kid(),
            signer,
            Body::PairingAccepted(PairingAccepted {
                manager: m.clone(),
                nonce,
            }),
        )
    }

    /// A fresh nonce.
    pub fn nonce(&mut self) -> [u8; 16] {
        self.counter += 1;
        let mut n = [0x5a; 16];
        n[..8].copy_from_slice(&self.counter.to_be_bytes());
        n
    }

    /// The whole handshake: request, offer, accept.
    pub fn pair(&mut self, m: &DeviceId, s: &DeviceId) -> [u8; 16] {
        let nonce = self.nonce();
        self.request(m, s);
        self.offer(m, s, nonce, 600_000);
        self.accept(s, m, nonce);
        nonce
    }

    /// `pairing.unpaired` signed by device `d`.
    pub fn unpair(&mut self, d: &DeviceId, peer: &DeviceId) -> Event {
        self.push(
            &d.kid(),
            d,
            Body::PairingUnpaired(Unpaired { peer: peer.clone() }),
        )
    }

    /// `command.issued` by `issuer` to `target`, valid `ttl` ms.
    pub fn command(&mut self, issuer: &DeviceId, target: &DeviceId, ttl: u64) -> Event {
        let expires_at = self.now + ttl;
        self.push(
            &issuer.kid(),
            issuer,
            Body::CommandIssued(CommandIssued {
                target: target.clone(),
                command: Command::Status,
                params: Metadata::new(),
                expires_at,
            }),
        )
    }

    /// `command.completed` by `d` for `command_id`.
    pub fn complete(&mut self, d: &DeviceId, command_id: EventId) -> Event {
        self.push(
            &d.kid(),
            d,
            Body::CommandCompleted(CommandCompleted {
                command_id,
                outcome: Outcome::Ok,
                result: Metadata::new(),
            }),
        )
    }

    /// `device.mode_changed` to standalone, signed by the device.
    pub fn standalone(&mut self, d: &DeviceId) -> Event {
        self.push(&d.kid(), d, Body::ModeChanged(ModeChanged))
    }

    /// `device.revoked` by the operator.
    pub fn revoke(&mut self, d: &DeviceId) -> Event {
        let op = self.operator.clone();
        self.push(
            &op,
            d,
            Body::Revoked(Revoked {
                reason: "stolen".into(),
            }),
        )
    }
}

/// A realistic fleet log of about `events` records: `devices` devices manufactured, activated
/// and set up; in groups of four, the first manages the other three; then device actions
/// round-robin with a command and its completion every 50 events, ~1 s of broker time apart.
pub fn fleet(devices: u32, events: usize) -> LogBuilder {
    let mut log = LogBuilder::new();
    let ids: Vec<DeviceId> = (1..=devices.max(1))
        .map(|n| log.configured(n, &format!("owner-{}", n / 4)))
        .collect();
    for group in ids.chunks(4) {
        for s in &group[1..] {
            log.pair(&group[0], s);
        }
    }
    const ACTIONS: [&str; 4] = ["login", "qr_scan", "voice_recording", "file_upload"];
    let mut i = 0usize;
    while log.records.len() < events {
        let d = ids[i % ids.len()].clone();
        let group = (i % ids.len()) / 4 * 4;
        if i % 50 == 49 && group + 1 < ids.len() {
            let (m, s) = (ids[group].clone(), ids[group + 1].clone());
            let c = log.command(&m, &s, 60_000);
            log.complete(&s, c.id);
        } else {
            log.action(&d, ACTIONS[i % ACTIONS.len()]);
        }
        log.advance(997);
        i += 1;
    }
    log
}
