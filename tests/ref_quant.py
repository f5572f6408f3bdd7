"""ref_quant.py: tests/check_quant.sh's Python side, with the PyPI gguf
package as the oracle.

  ref_quant.py gen MODEL.gguf DIR    writes the cases
  ref_quant.py cmp DIR               compares the C driver's outputs, prints ok/FAIL lines

Cases (DIR/<set>.idx lines "type values in_offset out_offset", blobs
DIR/<set>.in, expected DIR/<set>.want):
  model    every tensor of the GGUF file (at most 48 rows of each, spread over
           the tensor), dequantised by gguf.quants.dequantize;
  requant  real weights (the file's tensors dequantised to fp32, and synthetic
           rows with zeros, outliers and rounding ties) quantised by
           gguf.quants.quantize to every type it can quantise; dequantised by
           gguf (set "requant"), and the fp32 inputs themselves for the C
           quantiser, whose bytes must equal gguf's (set "quant");
  random   random bytes as blocks of every supported quant type (any byte
           pattern is a block) with finite fp16 scales, including the
           K-quants gguf-py cannot quantise; Q8_K (which gguf-py cannot
           dequantise either) against d * q in numpy.
Expected: the same fp32 bits (both sides do the same fp32 operations in the
same order, and numpy's fp16 -> fp32 is exact)."""
import os
import sys

import numpy as np
import gguf
from gguf.quants import dequantize, quantize

T = gguf.GGMLQuantizationType
SIZES = gguf.GGML_QUANT_SIZES
DEQ_TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_K]
QUANT_TYPES = [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]


class Set:
    def __init__(self, d, name):
        self.d, self.name = d, name
        self.idx, self.inp, self.want = [], [], []
        self.ino = self.outo = 0

    def add(self, t, raw, want, label):
        raw = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
        want = np.ascontiguousarray(want).view(np.uint8).reshape(-1)
        n = int(np.prod(np.asarray(label[1])))
        self.idx.append("%d %d %d %d %s\n" % (int(t), n, self.ino, self.outo, label[0]))
        self.inp.append(raw)
        self.want.append(want)
        self.ino += raw.size
        self.outo += want.size

    def write(self):
        with open(os.path.join(self.d, self.name + ".idx"), "w") as f:
            f.writelines(l.split(" ", 4)[0] + " " + " ".join(l.split(" ")[1:4]) + "\n" for l in self.idx)
        with open(os.path.join(self.d, self.name + ".labels"), "w") as f:
            f.writelines(l.split(" ", 4)[4] for l in self.idx)
        np.concatenate(self.inp).tofile(os.path.join(self.d, self.name + ".in"))
        np.concatenate(self.want).tofile(os.path.join(self.d, self.name + ".want"))


def rows_of(t):
    """(rows, row bytes) of a tensor's raw data"""
    d = t.data.view(np.uint8) if t.tensor_type not in (T.F32,) else t.data.view(np.uint8)
    return d.reshape(d.shape[0], -1) if d.ndim > 1 else d.reshape(1, -1)


def sample_rows(a, k=48):
    if a.shape[0] <= k:
        return a
    return a[np.linspace(0, a.shape[0] - 1, k).astype(np.int64)]


