#!/usr/bin/env python3
"""Writes the fuzz seed files (seeds/) from the published test vectors (../vectors/*.json).

Each vector gives its COSE_Mac0 (`cose_hex`), its payload (`payload_hex`) and, for some, a log
record (`record_hex`) or a QR text (`qr_text`); a few service messages are added by hand, and
the regression inputs (`regress-*`, `cbor-*`) of the findings listed in README.md.
Run from schemas/fuzz: `python3 gen_seeds.py`. Standard library only.
"""
import hashlib
import hmac
import json
import pathlib

here = pathlib.Path(__file__).resolve().parent
out = here / "seeds"
out.mkdir(exist_ok=True)
for old in out.iterdir():
    old.unlink()


def head(major, n):
    """A CBOR head in its shortest form."""
    if n < 24:
        return bytes([major << 5 | n])
    for ai, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | ai]) + n.to_bytes(size, "big")
    raise ValueError(n)


def enc(v):
    """Deterministic CBOR of the few types the messages use (maps sorted by encoded key)."""
    if v is True or v is False:
        return b"\xf5" if v else b"\xf4"
    if isinstance(v, int):
        return head(0, v)
    if isinstance(v, bytes):
        return head(2, len(v)) + v
    if isinstance(v, str):
        b = v.encode()
        return head(3, len(b)) + b
    if isinstance(v, dict):
        items = sorted((enc(k), enc(x)) for k, x in v.items())
        return head(5, len(items)) + b"".join(k + x for k, x in items)
    raise TypeError(v)


seeds = {}
for path in sorted((here.parent / "vectors").glob("*.json")):
    v = json.loads(path.read_text())
    name = v["name"]
    seeds[f"{name}.cose"] = bytes.fromhex(v["cose_hex"])
    seeds[f"{name}.payload"] = bytes.fromhex(v["payload_hex"])
    if v.get("record_hex"):
        seeds[f"{name}.record"] = bytes.fromhex(v["record_hex"])
    if v.get("qr_text"):
        seeds[f"{name}.text"] = v["qr_text"].encode()

seeds["committed.cbor"] = enc({"id": bytes(range(16)), "seq": 7, "status": "committed"})
seeds["checkpoint.cbor"] = enc({"seq": 7, "hash": bytes(32), "at": 1767225600000, "mac": bytes(32)})
seeds["replay-end.cbor"] = enc({"end": True, "count": 3})
seeds["replay-request.json"] = b'{"request_id":"r1","from_seq":1,"to_seq":9,"types":["device.action"]}'
seeds["rejection.json"] = b'{"reason":"bad_mac","detail":"MAC does not verify","event_id":"00"}'
seeds["topic.text"] = b"pairbus/v1/in/device/18d60a00d5b622b0"



def mac0(protected, payload, key):
    """A COSE_Mac0 with the given protected header bytes, MAC'd with `key` (pairbus layout)."""
    ph = head(2, len(protected)) + protected
    pl = head(2, len(payload)) + payload
    tag = hmac.new(key, b"\x84\x64MAC0" + ph + b"\x40" + pl, hashlib.sha256).digest()
    return b"\xd1\x84" + ph + b"\xa0" + pl + b"\x58\x20" + tag


# Finding 1: the protected header {1: 5, 4: kid} in another order, or with a non-shortest
# integer, correctly MAC'd. Must be refused as NonCanonical (open_event used to accept them).
action = json.loads((here.parent / "vectors" / "device.action.json").read_text())
key, kid = bytes.fromhex(action["key_hex"]), action["kid"].encode()
payload = bytes.fromhex(action["payload_hex"])
assert mac0(b"\xa2\x01\x05\x04" + enc(kid), payload, key).hex() == action["cose_hex"]
seeds["regress-protected-key-order.cose"] = mac0(b"\xa2\x04" + enc(kid) + b"\x01\x05", payload, key)
seeds["regress-protected-long-int.cose"] = mac0(b"\xa2\x18\x01\x05\x04" + enc(kid), payload, key)

# For the cbor_strict target: maps as map keys, equal once canonicalized (duplicate) or not;
# mixed key types out of order and in order.
seeds["cbor-mapkeys-dup.cbor"] = bytes.fromhex("a2a261620161610200a2616102616201" "00")
seeds["cbor-mapkeys-sorted.cbor"] = bytes.fromhex("a2a1616101" "00" "a2616102616201" "00")
seeds["cbor-mixed-keys.cbor"] = bytes.fromhex("a301006161002000")
seeds["cbor-mixed-keys-sorted.cbor"] = bytes.fromhex("a301002000616100")

# The same bytes appear in several vectors (log-record repeats device.action): keep one.
seen = set()
for name, data in sorted(seeds.items()):
    if data in seen:
        continue
    seen.add(data)
    (out / name).write_bytes(data)
print(f"{len(seen)} seeds, {sum(len(d) for d in seen)} bytes in {out}")
