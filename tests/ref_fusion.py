#!/usr/bin/env python3
"""ref_fusion.py: an independent float64 PyTorch oracle for AdapterFusion
(peftc fuse), for tests/check_fusion.sh.

The fusion is written from AdapterHub's BertFusion under its default
"dynamic" config (adapters 1.x, methods/modeling.py BertFusion.forward and
methods/bottleneck.py compose_fuse), not from peftc's code: at the FFN
output site of every layer, h0 the sub-layer output (what the adapters
read), u_k the k-th adapter's output (its "up", what it adds to h0):
    q = h0 Wq^T + bq;  k_k = u_k Wk^T + bk;  v_k = u_k Wv^T (value_before_softmax)
    p = softmax((q . k_k) / T);  h = h0 + sum_k p_k v_k   (residual_before off)
and the regulariser 0.01 * sum_l ||I - Wv_l||^2 (get_fusion_regularization_loss)
added to the loss. The model is ref_methods.py's tiny random BERT (hidden 32,
2 layers, dropout 0) with its own written-out forward.

  gen OUTDIR            the model, the data, three random adapters in peftc's
                        adapter format (two sequential ReLU bottlenecks of
                        ranks 2 and 3, one parallel one composed with scale 4),
                        random non-identity fusion parameters and head per
                        case, and the reference (loss, logits, every fusion
                        and head tensor's gradient); checks itself by central
                        differences
  compare OUTDIR DRIVER runs DRIVER (build/tests/methods_grad) per case with
                        method fusion and compares as ref_methods.py does

Output: "ok   - ..." / "FAIL - ..." / "# ..." lines, then "## <passed> <failed>".
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

import ref_methods as rm  # noqa: E402
import ref_train as rt  # noqa: E402
from ref_train import BERT, C, HEAD, L, Tally  # noqa: E402

REG = 0.01
# the fused adapters: (name, insert, act, r, compose, s)
ADAPTERS = [("a", "sequential", "relu", 2, "add", 1.0), ("b", "sequential", "relu", 3, "add", 1.0),
            ("c", "parallel", "relu", 2, "scale", 4.0)]
# cases: (id, data, T, regulariser)
CASES = [("fusion", "single", 1.0, True), ("fusion-T2.5", "single", 2.5, False), ("fusion-pairs", "pairs", 1.0, True)]


def adapter_spec(ins, act, r, comp, s):
    c = "add" if comp == "add" else f"scale:{s:g}"
    return f"site=ffn.out,insert={ins},r={r},act={act},compose={c},bias=1,dropout=0,init=bert"


def write_adapters(out, rng):
    """Each adapter as peftc saves one (adapter_config.json + tensors), random weights."""
    ad = {}
    for name, ins, act, r, comp, s in ADAPTERS:
        d = os.path.join(out, "adapters", name)
        os.makedirs(d, exist_ok=True)
        t = {}
        for l in range(L):
            pre = f"{BERT}encoder.layer.{l}.delta.ffn.out.0"
            t[pre + ".down"] = (0.5 * rng.standard_normal((r, C))).astype(np.float32)
            t[pre + ".down_bias"] = (0.3 * rng.standard_normal(r)).astype(np.float32)
            t[pre + ".up"] = (0.5 * rng.standard_normal((C, r))).astype(np.float32)
            t[pre + ".up_bias"] = (0.1 * rng.standard_normal(C)).astype(np.float32)
        t[HEAD + "classifier.weight"] = (0.1 * rng.standard_normal((2, C))).astype(np.float32)
        t[HEAD + "classifier.bias"] = np.zeros(2, np.float32)
        save_file(t, os.path.join(d, "adapter_model.safetensors"), metadata={"format": "pt"})
        cfg = {"base_model_name_or_path": os.path.join(out, "model"), "peft_type": "PEFTC", "task_type": "SEQ_CLS",
               "peftc": {"method": "custom", "base": "none", "train_norms": False, "labels": ["0", "1"],
                         "deltas": [adapter_spec(ins, act, r, comp, s)], "max_len": 48, "task": "seq-cls"}}
        json.dump(cfg, open(os.path.join(d, "adapter_config.json"), "w"), indent=2)
        ad[name] = {k: torch.from_numpy(v.astype(np.float64)) for k, v in t.items()}
    return ad


def spec(out):
    return ",".join(f"{n}={os.path.join(out, 'adapters', n)}" for n, *_ in ADAPTERS)


def fusion_init(rng):
    p = {}
    for l in range(L):
        pre = f"fusion.layer.{l}."
        # scores of order 1 so the softmax is far from uniform; W_V off the identity
        p[pre + "query.weight"] = (0.2 * rng.standard_normal((C, C))).astype(np.float32)
        p[pre + "query.bias"] = (0.2 * rng.standard_normal(C)).astype(np.float32)
        p[pre + "key.weight"] = (0.2 * rng.standard_normal((C, C))).astype(np.float32)
        p[pre + "key.bias"] = (0.2 * rng.standard_normal(C)).astype(np.float32)
        p[pre + "value.weight"] = (np.eye(C) + 0.2 * rng.standard_normal((C, C))).astype(np.float32)
    p[HEAD + "classifier.weight"] = (0.3 * rng.standard_normal((2, C))).astype(np.float32)
    # off balance by 0.5 between the classes: with a zero-mean bias the mean of
    # (softmax - onehot) can land near zero by cancellation (3.8e-4 from terms of
    # order 0.5 at T = 2.5, seed 501), and a sum with condition number ~1300 cannot
    # hold a 1e-4 relative tolerance in fp32; with it the bias gradient is a
    # well-conditioned quantity like every other tensor's
    p[HEAD + "classifier.bias"] = (np.array([0.25, -0.25]) + 0.1 * rng.standard_normal(2)).astype(np.float32)
    return p


class FusionModel(rm.Model):
    """ref_methods' BERT with AdapterFusion at ffn.out."""

    def __init__(self, case, base, p, adapters, T):
        super().__init__(case, base, p)
        self.adapters, self.T = adapters, T
        self.probs = []

    def site(self, l, site, x, h):
        if site != "ffn.out":
            return h
        h0 = h
        ups = []
        for name, ins, act, r, comp, s in ADAPTERS:
            t = self.adapters[name]
            pre = f"{BERT}encoder.layer.{l}.delta.ffn.out.0"
            src = x if ins == "parallel" else h0
            a = rm.ACTS[act](src @ t[pre + ".down"].T + t[pre + ".down_bias"])
            u = a @ t[pre + ".up"].T + t[pre + ".up_bias"]
            ups.append(u if comp == "add" else s * u)
        U = torch.stack(ups, dim=2)                                        # (B, T, n, C)
        p = self.p
        pre = f"fusion.layer.{l}."
        q = h0 @ p[pre + "query.weight"].T + p[pre + "query.bias"]          # (B, T, C)
        k = U @ p[pre + "key.weight"].T + p[pre + "key.bias"]               # (B, T, n, C)
        v = U @ p[pre + "value.weight"].T                                   # value_before_softmax
        scores = torch.squeeze(torch.matmul(q.unsqueeze(2), k.transpose(-2, -1)), dim=2)   # (B, T, n)
        probs = torch.softmax(scores / self.T, dim=-1)
        self.probs.append(probs.detach())
        ctx = torch.squeeze(torch.matmul(probs.unsqueeze(2), v), dim=2)
        return ctx + h0                                                     # residual after


