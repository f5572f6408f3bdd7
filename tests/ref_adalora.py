#!/usr/bin/env python3
"""ref_adalora.py: HF PEFT's own AdaLoRA (peft.AdaLoraModel, its RankAllocator)
as the oracle for `peftc train --method adalora`.

The real PEFT model, in float64 (AdaLoRA's layers allow it): the tiny random
BERT of tests/ref_train.py wrapped by get_peft_model(AdaLoraConfig(...)),
the same init adapter loaded into both, then PEFT's documented loop for
STEPS steps on the whole training set (one batch per step):
    loss = model(**batch).loss          # AdaLoraModel.forward adds orth_reg_weight * regulariser
    loss.backward()
    clip_grad_norm_(params, CLIP)       # peftc's trainer clips as HF Trainer does
    optimizer.step()                    # torch.optim.AdamW, no decay on biases
    model.base_model.update_and_allocate(global_step)   # global_step = 0, 1, ...
    optimizer.zero_grad()
After every step it records every trainable tensor, RankAllocator's
exp_avg_ipt / exp_avg_unc, the budget, the triplet scores and the rank
pattern; at the end PEFT's save_pretrained (the config PEFT writes).

Modes (run from the repo root):
  gen OUT               the model, train.tsv, OUT/init (the init adapter) and
                        OUT/ref.safetensors + OUT/ref.json (per-step records)
  load OUT RUN          PEFT loads RUN's adapter; its loss equals RUN/metrics.json's
  compare OUT RUNS LOG  RUNS/K holds `peftc train --stop-after K` (K = 1..STEPS,
                        STEPS without --stop-after): its checkpoint (parameters,
                        EMAs, masks, budget) after each step against PEFT's;
                        LOG: the full run's log (losses, grad norms); the full
                        run's adapter: its config against PEFT's, loaded by
                        peft.PeftModel.from_pretrained, logits and loss against
                        peftc's own (metrics.json) and the oracle's
Output: "ok   - ..." / "FAIL - ..." / "# ..." lines, then "## <passed> <failed>".
"""
import json
import os
import re
import sys
import warnings

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

import ref_train as R  # noqa: E402  (the tiny model, the sentences, HF WordPiece ids)

torch.set_num_threads(1)

# the run (check_adalora.sh passes the same to peftc)
INIT_R, TARGET_R, TINIT, TFINAL, DELTA_T, STEPS = 4, 2, 3, 5, 2, 20
ALPHA, ORTH, BETA1, BETA2 = 8.0, 0.5, 0.85, 0.85
LR, WD, CLIP = 1e-2, 0.01, 1.0
TARGETS = ("query", "value")
HEAD = "base_model.model."

# Tolerances: peftc runs in float32, the oracle in float64.
TOL_PARAM = 2e-5   # per tensor, every step: max |c - ref| / max |ref| (measured 1.0e-6)
TOL_EMA = 1e-4     # exp_avg_ipt, exp_avg_unc: products |p g| of float32 gradients, per tensor (measured 3.3e-6)
TOL_LOSS = 1e-4    # the log prints 4 decimals
TOL_NORM = 1e-3    # the log prints 3 decimals
TOL_LOGITS = 1e-5  # PEFT-loaded (float32) vs the same adapter in peftc: same weights
TOL_LOGITS_TRAJ = 2e-5  # vs the float64 oracle after STEPS steps (measured 6.8e-7)


class Tally:
    def __init__(self):
        self.p = self.f = 0

    def check(self, cond, msg):
        print(("ok   - " if cond else "FAIL - ") + msg)
        if cond:
            self.p += 1
        else:
            self.f += 1

    def finish(self):
        print(f"## {self.p} {self.f}")
        return 0 if self.f == 0 else 1


def module_names():
    return [f"bert.encoder.layer.{l}.attention.self.{t}" for l in range(R.L) for t in TARGETS]


