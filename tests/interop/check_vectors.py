#!/usr/bin/env python3
"""Checks pairbus's wire format against independent implementations, and makes one envelope.

Uses pycose 1.1 (COSE_Mac0), cbor2 (CBOR) and cryptography (HKDF, HMAC, SHA-256); nothing
here re-implements a primitive, only base45 (RFC 9285), which is an encoding.

1. For every schemas/vectors/*.json:
   - key_hex == HKDF-SHA256(salt="pairbus/v1", IKM=root secret, info=kid, L=32);
   - cose_hex is a tagged COSE_Mac0 whose protected header is exactly {1: 5, 4: kid}, whose
     unprotected header is empty, and whose 32-byte tag pycose verifies with the derived key;
   - its payload is payload_hex, deterministically encoded (cbor2 canonical re-encoding gives
     the same bytes), and a map whose `src` is the kid (the QR claims map has no `src`);
   - pycose, asked to MAC the same payload under the same kid and key, gives cose_hex exactly;
   - qr.json: qr_text == "PB1:" + base45(cose bytes);
   - log-record.json: record.event == cose bytes and
     record.hash == SHA-256(prev || seq u64 BE || received_at u64 BE || event).
2. Makes a `device.action` event of its own with cbor2 + pycose and prints
   {"kid", "root_secret_hex", "serial", "cose_hex"} as JSON on stdout, for the Rust side
   (tests/tests/interop_pycose.rs) to open with pairbus_schemas::open_event.

Usage: check_vectors.py [VECTORS_DIR]   (default: <repo>/schemas/vectors)
Exit status 0 when everything checks, 1 with a message on stderr otherwise.
"""

import glob
import json
import os
import secrets
import sys
import time

try:
    import cbor2
    from cryptography.hazmat.primitives import hashes, hmac
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    from pycose.algorithms import HMAC256
    from pycose.headers import KID, Algorithm
    from pycose.keys.symmetric import SymmetricKey
    from pycose.messages import Mac0Message
except ImportError as e:  # pragma: no cover - environment problem
    sys.exit(f"check_vectors: missing Python package ({e}); run tests/interop/setup-venv.sh")

KDF_SALT = b"pairbus/v1"
SERIAL_INFO = b"serial"
QR_PREFIX = "PB1:"
COSE_MAC0_TAG = 17


class CheckFailed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise CheckFailed(what)