def reference(out, cid, data, T, reg, base, adapters, init):
    case = rm.Case(cid, "fusion", data=data)
    ids, tts, mask, y = rm.encode(case, out)
    names = sorted(init)

    def run(p):
        m = FusionModel(case, base, p, adapters, T)
        loss, z = m.loss(ids, tts, mask, y)
        if reg:
            for l in range(L):
                loss = loss + REG * ((torch.eye(C, dtype=torch.float64) - p[f"fusion.layer.{l}.value.weight"]) ** 2).sum()
        return loss, z, m

    p = {n: torch.from_numpy(init[n].astype(np.float64)).requires_grad_(True) for n in names}
    loss, z, m = run(p)
    grads = torch.autograd.grad(loss, [p[n] for n in names], allow_unused=True)
    res = {"loss": np.array([loss.item()]), "logits": z.detach().numpy(), "input_ids": ids.numpy(),
           "token_type_ids": tts.numpy(), "lens": mask.sum(1).numpy()}
    unused = [n for n, g in zip(names, grads) if g is None]
    for n, g in zip(names, grads):
        res["grad/" + n] = (g if g is not None else torch.zeros_like(p[n])).detach().numpy()
    save_file({k: np.ascontiguousarray(v) for k, v in res.items()}, os.path.join(out, f"ref_{cid}.safetensors"))
    # central differences on a few elements
    G = max(float(np.abs(res["grad/" + n]).max()) for n in names)
    g = np.random.default_rng(7)
    worst = 0.0
    for k in range(6):
        n = names[int(g.integers(len(names)))]
        gr = res["grad/" + n].reshape(-1)
        j = int(np.abs(gr).argmax()) if k % 2 == 0 else int(g.integers(gr.size))
        vals = []
        for sgn in (1, -1):
            q = {mm: torch.from_numpy(init[mm].astype(np.float64)) for mm in names}
            q[n] = q[n].clone()
            q[n].view(-1)[j] += sgn * 1e-6
            with torch.no_grad():
                vals.append(run(q)[0].item())
        worst = max(worst, abs((vals[0] - vals[1]) / 2e-6 - gr[j]) / G)
    pr = torch.cat([x.reshape(-1, len(ADAPTERS)) for x in m.probs])
    return res, unused, worst, float(pr.max()), float(pr.min())


