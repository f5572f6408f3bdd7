#!/usr/bin/env python3
"""Reads and rewrites peftc checkpoints for tests/check_reliability.sh, with
an independent implementation of the checksum (FNV-1a 64 over 64-bit
little-endian words, byte-wise tail; metadata key/value pairs NUL-terminated,
then each tensor's name and bytes), so the test checks the C writer against it.

  ckpt_tool.py verify CKPT              exit 0 if the stored checksum is right
  ckpt_tool.py step CKPT                prints the saved step
  ckpt_tool.py edit CKPT OUT KEY=VALUE... [--u8 NAME] [--nan NAME] [--flip] [--no-sum] [--resum]
      metadata edits; --u8: tensor NAME stored as U8 with the same element
      count; --nan: element 0 of NAME set to NaN; --flip: one bit of params
      flipped after the checksum; --resum: the checksum recomputed (for edits
      meant to pass it); --no-sum: peftc_checksum dropped.
"""
import json, struct, sys
import numpy as np

KEYS = ["peftc_signature", "step", "epoch", "pos", "rng", "method"]
P = 1099511628211
M = (1 << 64) - 1


def fnv(h, b):
    n8 = len(b) // 8 * 8
    if n8:
        for w in np.frombuffer(b[:n8], dtype="<u8").tolist():
            h = ((h ^ w) * P) & M
    for c in b[n8:]:
        h = ((h ^ c) * P) & M
    return h


def read(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    meta = hdr.pop("__metadata__", {})
    data = raw[8 + n:]
    ts = {}
    for k, v in hdr.items():
        a, b = v["data_offsets"]
        ts[k] = (v["dtype"], v["shape"], bytearray(data[a:b]))
    return meta, ts


def order(ts):
    # the writer's order: params, adam_m, adam_v, then the method's state in file order
    first = ["params", "adam_m", "adam_v"]
    return first + [k for k in ts if k not in first]


def checksum_full(meta, ts):
    h = 1469598103934665603
    for k in KEYS:
        h = fnv(h, k.encode() + b"\0")
        h = fnv(h, meta[k].encode() + b"\0")
    for name in order(ts):
        h = fnv(h, name.encode() + b"\0")
        h = fnv(h, bytes(ts[name][2]))
    return "%016x" % h


def write(path, meta, ts):
    hdr = {"__metadata__": meta}
    off = 0
    names = order(ts)
    for k in names:
        dt, shape, b = ts[k]
        hdr[k] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(b)]}
        off += len(b)
    js = json.dumps(hdr).encode()
    js += b" " * ((8 - len(js) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(js)) + js)
        for k in names:
            f.write(bytes(ts[k][2]))


def main():
    cmd, path = sys.argv[1], sys.argv[2]
    meta, ts = read(path)
    if cmd == "verify":
        want = checksum_full(meta, ts)
        got = meta.get("peftc_checksum")
        print("checksum", got, "recomputed", want)
        sys.exit(0 if got == want else 1)
    if cmd == "step":
        print(meta["step"])
        return
    out = sys.argv[3]
    args = sys.argv[4:]
    flip = resum = nosum = False
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--u8":
            name = args[i + 1]; i += 1
            dt, shape, b = ts[name]
            ts[name] = ("U8", shape, bytearray(shape[0]))
        elif a == "--nan":
            name = args[i + 1]; i += 1
            arr = np.frombuffer(bytes(ts[name][2]), dtype="<f4").copy()
            arr[0] = np.nan
            ts[name] = (ts[name][0], ts[name][1], bytearray(arr.tobytes()))
        elif a == "--flip":
            flip = True
        elif a == "--resum":
            resum = True
        elif a == "--no-sum":
            nosum = True
        else:
            k, v = a.split("=", 1)
            meta[k] = v
        i += 1
    if resum:
        meta["peftc_checksum"] = checksum_full(meta, ts)
    if nosum:
        meta.pop("peftc_checksum", None)
    if flip:
        ts["params"][2][5] ^= 0x10
    write(out, meta, ts)


if __name__ == "__main__":
    main()