def peftc_names():
    """peftc's trainable tensors in its declaration order (the checkpoint's layout)."""
    n = []
    for m in module_names():
        n += [f"{HEAD}{m}.lora_{x}" for x in "ABE"]
    return n + [HEAD + "classifier.weight", HEAD + "classifier.bias"]


def shapes():
    s = {}
    for m in module_names():
        s[f"{HEAD}{m}.lora_A"] = (INIT_R, R.C)
        s[f"{HEAD}{m}.lora_B"] = (R.C, INIT_R)
        s[f"{HEAD}{m}.lora_E"] = (INIT_R, 1)
    s[HEAD + "classifier.weight"] = (2, R.C)
    s[HEAD + "classifier.bias"] = (2,)
    return s


def layout():
    """name -> (offset, numel): params_add's 16-float-aligned offsets."""
    off, out = 0, {}
    for n in peftc_names():
        k = int(np.prod(shapes()[n]))
        out[n] = (off, k)
        off += (k + 15) & ~15
    return out, off


def peft_name(n):
    """peftc / saved name -> PEFT's parameter name in the PeftModel."""
    if n.endswith("classifier.weight") or n.endswith("classifier.bias"):
        return n.replace("classifier.", "classifier.modules_to_save.default.")
    return n + ".default"


def config():
    from peft import AdaLoraConfig
    return AdaLoraConfig(task_type="SEQ_CLS", init_r=INIT_R, target_r=TARGET_R, tinit=TINIT, tfinal=TFINAL,
                         deltaT=DELTA_T, beta1=BETA1, beta2=BETA2, orth_reg_weight=ORTH, total_step=STEPS,
                         lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(TARGETS))


def base_model(out, dtype):
    from transformers import BertForSequenceClassification
    from transformers.utils import logging
    logging.set_verbosity_error()
    m = BertForSequenceClassification.from_pretrained(os.path.join(out, "model"), num_labels=2)
    return m.to(dtype).eval()


def peft_model(out):
    from peft import get_peft_model
    pm = get_peft_model(base_model(out, torch.float64), config())
    init = load_file(os.path.join(out, "init", "adapter_model.safetensors"))
    params = dict(pm.named_parameters())
    with torch.no_grad():
        for n, v in init.items():
            params[peft_name(n)].copy_(torch.from_numpy(v.astype(np.float64)))
    return pm


def scores(ra, model):
    """RankAllocator.mask_to_budget's triplet scores (module order), recomputed
    from its own _element_score, to report the margin at the threshold."""
    out = []
    p = dict(model.named_parameters())
    for m in module_names():
        a = ra._element_score(f"{m}.lora_A.default").mean(dim=1)
        b = ra._element_score(f"{m}.lora_B.default").mean(dim=0)
        e = ra._element_score(f"{m}.lora_E.default").view(-1)
        out.append(e + (a + b))
        assert f"{m}.lora_E.default" in p
    return torch.cat(out)


