#!/usr/bin/env python3
"""ref_adalora_lm.py: HF PEFT's own AdaLoRA (peft.AdaLoraModel, its
RankAllocator) on a tiny random LlamaForCausalLM as the oracle for
`peftc train --task causal-lm --method adalora` (tests/check_adalora_lm.sh).

The structure of tests/ref_adalora.py (the BERT oracle), on a decoder: the
real PEFT model in float64 with AdaLoraConfig(task_type="CAUSAL_LM") on
q_proj, k_proj (grouped-query: 2 heads of keys) and v_proj of both layers,
the same init adapter loaded into both, then PEFT's documented loop for STEPS
steps on the whole training set (one batch per step):
    loss = model(input_ids, attention_mask, labels).loss   # + orth_reg_weight * regulariser
    loss.backward(); clip_grad_norm_(params, CLIP); optimizer.step()
    model.base_model.update_and_allocate(global_step); optimizer.zero_grad()
The token rows are peftc's, made by tests/ref_lm_data.py (HF's tokenizer):
prompt/response records, loss on the response (labels -100 elsewhere).

Modes (run from the repo root):
  gen OUT               OUT/model (a tiny Llama with a byte-level BPE
                        tokenizer trained here), OUT/train.jsonl, OUT/init
                        (the init adapter), OUT/ref.safetensors + OUT/ref.json
                        (the per-step records), OUT/peft_saved
  compare OUT RUNS LOG  RUNS/K: `peftc train --stop-after K` (K = 1..STEPS);
                        each checkpoint against PEFT's state after step K;
                        LOG: the full run's log; the full run's adapter
                        against PEFT's save_pretrained, loaded by
                        peft.PeftModel.from_pretrained (its loss = peftc's)
  load OUT RUN          PEFT loads RUN's adapter; its loss equals RUN/metrics.json's
Output: "ok   - ..." / "FAIL - ..." / "# ..." lines, then "## <passed> <failed>".
"""
import contextlib
import io
import json
import os
import re
import shutil
import sys
import warnings

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from ref_adalora import Tally, rel  # noqa: E402  (the BERT oracle's tally and per-tensor error)
import make_llama_hf  # noqa: E402
import ref_lm_data  # noqa: E402

torch.set_num_threads(1)

# the run (check_adalora_lm.sh passes the same to peftc)
INIT_R, TARGET_R, TINIT, TFINAL, DELTA_T, STEPS = 4, 2, 3, 5, 2, 20
ALPHA, ORTH, BETA1, BETA2 = 8.0, 0.5, 0.85, 0.85
LR, WD, CLIP = 1e-2, 0.01, 1.0
TARGETS = ("q_proj", "k_proj", "v_proj")
MAX_LEN = 64
V, C, L, NH, NKV, HD, F = 300, 32, 2, 4, 2, 8, 48
OUTW = {"q_proj": NH * HD, "k_proj": NKV * HD, "v_proj": NKV * HD}
HEAD = "base_model.model."

# Tolerances: peftc runs in float32, the oracle in float64 (as ref_adalora.py).
TOL_PARAM = 2e-5
TOL_EMA = 1e-4
TOL_LOSS = 1e-4    # the log prints 4 decimals
TOL_NORM = 1e-3    # the log prints 3 decimals
TOL_LOSS_REL = 1e-5  # PEFT-loaded adapter vs peftc's own eval loss (same weights)
TOL_TRAJ = 2e-5      # vs the float64 oracle's own loss after STEPS steps

RECORDS = [("the cat", " sat on the mat"), ("a dog", " ran in the park"), ("we like", " to read books at night"),
           ("the sun", " is warm today"), ("birds", " sing in the morning"), ("she drinks", " tea with milk")]


def module_names():
    return [f"model.layers.{l}.self_attn.{t}" for l in range(L) for t in TARGETS]


def peftc_names():
    """peftc's trainable tensors in its declaration order (the checkpoint's layout)."""
    return [f"{HEAD}{m}.lora_{x}" for m in module_names() for x in "ABE"]