def cmd_gen(out):
    tl = Tally()
    os.makedirs(out, exist_ok=True)
    rt.write_model(out, np.random.default_rng(20240607))
    with open(os.path.join(out, "train.tsv"), "w") as f:
        f.write("sentence\tlabel\n")
        for s, y in rt.SENTENCES:
            f.write(f"{s}\t{y}\n")
    with open(os.path.join(out, "pairs.tsv"), "w") as f:
        f.write("sentence1\tsentence2\tlabel\n")
        for a, b, y in rm.PAIRS:
            f.write(f"{a}\t{b}\t{y}\n")
    base = rt.load64(os.path.join(out, "model", "model.safetensors"))
    adapters = write_adapters(out, np.random.default_rng(99))
    with open(os.path.join(out, "spec.txt"), "w") as f:
        f.write(spec(out))
    for i, (cid, data, T, reg) in enumerate(CASES):
        init = fusion_init(np.random.default_rng(500 + i))
        save_file(init, os.path.join(out, f"init_{cid}.safetensors"), metadata={"format": "pt"})
        res, unused, fd, pmax, pmin = reference(out, cid, data, T, reg, base, adapters, init)
        tl.check(fd < 1e-7 and not unused,
                 f"oracle {cid}: autograd vs central differences, max err {fd:.2e} of the largest gradient (< 1e-7); "
                 f"all {len(init)} tensors on the loss's path")
        tl.check(pmax > 0.6 and pmin < 0.1,
                 f"oracle {cid}: the fusion weights are far from uniform (max {pmax:.3f}, min {pmin:.3f}): the test can tell adapters apart")
        print(f"# oracle {cid}: T {T}, regulariser {'on' if reg else 'off'}, loss {res['loss'][0]:.8f}")
    return tl.finish()


def cmd_compare(out, driver):
    tl = Tally()
    sp = open(os.path.join(out, "spec.txt")).read().strip()
    for cid, data, T, reg in CASES:
        opts = ["--adapters", sp, "--fusion-T", repr(T)] + (["--fusion-reg"] if reg else [])
        rm.compare_case(tl, out, driver, rm.Case(cid, "fusion", opts=opts, data=data))
    return tl.finish()


def main():
    a = sys.argv[1:]
    if len(a) == 2 and a[0] == "gen":
        return cmd_gen(a[1])
    if len(a) == 3 and a[0] == "compare":
        return cmd_compare(a[1], a[2])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