def cmd_gen(out):
    tl = Tally()
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(20241202)
    R.write_model(out, rng)
    with open(os.path.join(out, "train.tsv"), "w") as f:
        f.write("sentence\tlabel\n")
        for s, y in R.SENTENCES:
            f.write(f"{s}\t{y}\n")
    # the init adapter: non-zero E (PEFT's zero E would leave A and B without
    # gradient in the first step), A and B far from orthonormal (the regulariser works)
    d = os.path.join(out, "init")
    os.makedirs(d, exist_ok=True)
    t = {}
    for n, sh in shapes().items():
        s = 0.3 if n.endswith("lora_E") else 0.2 if "lora_" in n else 0.3
        t[n] = (rng.standard_normal(sh) * s).astype(np.float32)
    save_file(t, os.path.join(d, "adapter_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "ADALORA", "peftc": {"method": "adalora", "labels": ["0", "1"], "max_len": R.MAX_LEN}}, f)

    ids, mask, tts, y = R.encode_batch(out)
    pm = peft_model(out)
    ra = pm.base_model.rankallocator
    names = peftc_names()
    params = dict(pm.named_parameters())
    train = [params[peft_name(n)] for n in names]
    # PEFT 0.21.2 leaves ranknum (r, "deterministic, not saved") with requires_grad=True after moving it to
    # the base layer's device; an optimizer over every requires_grad tensor would train it and the saved
    # adapter (without ranknum) would not be the trained model. The oracle, like peftc, keeps it at init_r.
    rn = [n for n, p in pm.named_parameters() if p.requires_grad and ".ranknum." in n]
    print(f"# PEFT {__import__('peft').__version__}: {len(rn)} ranknum tensors have requires_grad=True; kept out of the "
          f"optimizer (fixed at init_r = {INIT_R}, as PEFT documents and saves them)")
    others = sum(p.requires_grad for n, p in pm.named_parameters() if ".ranknum." not in n)
    tl.check(all(p.requires_grad for p in train) and others == len(names),
             f"PEFT trains exactly the {len(names)} tensors peftc does (ranknum aside)")
    tl.check(ra.init_bgt == INIT_R * len(module_names()) and ra.target_bgt == TARGET_R * len(module_names()),
             f"PEFT's budget: init {ra.init_bgt}, target {ra.target_bgt}")
    groups = [{"params": [params[peft_name(n)] for n in names if not n.endswith("bias")], "weight_decay": WD},
              {"params": [params[peft_name(n)] for n in names if n.endswith("bias")], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.999), eps=1e-8)
    res, meta = {}, {"steps": []}
    # the scores RankAllocator masks by, captured at each allocation (the margin at its threshold)
    captured = {}
    orig_mask = ra.mask_to_budget

    def mask_to_budget(model, budget):
        captured["scores"], captured["budget"] = scores(ra, model), budget
        return orig_mask(model, budget)
    ra.mask_to_budget = mask_to_budget
    pm.train()
    for step in range(STEPS):
        o = pm(input_ids=ids, attention_mask=mask, token_type_ids=tts, labels=y)
        o.loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(train, CLIP))
        opt.step()
        budget, _ = ra.budget_schedule(step)
        captured.clear()
        pm.base_model.update_and_allocate(step)
        opt.zero_grad()
        k = step + 1
        for n in names:
            res[f"step{k}/{n}"] = params[peft_name(n)].detach().numpy().copy()
            if "lora_" in n:
                pn = peft_name(n)[len(HEAD):]
                z = np.zeros(shapes()[n])
                res[f"step{k}/ipt/{n}"] = ra.exp_avg_ipt[pn].numpy().copy() if pn in ra.exp_avg_ipt else z
                res[f"step{k}/unc/{n}"] = ra.exp_avg_unc[pn].numpy().copy() if pn in ra.exp_avg_unc else z
        rp = pm.peft_config["default"].rank_pattern
        keep = None
        if rp is not None:
            keep = []
            for m in module_names():
                keep += [bool(b) for b in rp[f"{m}.lora_E.default"]]
        margin = None
        if captured:
            srt = np.sort(captured["scores"].numpy())
            kth = ra.init_bgt - captured["budget"]
            margin = float((srt[kth] - srt[kth - 1]) / max(abs(srt[kth]), 1e-300))
        meta["steps"].append({"step": k, "loss": o.loss.item(), "grad_norm": norm, "budget": budget,
                              "keep": keep, "margin": margin})
    pm.eval()
    with torch.no_grad():
        res["logits"] = pm(input_ids=ids, attention_mask=mask, token_type_ids=tts).logits.numpy()
    save_file(res, os.path.join(out, "ref.safetensors"))
    pm.save_pretrained(os.path.join(out, "peft_saved"))
    with open(os.path.join(out, "ref.json"), "w") as f:
        json.dump(meta, f, indent=1)
    masked_steps = [s["step"] for s in meta["steps"] if s["margin"] is not None]
    margins = [s["margin"] for s in meta["steps"] if s["margin"] is not None]
    final = meta["steps"][-1]["keep"]
    print(f"# PEFT oracle (float64): {STEPS} steps, losses {meta['steps'][0]['loss']:.6f} .. {meta['steps'][-1]['loss']:.6f}; "
          f"budgets {' '.join(str(s['budget']) for s in meta['steps'])}; allocations at steps {masked_steps}")
    print(f"# final rank pattern {[sum(final[i * INIT_R:(i + 1) * INIT_R]) for i in range(len(module_names()))]} "
          f"(per module: {', '.join(module_names())})")
    tl.check(bool(margins) and min(margins) > 1e-3,
             f"the oracle's masks are decided by score gaps well above float32 round-off: smallest relative gap at "
             f"the threshold {min(margins) if margins else float('nan'):.3g} (> 1e-3)")
    n_clip = sum(s["grad_norm"] > CLIP for s in meta["steps"])
    print(f"# gradient clipped in {n_clip} of {STEPS} steps")
    return tl.finish()


def rel(a, b):
    s = float(np.abs(b).max())
    return float(np.abs(a.astype(np.float64) - b).max()) / (s if s > 0 else 1.0)


def cmd_compare(out, runs, log):
    tl = Tally()
    ref = load_file(os.path.join(out, "ref.safetensors"))
    meta = json.load(open(os.path.join(out, "ref.json")))
    lay, total = layout()
    nm = len(module_names())
    worst_p, worst_e, bad_steps, mask_bad, budget_bad = (0.0, ""), (0.0, ""), [], [], []
    for k in range(1, STEPS + 1):
        path = os.path.join(runs, str(k), "checkpoint.safetensors")
        try:
            ck = load_file(path)
        except Exception as e:  # noqa: BLE001
            tl.check(False, f"step {k}: cannot read {path}: {e}")
            return tl.finish()
        if ck["params"].size != total:
            tl.check(False, f"step {k}: checkpoint params of {ck['params'].size} floats, expected {total}")
            return tl.finish()
        ok = True
        for n, (o, c) in lay.items():
            got = ck["params"][o:o + c].reshape(shapes()[n])
            d = rel(got, ref[f"step{k}/{n}"])
            if d > worst_p[0]:
                worst_p = (d, f"{n[len(HEAD):]} at step {k}")
            ok &= d <= TOL_PARAM
            if "lora_" in n:
                for w in ("ipt", "unc"):
                    key = "adalora_exp_avg_" + w
                    g = ck[key][o:o + c].reshape(shapes()[n])
                    r = ref[f"step{k}/{w}/{n}"]
                    d = rel(g, r) if np.abs(r).max() > 0 else float(np.abs(g).max())
                    if d > worst_e[0]:
                        worst_e = (d, f"{w} of {n[len(HEAD):]} at step {k}")
                    ok &= d <= TOL_EMA
        if not ok:
            bad_steps.append(k)
        st = meta["steps"][k - 1]
        flags = ck["adalora_flags"]
        if int(flags[1]) != st["budget"]:
            budget_bad.append((k, int(flags[1]), st["budget"]))
        keep = [bool(x) for x in ck["adalora_rank_mask"]] if flags[0] else None
        if keep != st["keep"]:
            mask_bad.append(k)
        # masked triplets: E exactly 0 in peftc where PEFT's is (after each allocation)
        o, c = lay[f"{HEAD}{module_names()[0]}.lora_E"]
    tl.check(not bad_steps, f"{STEPS} steps: every trainable tensor after every step equals PEFT's: worst "
             f"{worst_p[0]:.3g} ({worst_p[1]}) (<= {TOL_PARAM:g}); EMAs exp_avg_ipt/unc worst {worst_e[0]:.3g} "
             f"({worst_e[1]}) (<= {TOL_EMA:g}); failing steps {bad_steps}")
    tl.check(not budget_bad, f"budget after each step equals RankAllocator.budget_schedule's: "
             f"{' '.join(str(s['budget']) for s in meta['steps'])} (mismatches {budget_bad[:4]})")
    tl.check(not mask_bad, f"the rank pattern (which triplets are masked) after each of {STEPS} steps equals PEFT's "
             f"(mismatching steps {mask_bad})")
    zero_bad = 0
    for k in range(1, STEPS + 1):
        ck = load_file(os.path.join(runs, str(k), "checkpoint.safetensors"))
        for n, (o, c) in lay.items():
            if n.endswith("lora_E"):
                zero_bad += int(((ck["params"][o:o + c] == 0) != (ref[f"step{k}/{n}"].reshape(-1) == 0)).sum())
    tl.check(zero_bad == 0, f"E is exactly 0 in peftc exactly where it is in PEFT, at every step ({zero_bad} differences)")

    steps = {}
    with open(log) as f:
        for line in f:
            m = re.match(r"step (\d+)/(\d+) .*?loss ([-0-9.eE+na]+) .*?grad_norm ([-0-9.eE+na]+)", line)
            if m:
                steps[int(m.group(1))] = (float(m.group(3)), float(m.group(4)))
    if sorted(steps) != list(range(1, STEPS + 1)):
        tl.check(False, f"the log has step lines {sorted(steps)}, expected 1..{STEPS}")
    else:
        dl = max(abs(steps[k][0] - meta["steps"][k - 1]["loss"]) for k in steps)
        dn = max(abs(steps[k][1] - meta["steps"][k - 1]["grad_norm"]) for k in steps)
        tl.check(dl <= TOL_LOSS, f"logged losses (cross-entropy + orth_reg_weight * regulariser) equal PEFT's "
                 f"outputs.loss: max abs diff {dl:.3g} (<= {TOL_LOSS:g})")
        tl.check(dn <= TOL_NORM, f"logged pre-clip gradient norms (the regulariser's gradient included) equal "
                 f"the oracle's: max abs diff {dn:.3g} (<= {TOL_NORM:g})")

    # the saved adapter: PEFT's config, PEFT loads it
    run = os.path.join(runs, str(STEPS))
    got = json.load(open(os.path.join(run, "adapter_config.json")))
    want = json.load(open(os.path.join(out, "peft_saved", "adapter_config.json")))
    keys = ("peft_type", "task_type", "init_r", "target_r", "tinit", "tfinal", "deltaT", "beta1", "beta2",
            "orth_reg_weight", "total_step", "lora_alpha", "lora_dropout", "r", "modules_to_save", "bias")
    diff = [k for k in keys if got.get(k) != want.get(k)]
    tl.check(not diff, f"adapter_config.json: {len(keys)} AdaLoraConfig fields equal PEFT's save_pretrained "
             f"(differing: {[(k, got.get(k), want.get(k)) for k in diff]})")
    tl.check(sorted(got.get("target_modules") or []) == sorted(want["target_modules"]),
             f"target_modules {got.get('target_modules')} as PEFT's {want['target_modules']}")
    tl.check(got.get("rank_pattern") == want.get("rank_pattern"),
             "rank_pattern equals PEFT's saved one: " + json.dumps({k.split("layer.")[1]: sum(v) for k, v in
                                                                     (got.get("rank_pattern") or {}).items()}))
    saved = load_file(os.path.join(run, "adapter_model.safetensors"))
    psaved = load_file(os.path.join(out, "peft_saved", "adapter_model.safetensors"))
    tl.check(sorted(saved) == sorted(psaved) and all(saved[n].shape == psaved[n].shape for n in saved),
             f"adapter_model.safetensors: the same {len(psaved)} keys and (rank-pattern-cut) shapes as PEFT's: "
             + ", ".join(f"{n.split('layer.')[1] if 'layer.' in n else n}{list(v.shape)}" for n, v in saved.items()
                         if n.endswith("lora_E")))
    dsv = max(rel(saved[n], psaved[n].astype(np.float64)) for n in saved if saved[n].size) if sorted(saved) == sorted(psaved) else 1
    tl.check(dsv <= TOL_PARAM, f"saved tensors equal PEFT's saved tensors: max rel diff {dsv:.3g} (<= {TOL_PARAM:g})")

    from peft import PeftModel
    ids, mask, tts, y = R.encode_batch(out)
    logits = {}
    for dtype in (torch.float32, torch.float64):
        pm = PeftModel.from_pretrained(base_model(out, dtype), run).to(dtype).eval()
        with torch.no_grad():
            logits[dtype] = pm(input_ids=ids, attention_mask=mask, token_type_ids=tts).logits.double()
    ranks = {n: int(p.shape[0]) for n, p in pm.named_parameters() if "lora_E" in n}
    tl.check(sorted(ranks.values()) == sorted(sum(v) for v in want["rank_pattern"].values()),
             f"PeftModel.from_pretrained resizes the modules to the rank pattern: ranks {list(ranks.values())}")
    z = logits[torch.float64]
    loss = float(torch.nn.functional.cross_entropy(z, y))
    try:
        mj = json.load(open(os.path.join(run, "metrics.json")))
        dl = abs(mj["eval_loss"] - loss) / loss
        tl.check(dl <= TOL_LOGITS, f"PEFT's loss with peftc's saved adapter {loss:.8f} equals peftc's own eval_loss "
                 f"{mj['eval_loss']:.8f} (same weights): rel diff {dl:.3g} (<= {TOL_LOGITS:g})")
    except (OSError, KeyError, ValueError) as e:
        tl.check(False, f"metrics.json eval_loss unreadable: {e}")
    d32 = float((logits[torch.float32] - z).abs().max())
    tl.check(d32 <= TOL_LOGITS, f"float32 and float64 PEFT on peftc's adapter: logits max abs diff {d32:.3g}")
    dref = float((z - torch.from_numpy(ref["logits"])).abs().max())
    tl.check(dref <= TOL_LOGITS_TRAJ, f"PEFT-loaded peftc adapter vs PEFT's own trained model (float64, {STEPS} steps): "
             f"logits max abs diff {dref:.3g} (<= {TOL_LOGITS_TRAJ:g})")
    return tl.finish()


def cmd_load(out, run):
    """PEFT loads a peftc AdaLoRA adapter (any rank pattern, modules of rank 0
    included) and gives the loss peftc measured with it (metrics.json)."""
    tl = Tally()
    from peft import PeftModel
    ids, mask, tts, y = R.encode_batch(out)
    pm = PeftModel.from_pretrained(base_model(out, torch.float64), run).to(torch.float64).eval()
    with torch.no_grad():
        z = pm(input_ids=ids, attention_mask=mask, token_type_ids=tts).logits
    loss = float(torch.nn.functional.cross_entropy(z, y))
    rp = json.load(open(os.path.join(run, "adapter_config.json")))["rank_pattern"]
    ranks = [sum(v) for v in rp.values()]
    got = {n.split("layer.")[1].split(".lora_E")[0]: int(p.shape[0]) for n, p in pm.named_parameters() if "lora_E" in n}
    mj = json.load(open(os.path.join(run, "metrics.json")))
    d = abs(mj["eval_loss"] - loss) / loss
    tl.check(sorted(got.values()) == sorted(ranks) and d <= TOL_LOGITS,
             f"PEFT loads the adapter with ranks {ranks} (modules {got}) and its loss {loss:.8f} equals peftc's "
             f"eval_loss {mj['eval_loss']:.8f}: rel diff {d:.3g} (<= {TOL_LOGITS:g})")
    return tl.finish()


def main():
    a = sys.argv[1:]
    if len(a) == 3 and a[0] == "load":
        return cmd_load(a[1], a[2])
    if len(a) == 2 and a[0] == "gen":
        return cmd_gen(a[1])
    if len(a) == 4 and a[0] == "compare":
        return cmd_compare(a[1], a[2], a[3])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
