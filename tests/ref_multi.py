#!/usr/bin/env python3
"""ref_multi.py: single adapters that compute by construction what a
composition of several computes, written from the adapters' tensors alone
(not from peftc's composition code), for tests/check_multi.sh:

  stack_lora A B OUT      stack(A,B) of two LoRA adapters: at each target
                          module the sum s_A B_A A_A + s_B B_B A_B, written as
                          one LoRA of rank r_A + r_B with alpha = r (scale 1):
                          A = [s_A A_A; s_B A_B], B = [B_A, B_B] (zeros where an
                          adapter does not target the module); B's head
  stack_seq P Q OUT       stack(P,Q) of two sequential bottleneck adapters at
                          the same site: one peftc "custom" adapter whose two
                          deltas at that site are P's then Q's (a site applies
                          its deltas in order, the second reading the first's
                          output); Q's head
  zero_layers A N OUT     A with the deltas of layers < N removed (LoRA B = 0):
                          what --drop-layers N must compute
  compare F1 F2 TOL [COLS]  per-line comparison of two predict outputs (TAB
                          fields; hex or decimal floats); COLS picks fields of
                          F1 (e.g. 3,4 = the 2nd output of a parallel block);
                          prints the max |diff| and exits 1 beyond TOL
"""
import json, os, re, shutil, sys

def load(d):
    from safetensors.torch import load_file
    return json.load(open(os.path.join(d, "adapter_config.json"))), load_file(os.path.join(d, "adapter_model.safetensors"))

def save(d, cfg, t):
    from safetensors.torch import save_file
    os.makedirs(d, exist_ok=True)
    json.dump(cfg, open(os.path.join(d, "adapter_config.json"), "w"), indent=2)
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(d, "adapter_model.safetensors"), metadata={"format": "pt"})

HEAD = ("classifier.", "score.", "pooler.")

def is_head(k):
    return any(h in k for h in HEAD) and "lora_" not in k and ".delta." not in k

def stack_lora(a, b, out):
    import torch
    ca, ta = load(a); cb, tb = load(b)
    sa, sb = ca["lora_alpha"] / ca["r"], cb["lora_alpha"] / cb["r"]
    ra, rb = ca["r"], cb["r"]
    mods = sorted({k[: -len(".lora_A.weight")] for t in (ta, tb) for k in t if k.endswith(".lora_A.weight")})
    t = {}
    for m in mods:
        ka, kb = m + ".lora_A.weight", m + ".lora_B.weight"
        ref = ta if ka in ta else tb
        i, o = ref[ka].shape[1], ref[kb].shape[0]
        A = torch.zeros(ra + rb, i); B = torch.zeros(o, ra + rb)
        if ka in ta: A[:ra] = sa * ta[ka]; B[:, :ra] = ta[kb]
        if ka in tb: A[ra:] = sb * tb[ka]; B[:, ra:] = tb[kb]
        t[ka], t[kb] = A, B
    for k, v in tb.items():
        if is_head(k): t[k] = v
    cfg = dict(cb)
    cfg["r"] = ra + rb
    cfg["lora_alpha"] = float(ra + rb)
    cfg["target_modules"] = sorted(set(ca["target_modules"]) | set(cb["target_modules"]))
    pc = dict(cb["peftc"])
    pc["lora_sites"] = sorted(set(ca["peftc"]["lora_sites"]) | set(cb["peftc"]["lora_sites"]))
    cfg["peftc"] = pc
    save(out, cfg, t)

def stack_seq(p, q, out):
    cp, tp = load(p); cq, tq = load(q)
    assert cp["peftc"]["deltas"] == cq["peftc"]["deltas"] and len(cp["peftc"]["deltas"]) == 1
    spec = cp["peftc"]["deltas"][0]
    t = {}
    for k, v in tp.items():
        if ".delta." in k: t[k] = v
    for k, v in tq.items():
        if ".delta." in k:
            k2 = re.sub(r"(\.delta\.[a-z]+\.[a-z]+)\.0\.", r"\1.1.", k)
            assert k2 != k, k
            t[k2] = v
        elif is_head(k): t[k] = v
    cfg = dict(cq)
    pc = dict(cq["peftc"]); pc["deltas"] = [spec, spec]; pc["method"] = "custom"
    cfg["peftc"] = pc
    save(out, cfg, t)

def zero_layers(a, n, out):
    cfg, t = load(a)
    for k in list(t):
        m = re.search(r"\.layer\.(\d+)\.", k)
        if m and int(m.group(1)) < n:
            if k.endswith("lora_B.weight") or re.search(r"\.delta\..*\.up(_bias)?$", k): t[k] = t[k] * 0
            elif re.search(r"ia3_l", k): t[k] = t[k] * 0 + 1
    save(out, cfg, t)

def compare(f1, f2, tol, cols=None):
    L1 = open(f1).read().splitlines(); L2 = open(f2).read().splitlines()
    if len(L1) != len(L2) or not L1:
        print(f"line counts {len(L1)} vs {len(L2)}"); return 1
    worst = 0.0
    for x, y in zip(L1, L2):
        a = x.split("\t"); b = y.split("\t")
        if cols: a = [a[c] for c in cols]
        a = [v.split("=")[-1] for v in a]; b = [v.split("=")[-1] for v in b]
        if len(a) != len(b) or a[0] != b[0]:
            print(f"labels differ: {x!r} vs {y!r}"); return 1
        f = lambda s: float.fromhex(s) if "0x" in s else float(s)
        for u, v in zip(a[1:], b[1:]): worst = max(worst, abs(f(u) - f(v)))
    print(f"max |diff| {worst:.3g} over {len(L1)} lines")
    return 0 if worst <= tol else 1

if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "stack_lora": stack_lora(*sys.argv[2:5])
    elif cmd == "stack_seq": stack_seq(*sys.argv[2:5])
    elif cmd == "zero_layers": zero_layers(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif cmd == "compare":
        cols = [int(c) for c in sys.argv[5].split(",")] if len(sys.argv) > 5 else None
        sys.exit(compare(sys.argv[2], sys.argv[3], float(sys.argv[4]), cols))
    else: sys.exit(f"unknown mode {cmd}")
