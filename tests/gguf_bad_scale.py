#!/usr/bin/env python3
"""Writes a copy of a GGUF with one non-finite number where a loader must
see it, and prints what peftc's refusal must name: "TENSOR FIRST..LAST FIELD".

  gguf_bad_scale.py SRC.gguf OUT.gguf KIND

KIND (the tensor, block and field; NaN 0x7e00 or +Inf 0x7c00 as fp16):
  q4_1_d    blk.3.attn_q.weight, row 5, block 2: d = NaN
  q4_1_m    blk.0.ffn_up.weight, row 0, block 0: m = +Inf
  q8_0_d    token_embd.weight (Q8_0), row 100, block 7: d = NaN
  f32       blk.1.attn_norm.weight element 9 = NaN
  q4_k      blk.0.ffn_down.weight re-typed Q4_K (its 1536-value rows are
            whole super-blocks; Q4_K is smaller than the Q4_1 it replaces, so
            it fits in place), finite scales: must load
  q4_k_d    the same, row 2, super-block 4: d = NaN
  q4_k_dmin the same, row 0, super-block 1: dmin = +Inf

The oracle is the gguf package: its dequantize() of the patched tensor must
give non-finite values in exactly the printed range and finite values
elsewhere (else this script fails), so the block and the value range are the
package's reading of the bytes, not peftc's.
"""
import shutil, sys
import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize

NAN, INF = 0x7E00, 0x7C00


def tensor(r, name):
    return [t for t in r.tensors if t.name == name][0]


def main():
    src, out, kind = sys.argv[1:4]
    shutil.copyfile(src, out)
    r = gguf.GGUFReader(src)
    f = open(out, "r+b")
    if kind == "f32":
        t = tensor(r, "blk.1.attn_norm.weight")
        f.seek(t.data_offset + 9 * 4); f.write(np.float32(np.nan).tobytes())
        name, lo, hi, field = t.name, 9, 9, "value"
    elif kind.startswith("q4_k"):
        t = tensor(r, "blk.0.ffn_down.weight")
        ne0, rows = int(t.shape[0]), int(t.shape[1])
        nb = ne0 // 256
        # re-type: the tensor info's type field follows its name and dims
        parts = t.field.parts
        type_off = t.field.offset + sum(p.nbytes for p in parts[:4])
        assert int(parts[4][0]) == Q.Q4_1
        f.seek(type_off); f.write(np.uint32(Q.Q4_K).tobytes())
        rng = np.random.default_rng(5)
        blk = rng.integers(0, 256, (rows * nb, 144), dtype=np.uint8)
        blk[:, 0:2] = np.frombuffer(np.float16(0.002).tobytes(), np.uint8)    # d
        blk[:, 2:4] = np.frombuffer(np.float16(0.001).tobytes(), np.uint8)    # dmin
        row, sb, off, val, field = {"q4_k": (0, 0, None, None, None), "q4_k_d": (2, 4, 0, NAN, "d"),
                                    "q4_k_dmin": (0, 1, 2, INF, "dmin")}[kind]
        if off is not None:
            blk[row * nb + sb, off:off + 2] = np.frombuffer(np.uint16(val).tobytes(), np.uint8)
        f.seek(t.data_offset); f.write(blk.tobytes())
        name, lo, hi = t.name, row * ne0 + sb * 256, row * ne0 + sb * 256 + 255
        deq = dequantize(blk.reshape(rows, nb * 144), Q.Q4_K).reshape(-1)
        f.close()
        bad = np.flatnonzero(~np.isfinite(deq))
        if off is None:
            assert bad.size == 0, "finite scales gave non-finite values"
            print(name, "finite"); return
        assert bad.size == 256 and bad[0] == lo and bad[-1] == hi, (bad[:3], bad.size)
        print(f"{name} {lo}..{hi} {field}"); return
    else:
        name, row, b, off, val, field, qt = {
            "q4_1_d": ("blk.3.attn_q.weight", 5, 2, 0, NAN, "d", Q.Q4_1),
            "q4_1_m": ("blk.0.ffn_up.weight", 0, 0, 2, INF, "m", Q.Q4_1),
            "q8_0_d": ("token_embd.weight", 100, 7, 0, NAN, "d", Q.Q8_0)}[kind]
        t = tensor(r, name)
        assert t.tensor_type == qt
        ne0 = int(t.shape[0])
        bs = {Q.Q4_1: 20, Q.Q8_0: 34}[qt]
        row_bytes = ne0 // 32 * bs
        f.seek(t.data_offset + row * row_bytes + b * bs + off); f.write(np.uint16(val).tobytes())
        lo, hi = row * ne0 + b * 32, row * ne0 + b * 32 + 31
    f.close()
    # the oracle: the gguf package reads the patched bytes
    t = tensor(gguf.GGUFReader(out), name)
    deq = dequantize(t.data, t.tensor_type).reshape(-1) if t.tensor_type != Q.F32 else np.asarray(t.data).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(deq))
    assert bad.size and bad[0] == lo and bad[-1] == hi, (name, bad[:3], bad.size)
    print(f"{name} {lo}..{hi} {field}")


if __name__ == "__main__":
    main()
