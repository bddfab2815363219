#!/usr/bin/env python3
"""A pairbus device and operator made only from third-party libraries and the written docs.

Uses paho-mqtt (MQTT 3.1.1), cbor2 (deterministic CBOR), pycose (COSE_Mac0), cryptography
(HKDF, HMAC) and the Python standard library; no pairbus code. Everything it does follows
README.md "The wire format in brief", DESIGN.md and schemas/events.cddl:

 1. derives the device key and the operator key from fleet.key with HKDF-SHA256
    (salt "pairbus/v1", info = kid) and checks the device key equals the one `make` wrote
    into the device's identity file (and the operator key the operator identity file's);
 2. mints the MQTT passwords (`<expiry>.<hex HMAC-SHA256(key, "pairbus/v1/mqtt|kid|expiry")>`);
 3. connects an operator client to the operator plane, subscribed to pairbus/v1/log,
    pairbus/v1/rejected/device/<id>, pairbus/v1/audit/events/<id> and
    pairbus/v1/audit/devices/<id>, and a device client (client id = username = kid) to the
    device plane, subscribed to its committed/ and rejected/ topics;
 4. publishes a device.action (cbor2 canonical payload in a pycose COSE_Mac0 with protected
    header {1: 5, 4: kid}) and checks: the committed/ confirmation, the log record (its
    `event` is the bytes sent, its hash recomputes), the audit trail entry and device card;
 5. publishes a forged one (MAC'd with a wrong key) and checks it is refused as bad_mac on
    the device's rejected/ topic, on both planes (the Rust side then checks the log holds
    the genuine event and not the forged one).

Usage: paho_device.py --fleet-key FILE --device-identity FILE --operator-identity FILE
                      --device-plane HOST:PORT --operator-plane HOST:PORT
Prints one JSON line with what it checked on success; exits 1 with a message on any failure.
"""

import argparse
import hashlib
import json
import os
import queue
import sys
import time
import tomllib
import uuid

try:
    import cbor2
    import paho.mqtt.client as mqtt
    from cryptography.hazmat.primitives import hashes, hmac
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    from pycose.algorithms import HMAC256
    from pycose.headers import KID, Algorithm
    from pycose.keys.symmetric import SymmetricKey
    from pycose.messages import Mac0Message
except ImportError as e:  # pragma: no cover - reported to the Rust side
    sys.exit(f"missing a third-party library ({e}): run tests/interop/setup-venv.sh")

WAIT = 20.0  # seconds to wait for any one answer


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


# --- keys and tokens (README "Keys", "MQTT password") ----------------------------------------

def derive(root: bytes, kid: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"pairbus/v1", info=kid.encode()
    ).derive(root)