def shapes():
    s = {}
    for m in module_names():
        s[f"{HEAD}{m}.lora_A"] = (INIT_R, C)
        s[f"{HEAD}{m}.lora_B"] = (OUTW[m.split(".")[-1]], INIT_R)
        s[f"{HEAD}{m}.lora_E"] = (INIT_R, 1)
    return s


def layout():
    """name -> (offset, numel): params_add's 16-float-aligned offsets."""
    off, out = 0, {}
    for n in peftc_names():
        k = int(np.prod(shapes()[n]))
        out[n] = (off, k)
        off += (k + 15) & ~15
    return out, off


def write_model(out):
    """A tiny Llama (GQA 4:2, untied head) with a byte-level BPE tokenizer of 300 tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    d = os.path.join(out, "model")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [p + r for p, r in RECORDS] * 5
    tr = trainers.BpeTrainer(vocab_size=V, special_tokens=["<|endoftext|>", "<|im_start|>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, tr)
    assert tok.get_vocab_size() <= V, tok.get_vocab_size()
    cfg = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=C, intermediate_size=F,
               num_hidden_layers=L, num_attention_heads=NH, num_key_value_heads=NKV, head_dim=HD,
               rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=128, vocab_size=V,
               hidden_act="silu", tie_word_embeddings=False, bos_token_id=1, eos_token_id=0)
    rng = np.random.default_rng(3)
    w = lambda *s, sc=0.3: rng.standard_normal(s) * sc  # noqa: E731
    t = {"model.embed_tokens.weight": w(V, C, sc=1.0), "model.norm.weight": 1 + w(C, sc=0.1), "lm_head.weight": w(V, C)}
    for l in range(L):
        p = f"model.layers.{l}."
        t.update({p + "self_attn.q_proj.weight": w(NH * HD, C), p + "self_attn.k_proj.weight": w(NKV * HD, C),
                  p + "self_attn.v_proj.weight": w(NKV * HD, C), p + "self_attn.o_proj.weight": w(C, NH * HD),
                  p + "mlp.gate_proj.weight": w(F, C), p + "mlp.up_proj.weight": w(F, C),
                  p + "mlp.down_proj.weight": w(C, F),
                  p + "input_layernorm.weight": 1 + w(C, sc=0.1), p + "post_attention_layernorm.weight": 1 + w(C, sc=0.1)})
    make_llama_hf.write(d, cfg, t, 1)
    tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|im_start|>", "eos_token": "<|endoftext|>"}, f)
    return rng


def batch(out):
    """peftc's rows of train.jsonl (tests/ref_lm_data.py), padded right: ids, mask, labels."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ref_lm_data.expect(os.path.join(out, "model"), os.path.join(out, "train.jsonl"), "auto", MAX_LEN, 0, 0)
    rows = [json.loads(x) for x in buf.getvalue().splitlines() if x.strip()][:-1]
    T = max(len(r["ids"]) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    labels = torch.full((len(rows), T), -100, dtype=torch.long)
    for b, r in enumerate(rows):
        n = len(r["ids"])
        ids[b, :n] = torch.tensor(r["ids"])
        mask[b, :n] = 1
        for p in range(n):
            if r["target"][p]:
                labels[b, p] = r["ids"][p]
    return ids, mask, labels


def ce(logits, labels):
    """The mean next-token cross-entropy over the labelled positions (peftc's eval_loss)."""
    z = logits[:, :-1].reshape(-1, logits.shape[-1]).double()
    y = labels[:, 1:].reshape(-1)
    return float(torch.nn.functional.cross_entropy(z, y, ignore_index=-100))


def config():
    from peft import AdaLoraConfig
    return AdaLoraConfig(task_type="CAUSAL_LM", init_r=INIT_R, target_r=TARGET_R, tinit=TINIT, tfinal=TFINAL,
                         deltaT=DELTA_T, beta1=BETA1, beta2=BETA2, orth_reg_weight=ORTH, total_step=STEPS,
                         lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(TARGETS))


def base_model(out, dtype):
    from transformers import LlamaForCausalLM
    from transformers.utils import logging
    logging.set_verbosity_error()
    m = LlamaForCausalLM.from_pretrained(os.path.join(out, "model"), attn_implementation="eager")
    return m.to(dtype).eval()


def cmd_gen(out):
    tl = Tally()
    os.makedirs(out, exist_ok=True)
    rng = write_model(out)
    with open(os.path.join(out, "train.jsonl"), "w") as f:
        for p, r in RECORDS:
            f.write(json.dumps({"prompt": p, "response": r}) + "\n")
    # the init adapter: non-zero E (PEFT's zero E leaves A and B without a
    # gradient at first), A and B far from orthonormal (the regulariser works)
    d = os.path.join(out, "init")
    os.makedirs(d, exist_ok=True)
    t = {n: (rng.standard_normal(sh) * (0.3 if n.endswith("lora_E") else 0.2)).astype(np.float32) for n, sh in shapes().items()}
    save_file(t, os.path.join(d, "adapter_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "ADALORA", "task_type": "CAUSAL_LM"}, f)

    from peft import get_peft_model
    ids, mask, labels = batch(out)
    pm = get_peft_model(base_model(out, torch.float64), config())
    params = dict(pm.named_parameters())
    names = peftc_names()
    peft_name = lambda n: n + ".default"  # noqa: E731
    with torch.no_grad():
        for n, v in t.items():
            params[peft_name(n)].copy_(torch.from_numpy(v.astype(np.float64)))
    ra = pm.base_model.rankallocator
    train = [params[peft_name(n)] for n in names]
    # PEFT 0.21.2 leaves ranknum requires_grad=True (see ref_adalora.py); kept out of the optimizer at init_r
    others = sum(p.requires_grad for n, p in pm.named_parameters() if ".ranknum." not in n)
    tl.check(all(p.requires_grad for p in train) and others == len(names),
             f"PEFT trains exactly the {len(names)} tensors peftc does (ranknum aside)")
    tl.check(ra.init_bgt == INIT_R * len(module_names()) and ra.target_bgt == TARGET_R * len(module_names()),
             f"PEFT's budget: init {ra.init_bgt}, target {ra.target_bgt}")
    opt = torch.optim.AdamW(train, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)
    res, meta = {}, {"steps": []}
    captured = {}
    orig_mask = ra.mask_to_budget

    def scores():
        out_ = []
        for m in module_names():
            a = ra._element_score(f"{m}.lora_A.default").mean(dim=1)
            b = ra._element_score(f"{m}.lora_B.default").mean(dim=0)
            e = ra._element_score(f"{m}.lora_E.default").view(-1)
            out_.append(e + (a + b))
        return torch.cat(out_)

    def mask_to_budget(model, budget):
        captured["scores"], captured["budget"] = scores(), budget
        return orig_mask(model, budget)
    ra.mask_to_budget = mask_to_budget
    pm.train()
    for step in range(STEPS):
        o = pm(input_ids=ids, attention_mask=mask, labels=labels)
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
        meta["final_loss"] = ce(pm(input_ids=ids, attention_mask=mask).logits, labels)
    save_file(res, os.path.join(out, "ref.safetensors"))
    pm.save_pretrained(os.path.join(out, "peft_saved"))
    with open(os.path.join(out, "ref.json"), "w") as f:
        json.dump(meta, f, indent=1)
    masked = [s["step"] for s in meta["steps"] if s["margin"] is not None]
    margins = [s["margin"] for s in meta["steps"] if s["margin"] is not None]
    final = meta["steps"][-1]["keep"]
    print(f"# PEFT oracle (float64, LlamaForCausalLM, {ids.shape[0]} rows x {ids.shape[1]}, "
          f"{int((labels[:, 1:] != -100).sum())} targets): {STEPS} steps, losses {meta['steps'][0]['loss']:.6f} .. "
          f"{meta['steps'][-1]['loss']:.6f}; budgets {' '.join(str(s['budget']) for s in meta['steps'])}; "
          f"allocations at steps {masked}")
    print(f"# final rank pattern {[sum(final[i * INIT_R:(i + 1) * INIT_R]) for i in range(len(module_names()))]} "
          f"(per module: {', '.join(m.replace('model.layers.', '').replace('self_attn.', '') for m in module_names())})")
    tl.check(bool(margins) and min(margins) > 1e-3,
             f"the oracle's masks are decided by score gaps well above float32 round-off: smallest relative gap at "
             f"the threshold {min(margins) if margins else float('nan'):.3g} (> 1e-3)")
    kept = [sum(final[i * INIT_R:(i + 1) * INIT_R]) for i in range(len(module_names()))]
    tl.check(len(set(kept)) > 1, f"the final ranks differ between modules ({kept}): the allocation is tested, not a uniform cut")
    return tl.finish()


def cmd_compare(out, runs, log):
    tl = Tally()
    ref = load_file(os.path.join(out, "ref.safetensors"))
    meta = json.load(open(os.path.join(out, "ref.json")))
    lay, total = layout()
    worst_p, worst_e, bad_steps, mask_bad, budget_bad, zero_bad = (0.0, ""), (0.0, ""), [], [], [], 0
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
            want = ref[f"step{k}/{n}"]
            d = rel(got, want)
            if d > worst_p[0]:
                worst_p = (d, f"{n[len(HEAD):]} at step {k}")
            ok &= d <= TOL_PARAM
            if n.endswith("lora_E"):
                zero_bad += int(((got.reshape(-1) == 0) != (want.reshape(-1) == 0)).sum())
            for w in ("ipt", "unc"):
                g = ck["adalora_exp_avg_" + w][o:o + c].reshape(shapes()[n])
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
    tl.check(not bad_steps, f"{STEPS} steps: every trainable tensor after every step equals PEFT's: worst "
             f"{worst_p[0]:.3g} ({worst_p[1]}) (<= {TOL_PARAM:g}); EMAs exp_avg_ipt/unc worst {worst_e[0]:.3g} "
             f"({worst_e[1]}) (<= {TOL_EMA:g}); failing steps {bad_steps}")
    tl.check(not budget_bad, f"budget after each step equals RankAllocator.budget_schedule's: "
             f"{' '.join(str(s['budget']) for s in meta['steps'])} (mismatches {budget_bad[:4]})")
    tl.check(not mask_bad, f"the rank pattern (which triplets are masked) after each of {STEPS} steps equals PEFT's "
             f"(mismatching steps {mask_bad})")
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

    run = os.path.join(runs, str(STEPS))
    got = json.load(open(os.path.join(run, "adapter_config.json")))
    want = json.load(open(os.path.join(out, "peft_saved", "adapter_config.json")))
    keys = ("peft_type", "task_type", "init_r", "target_r", "tinit", "tfinal", "deltaT", "beta1", "beta2",
            "orth_reg_weight", "total_step", "lora_alpha", "lora_dropout", "r", "bias", "use_rslora", "use_dora",
            "fan_in_fan_out", "init_lora_weights", "layers_to_transform", "alpha_pattern")
    diff = [k for k in keys if got.get(k) != want.get(k)]
    tl.check(not diff, f"adapter_config.json: {len(keys)} AdaLoraConfig fields equal PEFT's save_pretrained "
             f"(differing: {[(k, got.get(k), want.get(k)) for k in diff]})")
    tl.check(sorted(got.get("target_modules") or []) == sorted(want["target_modules"]),
             f"target_modules {got.get('target_modules')} as PEFT's {want['target_modules']}")
    tl.check(got.get("rank_pattern") == want.get("rank_pattern"),
             "rank_pattern equals PEFT's saved one: " + json.dumps({k.replace("model.layers.", "").replace(
                 "self_attn.", "").replace(".lora_E", ""): sum(v) for k, v in (got.get("rank_pattern") or {}).items()}))
    saved = load_file(os.path.join(run, "adapter_model.safetensors"))
    psaved = load_file(os.path.join(out, "peft_saved", "adapter_model.safetensors"))
    same_keys = sorted(saved) == sorted(psaved) and all(saved[n].shape == psaved[n].shape for n in saved)
    tl.check(same_keys, f"adapter_model.safetensors: the same {len(psaved)} keys and (rank-pattern-cut) shapes as "
             f"PEFT's: " + ", ".join(f"{n.replace(HEAD + 'model.layers.', '').replace('self_attn.', '')}"
                                     f"{list(v.shape)}" for n, v in saved.items() if n.endswith("lora_E")))
    dsv = max((rel(saved[n], psaved[n].astype(np.float64)) for n in saved if saved[n].size), default=0) if same_keys else 1
    tl.check(dsv <= TOL_PARAM, f"saved tensors equal PEFT's saved tensors: max rel diff {dsv:.3g} (<= {TOL_PARAM:g})")

    from peft import PeftModel
    ids, mask, labels = batch(out)
    pm = PeftModel.from_pretrained(base_model(out, torch.float64), run).to(torch.float64).eval()
    ranks = sorted(int(p.shape[0]) for n, p in pm.named_parameters() if "lora_E" in n)
    tl.check(ranks == sorted(sum(v) for v in want["rank_pattern"].values()),
             f"PeftModel.from_pretrained resizes the modules to the rank pattern: ranks {ranks}")
    with torch.no_grad():
        loss = ce(pm(input_ids=ids, attention_mask=mask).logits, labels)
    try:
        mj = json.load(open(os.path.join(run, "metrics.json")))
        ev = [v for v in (mj.get("eval_loss"),) if v is not None][0]
        dl = abs(ev - loss) / loss
        tl.check(dl <= TOL_LOSS_REL, f"PEFT's loss with peftc's saved adapter {loss:.8f} equals peftc's own eval_loss "
                 f"{ev:.8f} (same weights): rel diff {dl:.3g} (<= {TOL_LOSS_REL:g})")
    except (OSError, KeyError, ValueError, IndexError) as e:
        tl.check(False, f"metrics.json eval_loss unreadable: {e}")
    dt = abs(loss - meta["final_loss"]) / meta["final_loss"]
    tl.check(dt <= TOL_TRAJ, f"PEFT-loaded peftc adapter vs PEFT's own trained model ({STEPS} steps): loss "
             f"{loss:.8f} vs {meta['final_loss']:.8f}, rel diff {dt:.3g} (<= {TOL_TRAJ:g})")
    return tl.finish()


def cmd_load(out, run):
    """PEFT loads a peftc AdaLoRA causal-LM adapter (modules of rank 0 included)
    and gives the loss peftc measured with it (metrics.json)."""
    tl = Tally()
    from peft import PeftModel
    ids, mask, labels = batch(out)
    pm = PeftModel.from_pretrained(base_model(out, torch.float64), run).to(torch.float64).eval()
    with torch.no_grad():
        loss = ce(pm(input_ids=ids, attention_mask=mask).logits, labels)
    rp = json.load(open(os.path.join(run, "adapter_config.json")))["rank_pattern"]
    ranks = sorted(sum(v) for v in rp.values())
    got = sorted(int(p.shape[0]) for n, p in pm.named_parameters() if "lora_E" in n)
    mj = json.load(open(os.path.join(run, "metrics.json")))
    d = abs(mj["eval_loss"] - loss) / loss
    tl.check(got == ranks and d <= TOL_LOSS_REL,
             f"PEFT loads the adapter with ranks {got} and its loss {loss:.8f} equals peftc's eval_loss "
             f"{mj['eval_loss']:.8f}: rel diff {d:.3g} (<= {TOL_LOSS_REL:g})")
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
