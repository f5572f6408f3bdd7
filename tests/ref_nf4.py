"""ref_nf4.py: the oracle of tests/check_nf4.sh: bitsandbytes' own
quantize_4bit (NF4, blocks of 64, with and without double quantisation) on
real MiniLM weights, dequantised SmolLM2 GGUF weights and random tensors with
awkward sizes; peftc's bytes (tests/nf4_driver.c) must equal bitsandbytes'.

  ref_nf4.py gen MODEL_DIR GGUF TMP   writes TMP/*.f32 and TMP/list
  ref_nf4.py cmp TMP                  prints ok/FAIL lines and "## p f"
"""
import os, sys
import numpy as np

def cases(model_dir, gguf_path):
    from safetensors.numpy import load_file
    st = load_file(os.path.join(model_dir, "model.safetensors"))
    out = []
    for name in ["encoder.layer.0.attention.self.query.weight", "encoder.layer.3.intermediate.dense.weight",
                 "encoder.layer.5.output.dense.weight"]:
        key = name if name in st else "bert." + name
        out.append(("minilm." + name, st[key].astype(np.float32)))
    if gguf_path and os.path.exists(gguf_path):
        import gguf
        r = gguf.GGUFReader(gguf_path)
        want = {"blk.0.attn_q.weight", "blk.7.ffn_down.weight", "blk.29.ffn_gate.weight"}
        for t in r.tensors:
            if t.name in want:
                w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
                out.append(("smollm2." + t.name, w.reshape(-1, w.shape[-1])))
    rng = np.random.default_rng(7)
    # awkward sizes: a short last block, an odd count, a short last 256-group,
    # zeros (absmax 0), values on NF4 midpoints, one huge outlier
    out.append(("random.odd", rng.standard_normal((7, 45)).astype(np.float32)))
    z = rng.standard_normal((33, 64)).astype(np.float32); z[3] = 0
    out.append(("random.zero_block", z))
    code = np.array(nf4_code(), dtype=np.float32)
    mid = ((code[:-1] + code[1:]) / np.float32(2)).astype(np.float32)
    m = rng.choice(mid, size=(8, 64)).astype(np.float32); m[:, 0] = 1.0
    out.append(("random.midpoints", m))
    o = (rng.standard_normal((300, 128)) * 0.02).astype(np.float32); o[5, 7] = 30.0
    out.append(("random.outlier", o))
    # 65536 blocks: above torch's 32768-element grain its float32 mean (the
    # offset) is split between threads; cmp runs torch on one thread, whose
    # order peftc reproduces
    out.append(("random.4096x1024", (rng.standard_normal((4096, 1024)) * 0.02).astype(np.float32)))
    return out

def nf4_code():
    from bitsandbytes.functional import get_4bit_type
    return get_4bit_type("nf4", device="cpu").numpy().tolist()

def gen(model_dir, gguf_path, tmp):
    lines = []
    for name, w in cases(model_dir, gguf_path):
        for dq in (0, 1):
            base = os.path.join(tmp, "%s.dq%d" % (name, dq))
            w.tofile(base + ".f32")
            lines.append("%s.f32 %d %d %d %s" % (base, w.shape[0], w.shape[1], dq, base))
    with open(os.path.join(tmp, "list"), "w") as f:
        f.write("\n".join(lines) + "\n")

def cmp(tmp):
    import torch
    import bitsandbytes.functional as F
    torch.set_num_threads(1)   # the offset's summation order (see cases)
    passed = failed = 0
    def check(ok, msg):
        nonlocal passed, failed
        print(("ok   - " if ok else "FAIL - ") + msg)
        if ok: passed += 1
        else: failed += 1
    from bitsandbytes.functional import create_dynamic_map
    # the tables peftc carries: nf4_driver writes nothing of them, so check the
    # dequantisation of the codes (which uses both) instead, below
    for line in open(os.path.join(tmp, "list")):
        src, rows, cols, dq, base = line.split()
        rows, cols, dq = int(rows), int(cols), int(dq)
        w = torch.from_numpy(np.fromfile(src, dtype=np.float32).reshape(rows, cols))
        q, s = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=bool(dq))
        name = os.path.basename(base)
        got = np.fromfile(base + ".codes", dtype=np.uint8)
        ref = q.numpy().reshape(-1)
        check(got.shape == ref.shape and np.array_equal(got, ref),
              "%s: %d code bytes equal bitsandbytes'%s" % (name, ref.size, "" if got.shape != ref.shape else
                                                            " (%d differ)" % int((got != ref).sum())))
        if dq:
            aq = np.fromfile(base + ".absq", dtype=np.uint8)
            a2 = np.fromfile(base + ".absmax2", dtype=np.float32)
            off = np.fromfile(base + ".offset", dtype=np.float32)
            check(np.array_equal(aq, s.absmax.numpy()), "%s: %d 8-bit absmax equal (%d differ)" %
                  (name, aq.size, int((aq != s.absmax.numpy()).sum()) if aq.shape == s.absmax.shape else -1))
            check(np.array_equal(a2, s.state2.absmax.numpy()), "%s: %d second-level absmax equal" % (name, a2.size))
            check(off.tobytes() == np.float32(s.offset.item()).tobytes(),
                  "%s: offset %r vs %r" % (name, float(off[0]), float(s.offset.item())))
        else:
            am = np.fromfile(base + ".absmax", dtype=np.float32)
            check(np.array_equal(am, s.absmax.numpy()), "%s: %d absmax equal" % (name, am.size))
        deq = np.fromfile(base + ".deq", dtype=np.float32)
        ref = F.dequantize_4bit(q, s).numpy().reshape(-1)
        nd = int((deq.view(np.uint32) != ref.view(np.uint32)).sum())
        check(nd == 0, "%s: dequantised values bit for bit bitsandbytes' dequantize_4bit (%d differ)" % (name, nd))
    print("## %d %d" % (passed, failed))

if __name__ == "__main__":
    if sys.argv[1] == "gen": gen(sys.argv[2], sys.argv[3], sys.argv[4])
    else: cmp(sys.argv[2])