def mac(key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def token(key: bytes, kid: str, ttl: int = 600) -> str:
    expiry = int(time.time()) + ttl
    return f"{expiry}." + mac(key, f"pairbus/v1/mqtt|{kid}|{expiry}".encode()).hex()


# --- events (README "Envelope", "Payload"; events.cddl action-body) --------------------------

def uuid7() -> bytes:
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # RFC 9562 variant
    value |= rand & ((1 << 62) - 1)  # rand_b, 62 bits
    u = uuid.UUID(int=value)
    check(u.version == 7, "uuid7 construction")
    return u.bytes


def action_event(kid: str, device: str, seq: int) -> tuple[bytes, bytes]:
    """A device.action payload, deterministically encoded; returns (payload, event id)."""
    event_id = uuid7()
    payload = {
        "v": 1,
        "id": event_id,
        "type": "device.action",
        "src": kid,
        "seq": seq,
        "ts": int.from_bytes(event_id[:6], "big"),
        "device": device,
        "body": {
            "action": "qr_scan",
            "metadata": {"via": "paho-mqtt", "attempt": seq, "offline": False},
            "ip": "192.0.2.44",
            "user_agent": "paho-interop/1",
        },
    }
    return cbor2.dumps(payload, canonical=True), event_id


def seal(payload: bytes, kid: str, key: bytes) -> bytes:
    # pycose writes the protected map in insertion order: alg (1) first, then kid (4).
    msg = Mac0Message(phdr={Algorithm: HMAC256, KID: kid.encode()}, uhdr={}, payload=payload)
    msg.key = SymmetricKey(k=key)
    cose = msg.encode(tag=True, mac=True)
    raw = cbor2.loads(cose)
    check(
        raw.tag == 17 and raw.value[0] == b"\xa2\x01\x05\x04" + cbor2.dumps(kid.encode()),
        f"pycose wrote the protected header {raw.value[0].hex()}, not a2 01 05 04 <kid>",
    )
    return cose


# --- MQTT -------------------------------------------------------------------------------------

class Client:
    """A paho client whose messages land in a queue."""

    def __init__(self, name: str, addr: str, client_id: str, username: str, password: str):
        host, port = addr.rsplit(":", 1)
        self.name = name
        self.messages: "queue.Queue[tuple[str, bytes]]" = queue.Queue()
        self.events: "queue.Queue[tuple[str, object]]" = queue.Queue()
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        c.username_pw_set(username, password)
        c.on_connect = lambda _c, _u, _f, rc, _p: self.events.put(("connack", rc))
        c.on_subscribe = lambda _c, _u, mid, rcs, _p: self.events.put(("suback", (mid, rcs)))
        c.on_publish = lambda _c, _u, mid, _rc, _p: self.events.put(("puback", mid))
        c.on_message = lambda _c, _u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.c = c
        try:
            c.connect(host, int(port), keepalive=30)
        except OSError as e:
            raise Failure(f"{name}: cannot connect to {addr}: {e}")
        c.loop_start()
        kind, rc = self.event("connack")
        check(not rc.is_failure, f"{name}: the broker refused the connection: {rc}")

    def event(self, kind: str):
        end = time.monotonic() + WAIT
        while True:
            try:
                got = self.events.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise Failure(f"{self.name}: no {kind} within {WAIT} s")
            if got[0] == kind:
                return got

    def subscribe(self, topics):
        for t in topics:
            _, mid = self.c.subscribe(t, qos=1)
            _, (got_mid, rcs) = self.event("suback")
            check(got_mid == mid, f"{self.name}: SUBACK for another request")
            check(all(not rc.is_failure for rc in rcs), f"{self.name}: subscription to {t} refused")

    def publish(self, topic: str, payload: bytes):
        info = self.c.publish(topic, payload, qos=1)
        self.event("puback")
        return info

    def wait_for(self, what: str, match):
        """The first message for which match(topic, payload) is truthy; the others are kept."""
        end = time.monotonic() + WAIT
        kept = []
        try:
            while True:
                try:
                    topic, payload = self.messages.get(timeout=max(0.0, end - time.monotonic()))
                except queue.Empty:
                    seen = ", ".join(t for t, _ in kept) or "nothing"
                    raise Failure(f"{self.name}: no {what} within {WAIT} s (got: {seen})")
                result = match(topic, payload)
                if result:
                    return result
                kept.append((topic, payload))
        finally:
            for m in kept:
                self.messages.put(m)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def record_hash(prev: bytes, seq: int, received_at: int, event: bytes) -> bytes:
    return hashlib.sha256(
        prev + seq.to_bytes(8, "big") + received_at.to_bytes(8, "big") + event
    ).digest()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fleet-key", required=True)
    ap.add_argument("--device-identity", required=True)
    ap.add_argument("--operator-identity", required=True)
    ap.add_argument("--device-plane", required=True)
    ap.add_argument("--operator-plane", required=True)
    a = ap.parse_args()

    with open(a.fleet_key) as f:
        root = bytes.fromhex(f.read().strip())
    check(len(root) == 32, "fleet.key does not hold 64 hex digits")
    with open(a.device_identity, "rb") as f:
        dev_id_file = tomllib.load(f)
    with open(a.operator_identity, "rb") as f:
        op_id_file = tomllib.load(f)

    dkid = dev_id_file["kid"]
    check(dkid.startswith("device:"), f"{a.device_identity} is not a device identity: {dkid}")
    device = dkid.split(":", 1)[1]
    okid = op_id_file["kid"]
    check(okid.startswith("operator:"), f"{a.operator_identity} is not an operator: {okid}")

    dkey, okey = derive(root, dkid), derive(root, okid)
    check(
        dkey.hex() == dev_id_file["key"],
        "HKDF(fleet root, info = device kid) differs from the key in the device identity file",
    )
    check(
        okey.hex() == op_id_file["key"],
        "HKDF(fleet root, info = operator kid) differs from the operator identity file's key",
    )

    op = Client("operator", a.operator_plane, f"{okid}-paho", okid, token(okey, okid))
    op.subscribe(
        [
            "pairbus/v1/log",
            f"pairbus/v1/rejected/device/{device}",
            f"pairbus/v1/audit/events/{device}",
            f"pairbus/v1/audit/devices/{device}",
        ]
    )
    dev = Client("device", a.device_plane, dkid, dkid, token(dkey, dkid))
    dev.subscribe([f"pairbus/v1/committed/device/{device}", f"pairbus/v1/rejected/device/{device}"])

    # A genuine event: committed, logged, audited.
    payload, event_id = action_event(dkid, device, 1)
    cose = seal(payload, dkid, dkey)
    dev.publish(f"pairbus/v1/in/device/{device}", cose)

    def committed(topic, body):
        if topic != f"pairbus/v1/committed/device/{device}":
            return None
        m = cbor2.loads(body)
        return m if m.get("id") == event_id else None

    conf = dev.wait_for("committed/ confirmation", committed)
    check(conf.get("status") == "committed", f"confirmation status {conf}")
    check(isinstance(conf.get("seq"), int), f"confirmation without seq: {conf}")

    def logged(topic, body):
        if topic != "pairbus/v1/log":
            return None
        r = cbor2.loads(body)
        return r if r.get("event") == cose else None

    rec = op.wait_for("log record of the event", logged)
    check(set(rec) == {"seq", "prev", "hash", "received_at", "event"}, f"record fields {set(rec)}")
    check(
        record_hash(rec["prev"], rec["seq"], rec["received_at"], rec["event"]) == rec["hash"],
        "the log record's hash is not SHA-256(prev || seq u64 BE || received_at u64 BE || event)",
    )
    check(rec["seq"] == conf["seq"], f"confirmation seq {conf['seq']} != record seq {rec['seq']}")

    def trail(topic, body):
        if topic != f"pairbus/v1/audit/events/{device}":
            return None
        e = json.loads(body)
        return e if e.get("event_id") == event_id.hex() else None

    entry = op.wait_for("audit trail entry of the event", trail)
    check(entry.get("type") == "device.action", f"trail entry type {entry.get('type')}")
    check(entry.get("status") == "accepted", f"trail entry status {entry.get('status')}")
    check(entry.get("src") == dkid and entry.get("seq") == rec["seq"], f"trail entry {entry}")
    details = entry.get("details") or {}
    check(
        details.get("action") == "qr_scan"
        and details.get("metadata") == {"via": "paho-mqtt", "attempt": 1, "offline": False}
        and details.get("ip") == "192.0.2.44"
        and details.get("user_agent") == "paho-interop/1",
        f"trail entry details {details}",
    )

    def card(topic, body):
        if topic != f"pairbus/v1/audit/devices/{device}":
            return None
        c = json.loads(body)
        return c if c.get("device_id") == device and c.get("last_seen") else None

    view = op.wait_for("audit device card seen after the event", card)

    # A forged event: well formed, MAC'd with a key that is not the device's.
    forged_payload, forged_id = action_event(dkid, device, 2)
    forged = seal(forged_payload, dkid, derive(os.urandom(32), dkid))
    dev.publish(f"pairbus/v1/in/device/{device}", forged)

    def rejected(topic, body):
        if topic != f"pairbus/v1/rejected/device/{device}":
            return None
        return json.loads(body)

    for who in (dev, op):
        r = who.wait_for("rejection of the forged event", rejected)
        check(r.get("reason") == "bad_mac", f"{who.name}: rejection {r}, expected bad_mac")
        check(isinstance(r.get("detail"), str), f"{who.name}: rejection without detail: {r}")

    dev.close()
    op.close()
    print(
        json.dumps(
            {
                "device": device,
                "event_id": event_id.hex(),
                "forged_id": forged_id.hex(),
                "log_seq": rec["seq"],
                "card_state": view.get("state"),
                "rejection": "bad_mac",
            }
        )
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failure as e:
        print(f"paho_device.py: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    except (OSError, KeyError, ValueError, cbor2.CBORDecodeError) as e:
        print(f"paho_device.py: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