def gen(model, d):
    r = gguf.GGUFReader(model)
    rng = np.random.default_rng(1234)
    m = Set(d, "model")
    fp32 = []
    for t in r.tensors:
        raw = sample_rows(rows_of(t))
        vals = dequantize(raw, t.tensor_type).astype(np.float32)
        m.add(t.tensor_type, raw, vals, (t.name + " " + t.tensor_type.name, vals.shape))
        if len(fp32) < 40 and vals.shape[-1] % 256 == 0 or (vals.shape[-1] % 32 == 0 and len(fp32) < 40):
            fp32.append((t.name, vals.reshape(-1, vals.shape[-1])[:16]))
    m.write()
    # and synthetic rows: heavy tails, an all-zero block, constant blocks,
    # values on the quantisers' rounding ties (multiples of 1/2 of a step)
    x = rng.standard_normal((16, 1024)).astype(np.float32) * np.float32(0.02)
    x[::3] *= rng.standard_cauchy((6, 1024)).astype(np.float32).clip(-50, 50)
    x[0, :256] = 0
    x[1, :32] = 0.125
    x[2] = (rng.integers(-254, 255, 1024) / np.float32(2 * 127)).astype(np.float32)
    x[3] = (rng.integers(-30, 31, 1024) / np.float32(4)).astype(np.float32)
    fp32.append(("synthetic rows", x))
    rq, qq = Set(d, "requant"), Set(d, "quant")
    for name, v in fp32:
        for qt in QUANT_TYPES:
            blk = SIZES[qt][0]
            if v.shape[-1] % blk:
                continue
            q = quantize(v, qt)
            back = dequantize(q, qt).astype(np.float32)
            label = (name + " as " + qt.name, v.shape)
            rq.add(qt, q, back, label)
            qq.add(qt, v, q, label)
    rq.write()
    qq.write()
    rs = Set(d, "random")
    for qt in DEQ_TYPES:
        blk, nbytes = SIZES[qt]
        nb = 4096 if blk == 32 else 512
        if qt in (T.F32, T.F16, T.BF16):
            raw = rng.integers(0, 256, size=(64, 1024), dtype=np.uint8)
            if qt == T.F32:
                raw = rng.standard_normal((64, 256)).astype(np.float32).view(np.uint8)
            if qt == T.F16:   # no inf / NaN patterns: the exponent field below 31
                h = raw.view(np.uint16)
                h &= np.uint16(0xFBFF)
            if qt == T.BF16:
                h = raw.view(np.uint16)
                h &= np.uint16(0xBFFF)   # exponent below 255
            raw = raw.reshape(1, -1)
        else:
            raw = rng.integers(0, 256, size=(nb, nbytes), dtype=np.uint8)
            # finite fp16 scales: the exponent field (bits 10..14) below 31
            def fix16(col):
                h = raw[:, col:col + 2].copy().view(np.uint16)
                h &= np.uint16(0xBFFF)
                raw[:, col:col + 2] = h.view(np.uint8)
            if qt == T.Q6_K:
                fix16(208)
            elif qt == T.Q8_K:   # fp32 d: finite
                f = raw[:, 0:4].copy().view(np.uint32)
                f &= np.uint32(0xBFFFFFFF)
                raw[:, 0:4] = f.view(np.uint8)
            else:
                fix16(0)
                if qt in (T.Q4_1, T.Q5_1, T.Q4_K, T.Q5_K):
                    fix16(2)
            raw = raw.reshape(1, -1)
        if qt == T.Q8_K:
            b = raw.reshape(-1, nbytes)
            dd = b[:, 0:4].copy().view(np.float32)
            q = b[:, 4:260].view(np.int8).astype(np.float32)
            want = (dd * q).astype(np.float32).reshape(1, -1)
        else:
            want = dequantize(raw, qt).astype(np.float32).reshape(1, -1)
        rs.add(qt, raw, want, ("random " + qt.name, want.shape))
    rs.write()


def cmp(d):
    fails = 0
    for name in ("model", "requant", "random", "quant"):
        want = np.fromfile(os.path.join(d, name + ".want"), dtype=np.uint8)
        got = np.fromfile(os.path.join(d, name + ".got"), dtype=np.uint8)
        idx = [l.split() for l in open(os.path.join(d, name + ".idx"))]
        labels = [l.rstrip("\n") for l in open(os.path.join(d, name + ".labels"))]
        bytype = {}
        for (t, n, io, oo), lab in zip(idx, labels):
            t, n, oo = int(t), int(n), int(oo)
            nb = n * 4 if name != "quant" else n // SIZES[T(t)][0] * SIZES[T(t)][1]
            w, g = want[oo:oo + nb], got[oo:oo + nb]
            ok = g.size == w.size and np.array_equal(w, g)
            s = bytype.setdefault(T(t).name, [0, 0, 0, None])
            s[0] += 1
            s[1] += n
            if not ok:
                s[2] += 1
                if s[3] is None:
                    if name != "quant" and g.size == w.size:
                        wf, gf = w.view(np.float32), g.view(np.float32)
                        i = int(np.argmax(wf.view(np.uint32) != gf.view(np.uint32)))
                        s[3] = "%s: value %d want %r got %r" % (lab, i, wf[i], gf[i])
                    else:
                        s[3] = "%s: bytes differ" % lab
        what = {"model": "dequantise the model's tensors", "requant": "dequantise gguf-quantised real weights",
                "random": "dequantise random blocks", "quant": "quantise real weights: same bytes as gguf"}[name]
        for tn, (c, n, bad, first) in sorted(bytype.items()):
            if bad:
                fails += 1
                print("FAIL - %s, %s: %d of %d cases differ; first: %s" % (what, tn, bad, c, first))
            else:
                print("ok   - %s, %s: %d cases, %d values bit for bit" % (what, tn, c, n))
    return fails


if __name__ == "__main__":
    if sys.argv[1] == "gen":
        gen(sys.argv[2], sys.argv[3])
    else:
        sys.exit(1 if cmp(sys.argv[2]) else 0)