def hkdf(root: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=KDF_SALT, info=info).derive(root)


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def sha256(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()


# --- base45 (RFC 9285) ---------------------------------------------------------------------

B45_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
B45_VALUE = {c: i for i, c in enumerate(B45_ALPHABET)}


def b45decode(text: str) -> bytes:
    """RFC 9285 §4.2: groups of 3 characters give 2 bytes, a final group of 2 gives 1."""
    try:
        digits = [B45_VALUE[c] for c in text]
    except KeyError as e:
        raise ValueError(f"not a base45 character: {e}") from None
    if len(digits) % 3 == 1:
        raise ValueError("base45 length leaves a single trailing character")
    out = bytearray()
    for i in range(0, len(digits), 3):
        group = digits[i : i + 3]
        n = sum(d * 45**j for j, d in enumerate(group))
        if len(group) == 3:
            if n > 0xFFFF:
                raise ValueError("base45 triple above 65535")
            out += n.to_bytes(2, "big")
        else:
            if n > 0xFF:
                raise ValueError("base45 pair above 255")
            out.append(n)
    return bytes(out)


# --- COSE_Mac0 -----------------------------------------------------------------------------


def mac0(kid: str, key: bytes, payload: bytes) -> bytes:
    """A COSE_Mac0 made by pycose: protected {1: 5, 4: kid}, unprotected {}, no external AAD."""
    # pycose encodes the protected map in insertion order: alg (1) first, then kid (4), which
    # is the deterministic order.
    msg = Mac0Message(
        phdr={Algorithm: HMAC256, KID: kid.encode()},
        uhdr={},
        payload=payload,
        external_aad=b"",
    )
    msg.key = SymmetricKey(k=key)
    return msg.encode(tag=True, mac=True)


def check_mac0(cose: bytes, kid: str, key: bytes) -> bytes:
    """Checks the structure and the tag of a pairbus COSE_Mac0; returns its payload."""
    # The raw structure first, with plain cbor2 (pycose normalises headers on decoding).
    raw = cbor2.loads(cose)
    check(isinstance(raw, cbor2.CBORTag) and raw.tag == COSE_MAC0_TAG, "not CBOR tag 17 (COSE_Mac0)")
    check(isinstance(raw.value, list) and len(raw.value) == 4, "COSE_Mac0 is not a 4-element array")
    phdr_bytes, uhdr, _, tag = raw.value
    check(
        phdr_bytes == cbor2.dumps({1: 5, 4: kid.encode()}),
        f"protected header is {phdr_bytes.hex()}, expected exactly {{1: 5, 4: h'{kid.encode().hex()}'}}",
    )
    check(uhdr == {}, f"unprotected header is {uhdr!r}, expected empty")
    check(isinstance(tag, bytes) and len(tag) == 32, "tag is not 32 bytes")

    msg = Mac0Message.decode(cose)
    check(msg.get_attr(Algorithm) is HMAC256, f"pycose sees alg {msg.get_attr(Algorithm)!r}, not HMAC 256/256")
    check(msg.phdr.get(KID) == kid.encode(), f"pycose sees kid {msg.phdr.get(KID)!r}, expected {kid!r}")
    check(msg.uhdr == {}, f"pycose sees an unprotected header {msg.uhdr!r}")
    msg.key = SymmetricKey(k=key)
    check(msg.verify_tag(), "pycose: the MAC does not verify with the derived key")
    # And pycose refuses it under another key (the check above is not vacuous).
    other = Mac0Message.decode(cose)
    other.key = SymmetricKey(k=bytes(b ^ 0xFF for b in key))
    check(not other.verify_tag(), "pycose: the MAC also verifies with a wrong key")
    check(isinstance(msg.payload, bytes), "payload is missing")
    return msg.payload


def check_deterministic(payload: bytes) -> object:
    value = cbor2.loads(payload)
    again = cbor2.dumps(value, canonical=True)
    check(again == payload, f"payload is not deterministically encoded: cbor2 canonical gives {again.hex()}")
    return value


# --- vectors -------------------------------------------------------------------------------


def check_vector(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        v = json.load(f)
    name = v["name"]
    kid = v["kid"]
    root = bytes.fromhex(v["root_secret_hex"])
    key = hkdf(root, kid.encode())
    check(key.hex() == v["key_hex"], f"HKDF gives key {key.hex()}, vector says {v['key_hex']}")

    cose = bytes.fromhex(v["cose_hex"])
    payload = check_mac0(cose, kid, key)
    check(payload.hex() == v["payload_hex"], "COSE payload differs from payload_hex")
    value = check_deterministic(payload)
    check(isinstance(value, dict), "payload is not a CBOR map")
    if name == "qr":
        check("src" not in value, "QR claims carry a `src`")
        check(isinstance(value.get("device_id"), str), "QR claims lack a device_id")
    else:
        check(value.get("src") == kid, f"payload src {value.get('src')!r} is not the kid {kid!r}")
        check(value.get("type") == name or name == "log-record", f"payload type {value.get('type')!r} is not {name!r}")

    # pycose, making the same envelope, produces the very same bytes.
    ours = mac0(kid, key, payload)
    check(ours == cose, f"pycose encodes the same envelope differently:\n  pycose {ours.hex()}\n  vector {cose.hex()}")

    if "qr_text" in v:
        qr = v["qr_text"]
        check(qr.startswith(QR_PREFIX), f"qr_text does not start with {QR_PREFIX!r}")
        check(b45decode(qr[len(QR_PREFIX) :]) == cose, "base45 of qr_text is not the COSE bytes")

    if "record_hex" in v:
        record_bytes = bytes.fromhex(v["record_hex"])
        record = check_deterministic(record_bytes)
        check(isinstance(record, dict), "record is not a CBOR map")
        check(set(record) == {"seq", "prev", "hash", "received_at", "event"}, f"record keys are {sorted(record)}")
        check(record["event"] == cose, "record.event is not the COSE bytes")
        seq, received_at = record["seq"], record["received_at"]
        check(isinstance(record["prev"], bytes) and len(record["prev"]) == 32, "record.prev is not 32 bytes")
        expected = sha256(record["prev"] + seq.to_bytes(8, "big") + received_at.to_bytes(8, "big") + record["event"])
        check(record["hash"] == expected, f"record.hash is {record['hash'].hex()}, SHA-256 rule gives {expected.hex()}")
    return name


# --- an event of our own -------------------------------------------------------------------


def uuid_v7_bytes(unix_ms: int) -> bytes:
    """16 bytes laid out as a UUIDv7 (RFC 9562 §5.7): 48-bit ms time, version 7, variant 10."""
    b = bytearray(unix_ms.to_bytes(6, "big") + secrets.token_bytes(10))
    b[6] = 0x70 | (b[6] & 0x0F)
    b[8] = 0x80 | (b[8] & 0x3F)
    return bytes(b)


def make_action(root: bytes) -> dict:
    serial = "PY-" + secrets.token_hex(6).upper()
    serial_hash = hmac_sha256(hkdf(root, SERIAL_INFO), serial.encode())
    device = serial_hash[:8].hex()
    kid = f"device:{device}"
    key = hkdf(root, kid.encode())
    ts = int(time.time() * 1000)
    event = {
        "v": 1,
        "id": uuid_v7_bytes(ts),
        "type": "device.action",
        "src": kid,
        "seq": 7,
        "ts": ts,
        "device": device,
        "body": {
            "action": "file_upload",
            "metadata": {
                "name": "scan.pdf",
                "bytes": 123456,
                "offset": -5,
                "resumed": False,
                # >= 24 bytes: a two-byte text header, which must still sort after short keys.
                "content_type_as_declared_by_client": "application/pdf",
            },
            "user_agent": "pycose-interop/1",
        },
    }
    payload = cbor2.dumps(event, canonical=True)
    cose = mac0(kid, key, payload)
    # Check our own output the same way as the vectors before handing it over.
    check(check_mac0(cose, kid, key) == payload, "pycose round trip changed the payload")
    check_deterministic(payload)
    return {"kid": kid, "root_secret_hex": root.hex(), "serial": serial, "cose_hex": cose.hex()}


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    vectors_dir = argv[1] if len(argv) > 1 else os.path.join(here, "..", "..", "schemas", "vectors")
    paths = sorted(glob.glob(os.path.join(vectors_dir, "*.json")))
    if not paths:
        print(f"check_vectors: no vectors in {vectors_dir}", file=sys.stderr)
        return 1
    roots = set()
    for path in paths:
        try:
            name = check_vector(path)
        except (CheckFailed, KeyError, ValueError, TypeError, cbor2.CBORDecodeError) as e:
            print(f"check_vectors: {os.path.basename(path)}: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        with open(path, encoding="utf-8") as f:
            roots.add(json.load(f)["root_secret_hex"])
        print(f"check_vectors: ok {name}", file=sys.stderr)
    if len(roots) != 1:
        print(f"check_vectors: the vectors use {len(roots)} root secrets, expected one", file=sys.stderr)
        return 1
    try:
        out = make_action(bytes.fromhex(roots.pop()))
    except CheckFailed as e:
        print(f"check_vectors: own device.action: {e}", file=sys.stderr)
        return 1
    print(f"check_vectors: {len(paths)} vectors ok; made a device.action for {out['kid']}", file=sys.stderr)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
