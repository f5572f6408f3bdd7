#!/usr/bin/env python3
"""report.py: bench/run's raw result lines -> the markdown report (stdout).

  report.py build/bench/raw.txt

Lines: "META key=K value=V", "RESULT impl=... label=L rss_kib=N ...",
"FAILED label=L". Exit 1 when a check fails (parameter counts differ, a loss
is not finite or does not fall, inference logits of peftc and torch or of
merged and unmerged LoRA disagree; bf16 logits further than BF16_LOGIT_TOL
from fp32's) or a run failed.

Labels: peftc[-bf16][-passive].NAME, torch[-bf16][-separate].NAME (bf16:
peftc with PEFTC_BF16=1, torch under torch.autocast bf16); the peaks
peftc[-passive].sgemm, torch.mm (fp32) and peftc[-passive].bf16gemm,
torch-bf16.mm (bf16).
"""
import math
import sys

TRAIN = [("train.lora.32x64", "LoRA r8 q,v"), ("train.lora.16x128", "LoRA r8 q,v"),
         ("train.adapter-pfeiffer.32x64", "Pfeiffer adapter r24"),
         ("train.adapter-pfeiffer.16x128", "Pfeiffer adapter r24"),
         ("train.prefix.32x64", "prefix 20"), ("train.prefix.16x128", "prefix 20"),
         ("train.full.32x64", "full fine-tuning")]
INFER = [("infer.lora.32x64", "LoRA unmerged"), ("infer.lora-merged.32x64", "LoRA merged")]
LOGIT_TOL = 1e-3   # max |difference| / max |logit| between implementations
BF16_LOGIT_TOL = 0.1   # the same between a bf16 run and fp32, or two bf16 runs
PRECS = (("fp32", ""), ("bf16", "-bf16"))   # precision, label suffix
OTHER_TOL = 0.1    # CPUs other processes kept busy during a run above which its time is flagged


def parse(path):
    meta, res, failed = {}, {}, []
    for line in open(path):
        f = line.split()
        if not f:
            continue
        kv = dict(x.split("=", 1) for x in f[1:] if "=" in x)
        if f[0] == "META":
            v = kv.get("value", "")
            meta[kv["key"]] = v if kv["key"] == "torch_bf16_impl" else v.replace("_", " ")
        elif f[0] == "RESULT":
            res[kv["label"]] = kv
        elif f[0] == "FAILED":
            failed.append(kv.get("label", "?"))
    return meta, res, failed


def num(d, k):
    try:
        return float(d[k])
    except (KeyError, TypeError, ValueError):
        return float("nan")


def fmt(x, nd=1):
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{nd}f}"


def flag(*runs):
    """"⚠" when another process used > OTHER_TOL CPUs during one of the runs."""
    return " ⚠" if any(r and num(r, "other_cpus") > OTHER_TOL for r in runs) else ""


def pct(x):
    s = fmt(x, 0)
    return s if s == "–" else s + "%"


def main():
    meta, res, failed = parse(sys.argv[1])
    # torch's q/k/v as one fused projection (label torch.*) or three
    # (torch-separate.*): "torch" is the faster of those that ran
    res_by_label = {r["label"]: r for r in res.values()}
    torch_layout = {}
    for n, _ in TRAIN + INFER:
        for prec, sfx in PRECS:
            tp = f"torch{sfx}"
            cands = [(num(res[k], "median_ms"), k) for k in (f"{tp}.{n}", f"{tp}-separate.{n}") if k in res]
            # the faster of the undisturbed runs (all runs if every one was disturbed)
            clean = [c for c in cands if num(res[c[1]], "other_cpus") <= OTHER_TOL]
            if cands:
                best = min(clean or cands)[1]
                torch_layout[f"{n} {prec}"] = (res[best].get("qkv", "?"),
                                               [(res[k].get("qkv", "?") + flag(res[k]), ms) for ms, k in cands])
                if f"{tp}.{n}" in res:
                    res[f"{tp}-fused.{n}"] = res[f"{tp}.{n}"]
                res[f"{tp}.{n}"] = res[best]
    out = []
    p = out.append
    problems = [f"run failed: {f}" for f in failed]
    threads = meta.get("threads", "2")
    busy = num(meta, "busy_before")
    busy_after = num(meta, "busy_after")

    p("# peftc vs PyTorch: fine-tuning step and inference on CPU")
    p("")
    p(f"- machine: {meta.get('cpu', '?')}, {meta.get('ncpu', '?')} CPUs; both sides use "
      f"**{threads} threads**; peftc {meta.get('git', '?')}, {meta.get('date', '?')}")
    p(f"- PyTorch: Debian python3-torch {meta.get('torch_deb', '?')} (torch 1.13, the newest that installs "
      f"here; no scaled_dot_product_attention), OpenBLAS (pthread build) sgemm, "
      f"`OMP_WAIT_POLICY=PASSIVE` (with libgomp's active spin-wait its idle OpenMP workers "
      f"take the cores OpenBLAS's threads need: several times slower on 2 cores)")
    p(f"- peftc: OpenBLAS {meta.get('openblas_deb', '?')} (OpenMP build); `peftc` = libgomp's default wait "
      f"policy, `peftc PASSIVE` = `OMP_WAIT_POLICY=PASSIVE`")
    p("- model: all-MiniLM-L6-v2 (6 layers, d 384, 12 heads, FFN 1536) + BertForSequenceClassification "
      "head (2 labels); synthetic batches, every sequence full length (no padding)")
    p("- step = forward + cross-entropy + backward + grad-norm clip (1.0) + AdamW on the trainable "
      "parameters; dropout 0.1 as in config.json on both sides (hidden, attention probabilities, "
      "pooled output); LoRA dropout 0")
    amx = sorted({r.get("amx", "?") for k, r in res.items() if r and k.startswith("peftc-bf16")})
    impl = meta.get("torch_bf16_impl", "none")
    if "bf16" in meta.get("precisions", ""):
        p("- **precision**: `fp32` rows are fp32 on both sides. `bf16` rows: peftc with `PEFTC_BF16=1`: the "
          "frozen weights' matmuls (query, key, value, attention output, FFN in and out; forward and input "
          "gradient) take bf16 operands and accumulate in fp32"
          + (", on AMX tiles" if amx == ["1"] else f" (AMX in use: {'/'.join(amx) or '?'})")
          + "; trainable weights, LoRA/adapter, attention, softmax, LayerNorm, GELU and AdamW stay fp32. "
          "torch: `torch.autocast(\"cpu\", dtype=torch.bfloat16)` around forward + loss: every linear and "
          "matmul (trainable ones and the attention's too) in bf16 through oneDNN "
          f"(`{impl}` for a linear here), GELU, softmax and dropout on bf16 tensors, LayerNorm and the "
          "residual stream fp32; weights, gradients and AdamW fp32. Every peftc run sets `PEFTC_BF16` "
          "explicitly")
    elif meta.get("torch_bf16_impl") == "unsupported":
        p("- precision: fp32 only (this CPU lacks AVX-512-BF16: no bf16 rows)")
    p(f"- timing: {meta.get('warmup', '2')} warm-up steps, then >= {meta.get('min_steps', '5')} steps and "
      f">= {meta.get('min_seconds', '3')} s; the **median** step; peak RSS = /usr/bin/time -v's maximum "
      f"resident set size of the workload's own process (model load included)")
    load_note = (f"- machine load: {fmt(busy, 0)}% of the CPUs busy just before the run, "
                 f"{fmt(busy_after, 0)}% just after")
    others = meta.get("others_before", "")
    if others:
        load_note += f" (busiest other processes before: {others})"
    # the labels as run (torch.* now holds the chosen layout; torch-fused.* the fused run)
    ran = {k: r for k, r in res.items()
           if r and not (k.split(".")[0] in ("torch", "torch-bf16") and
                         f"{k.split('.')[0]}-fused.{k.split('.', 1)[1]}" in res)}
    # runs beside the BENCH_LOAD hogs are busy on purpose
    flagged = sorted(r["label"] for r in ran.values()
                     if num(r, "other_cpus") > OTHER_TOL and not r["label"].startswith("load."))
    if flagged:
        load_note += (f"; **⚠ marks a time taken while other processes kept > {OTHER_TOL:g} CPU busy** "
                      f"({len(flagged)} of {len(ran)} runs, after up to {meta.get('retries', '?')} retries: "
                      + ", ".join(f"{k} {num(res_by_label[k], 'other_cpus'):.2f}" for k in flagged) + " CPUs)")
    p(load_note)
    if not (busy < 15 and busy_after < 15) or flagged:
        p("")
        p("> **Warning: the machine was busy with other work — these timings are contaminated "
          "(other processes share the 2 cores); rerun `make bench` on an idle machine.**")
    p("")

    # sgemm
    sg = [res[k] for k in ("peftc.sgemm", "peftc-passive.sgemm") if k in res]
    peak = max((num(r, "peak_gflops") for r in sg), default=float("nan"))
    if sg:
        best = max(sg, key=lambda r: num(r, "peak_gflops"))
        p(f"**sgemm peak**: cblas_sgemm {best['n']}³ through the OpenBLAS peftc links "
          f"(openblas-openmp), {threads} threads: **{fmt(peak)} GFLOPS** (best of {best['reps']}; "
          f"median {fmt(num(best, 'median_gflops'))})"
          + ("; peftc's default wait policy: " + fmt(num(res['peftc.sgemm'], 'peak_gflops'))
             + ", PASSIVE: " + fmt(num(res['peftc-passive.sgemm'], 'peak_gflops'))
             if len(sg) == 2 else "")
          + (f". torch.mm {res['torch.mm']['n']}³: {fmt(num(res['torch.mm'], 'peak_gflops'))} GFLOPS"
             if "torch.mm" in res else ""))
        p("")
    bg = [res[k] for k in ("peftc.bf16gemm", "peftc-passive.bf16gemm", "torch-bf16.mm") if k in res]
    peak16 = max((num(r, "peak_gflops") for r in bg), default=float("nan"))
    if bg:
        pb = [r for r in bg if r.get("impl") == "peftc"]
        best = max(pb, key=lambda r: num(r, "peak_gflops")) if pb else None
        p("**bf16 GEMM peak**: "
          + (f"peftc's `matmul_bf16_forward` {best['n']}³ ({'AMX tiles' if best.get('amx') == '1' else 'AVX-512-BF16'}, "
             f"rounding the fp32 activations to bf16 included), {threads} threads: "
             f"{fmt(max(num(r, 'peak_gflops') for r in pb))} GFLOPS (best of {best['reps']}; median "
             f"{fmt(num(best, 'median_gflops'))})" if best else "")
          + (f"; torch.mm of bf16 tensors {res['torch-bf16.mm']['n']}³ (oneDNN): "
             f"{fmt(num(res['torch-bf16.mm'], 'peak_gflops'))} GFLOPS" if "torch-bf16.mm" in res else "")
          + f". The bf16 peak below is the higher: **{fmt(peak16)} GFLOPS**"
          + (f" ({fmt(peak16 / peak, 2)}× the sgemm peak)" if not math.isnan(peak) else ""))
        p("")

    def ratio(a, b):
        return a / b if a and b and not math.isnan(a) and not math.isnan(b) else float("nan")

    def speed(a, b, key):
        r = ratio(num(a, key), num(b, key))
        return "–" if math.isnan(r) else fmt(r, 2) + "×"

    def speeds(a, ap, b, key):
        x = speed(a, b, key)
        y = speed(ap, b, key)
        return x + (f" (PASSIVE {y})" if y != "–" and x != "–" else "")

    full_bf16 = []

    def prec_cell(n, prec):
        """bf16 of full fine-tuning: peftc has nothing frozen, so it is fp32 there"""
        if prec == "bf16" and ".full." in n and f"peftc-bf16.{n}" in res:
            full_bf16.append(n)
            return "bf16 †"
        return prec

    def table(rows, key):
        """one row per workload and precision; torch = torch at the row's precision"""
        for n, desc in rows:
            bt = n.split(".")[-1].replace("x", " × ")
            tf, tb = res.get(f"torch.{n}", {}), res.get(f"torch-bf16.{n}", {})
            for prec, sfx in PRECS:
                a, ap, t = (res.get(f"peftc{sfx}.{n}") or {}, res.get(f"peftc{sfx}-passive.{n}") or {},
                            res.get(f"torch{sfx}.{n}") or {})
                if not (a or t):
                    continue
                cells = [desc, bt, prec_cell(n, prec)]
                if key == "tokens_per_s":
                    cells.append(f"{int(num(a or t, 'trainable')):,}")
                nd = 0 if key == "tokens_per_s" else 1
                cells += [f"{fmt(num(a, 'median_ms'))}{flag(a)}", fmt(num(a, key), nd),
                          f"{fmt(num(ap, key), nd)}{flag(ap)}", f"{fmt(num(t, 'median_ms'))}{flag(t)}",
                          fmt(num(t, key), nd), speeds(a, ap, tf, key), speeds(a, ap, tb, key),
                          fmt(num(a, "rss_kib") / 1024, 0), fmt(num(t, "rss_kib") / 1024, 0),
                          f"{fmt(ratio(num(t, 'rss_kib'), num(a, 'rss_kib')), 2)}×"]
                p("| " + " | ".join(cells) + " |")

    # training
    rows = [(n, d) for n, d in TRAIN if any(f"{i}{s}.{n}" in res for i in ("peftc", "torch") for _, s in PRECS)]
    if rows:
        p("## Training step (median)")
        p("")
        p("| workload | batch × seq | precision | trainable params | peftc ms | peftc tok/s | peftc PASSIVE tok/s "
          "| torch ms | torch tok/s | **speed peftc/torch fp32** | **speed peftc/torch bf16** | peftc RSS MiB "
          "| torch RSS MiB | **memory torch/peftc** |")
        p("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        table(rows, "tokens_per_s")
        p("")

    rows = [(n, d) for n, d in INFER if any(f"{i}{s}.{n}" in res for i in ("peftc", "torch") for _, s in PRECS)]
    if rows:
        p("## Inference (eval mode, no gradients; median batch)")
        p("")
        p("| workload | batch × seq | precision | peftc ms | peftc sent/s | peftc PASSIVE sent/s | torch ms "
          "| torch sent/s | **speed peftc/torch fp32** | **speed peftc/torch bf16** | peftc RSS MiB | torch RSS MiB "
          "| **memory torch/peftc** |")
        p("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        table(rows, "seq_per_s")
        p("")
    if any(k.startswith(("peftc-bf16.", "torch-bf16.")) for k in res):
        p("Per row, the torch columns and the memory ratio are torch at the row's precision (bf16: "
          "autocast); **speed peftc/torch fp32** and **bf16** compare the row's peftc with each torch run "
          "(tokens or sentences per second; above 1, peftc is faster; PASSIVE in brackets)."
          + (" † full fine-tuning trains every weight, and peftc's bf16 path covers frozen weights "
             "only: peftc computes in fp32 in this row (torch's autocast has no such limit)."
             if full_bf16 else ""))
        p("")

    # under load: the same workloads beside N CPU-bound processes
    nload = int(num(meta, "load")) if not math.isnan(num(meta, "load")) else 0
    rows = [(n, d) for n, d in TRAIN + INFER
            if any(f"load.peftc{s}-spin10k.{n}" in res for _, s in PRECS)]
    if nload and rows:
        p(f"## Under load: beside {nload} CPU-bound process{'es' if nload > 1 else ''} (median step)")
        p("")
        p("peftc as the CLI runs it (`GOMP_SPINCOUNT=10000`), idle and loaded; torch (fused q/k/v, "
          "`OMP_WAIT_POLICY=PASSIVE`) idle (the table above) and loaded, run right after peftc beside the "
          "same busy loops. Slow-down = loaded / idle step time; the last column is peftc's slow-down over "
          "torch's (below 1: peftc suffers less).")
        p("")
        p("| workload | batch × seq | precision | peftc idle ms | peftc loaded ms | peftc slow-down "
          "| torch idle ms | torch loaded ms | torch slow-down | **peftc / torch slow-down** "
          "| loaded: peftc/torch speed |")
        p("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n, desc in rows:
            bt = n.split(".")[-1].replace("x", " × ")
            for prec, sfx in PRECS:
                a, al = res.get(f"peftc{sfx}-spin10k.{n}"), res.get(f"load.peftc{sfx}-spin10k.{n}")
                t, tl = res.get(f"torch{sfx}-fused.{n}") or res.get(f"torch{sfx}.{n}"), res.get(f"load.torch{sfx}.{n}")
                if not (a and al):
                    continue
                sa = ratio(num(al, "median_ms"), num(a, "median_ms"))
                st = ratio(num(tl, "median_ms"), num(t, "median_ms")) if t and tl else float("nan")
                p(f"| {desc} | {bt} | {prec} | {fmt(num(a, 'median_ms'))} | {fmt(num(al, 'median_ms'))} "
                  f"| {fmt(sa, 2)}× | {fmt(num(t, 'median_ms')) if t else '–'} "
                  f"| {fmt(num(tl, 'median_ms')) if tl else '–'} | {fmt(st, 2)}× | **{fmt(ratio(sa, st), 2)}** "
                  f"| {fmt(ratio(num(tl, 'median_ms'), num(al, 'median_ms')), 2) if tl else '–'}× |")
        p("")

    # FLOP utilisation
    rows = [(n, d) for n, d in TRAIN + INFER if f"peftc.{n}" in res or f"peftc-bf16.{n}" in res]
    if rows:
        p("## FLOP utilisation (matmul FLOPs per step / median step time, vs the measured peaks)")
        p("")
        p("| workload | batch × seq | precision | GFLOP per step | peftc GFLOPS | peftc % of sgemm peak "
          "| peftc % of bf16 peak | peftc PASSIVE GFLOPS | torch GFLOPS | torch % of sgemm peak "
          "| torch % of bf16 peak |")
        p("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        gf = {}
        for n, desc in rows:
            bt = n.split(".")[-1].replace("x", " × ")
            for prec, sfx in PRECS:
                a, ap, t = (res.get(f"peftc{sfx}.{n}"), res.get(f"peftc{sfx}-passive.{n}"),
                            res.get(f"torch{sfx}.{n}"))
                if not a:
                    continue
                g = num(a, "gflop")
                ga = g / (num(a, "median_ms") / 1e3)
                gp = g / (num(ap, "median_ms") / 1e3) if ap else float("nan")
                gt = g / (num(t, "median_ms") / 1e3) if t else float("nan")
                gf[(n, prec)] = (g, ga, gt)
                b16 = prec == "bf16"
                bold = "**" if n.startswith("train.lora") else ""
                p(f"| {bold}{('train ' if n.startswith('train') else 'infer ') + desc}{bold} | {bt} "
                  f"| {prec_cell(n, prec)} | {fmt(g, 1)} "
                  f"| {bold}{fmt(ga)}{bold} | {bold}{pct(100 * ga / peak)}{bold} "
                  f"| {bold + pct(100 * ga / peak16) + bold if b16 else '–'} | {fmt(gp)} "
                  f"| {fmt(gt)} | {pct(100 * gt / peak)} | {pct(100 * gt / peak16) if b16 else '–'} |")
        p("")
        head = "train.lora.32x64"
        if (head, "fp32") in gf or (head, "bf16") in gf:
            parts = []
            for prec in ("fp32", "bf16"):
                if (head, prec) not in gf:
                    continue
                g, ga, gt = gf[(head, prec)]
                pk, pkn = (peak16, "bf16") if prec == "bf16" else (peak, "sgemm")
                has_pk = not math.isnan(pk)
                parts.append(f"{prec}: peftc **{fmt(ga)} GFLOPS**"
                             + (f", {pct(100 * ga / pk)} of the {pkn} peak" if has_pk else "")
                             + (f" ({fmt(ga / peak, 2)}× the sgemm peak)" if prec == "bf16" and not math.isnan(peak) else "")
                             + f"; torch{' autocast' if prec == 'bf16' else ''} {fmt(gt)} GFLOPS"
                             + (f", {pct(100 * gt / pk)}" if has_pk else ""))
            p(f"**LoRA step at 32 × 64** ({fmt(gf.get((head, 'fp32'), gf.get((head, 'bf16')))[0], 1)} GFLOP): "
              + ". ".join(parts) + ".")
            p("")
        p("FLOPs counted (2 per multiply-add): forward of every linear, the attention's QKᵀ and PV "
          "(keys include the prefix), the deltas, pooler and classifier; backward: every matmul's "
          "activation gradient (all 6 layers, including layer 0's input gradient, which nothing "
          "below needs: ~2% of a LoRA step), the 4 attention matmuls, and weight gradients only of "
          "trainable weights (full: all). Embedding lookups, LayerNorm, GELU, softmax, dropout and "
          "AdamW are not counted.")
        p("")

    # checks
    p("## Checks")
    p("")
    for n, desc in TRAIN + INFER:
        for _, sfx in PRECS:
            a = res.get(f"peftc{sfx}.{n}")
            for impl in (f"torch{sfx}-fused", f"torch{sfx}-separate"):
                t = res.get(f"{impl}.{n}")
                if a and t and a.get("trainable") != t.get("trainable"):
                    problems.append(f"{n}: trainable parameters differ: peftc{sfx} {a.get('trainable')}, "
                                    f"{impl} {t.get('trainable')}")
    if torch_layout:
        p("- torch's query/key/value projections: " + "; ".join(
            f"{n}: {lay} (" + ", ".join(f"{q} {ms:.0f} ms" for q, ms in c) + ")"
            for n, (lay, c) in torch_layout.items()) + " — the table uses the faster undisturbed one")
    p("- trainable parameters, peftc = torch: "
      + ("yes for every workload" if not any("trainable" in x for x in problems) else "**NO** (below)"))
    falls = []
    for n, desc in TRAIN:
        parts = []
        for impl in ("peftc", "peftc-passive", "torch-fused", "torch-separate", "peftc-bf16", "peftc-bf16-passive",
                     "torch-bf16-fused", "torch-bf16-separate"):
            r = res.get(f"{impl}.{n}")
            if not r:
                continue
            l0, l1 = num(r, "loss_first"), num(r, "loss_last")
            ok = math.isfinite(l0) and math.isfinite(l1) and l1 < l0
            if not ok:
                problems.append(f"{impl}.{n}: loss {l0} -> {l1} does not fall")
            parts.append(f"{impl} {l0:.4f} → {l1:.4f}{'' if ok else ' **(does not fall)**'}")
        if parts:
            falls.append(f"  - {n} (lr {res.get(f'peftc.{n}', res.get(f'torch.{n}', {})).get('lr', '?')}): "
                         + "; ".join(parts))
    if falls:
        p("- loss on the repeated batch, first → last step (finite and falling: the steps train):")
        out.extend(falls)

    def logits(label):
        r = res.get(label)
        return [float(x) for x in r["logits"].split(",")] if r and "logits" in r else None

    pairs = [("peftc.infer.lora.32x64", "torch-fused.infer.lora.32x64", "unmerged LoRA, peftc vs torch (fused q/k/v)"),
             ("peftc.infer.lora-merged.32x64", "torch-fused.infer.lora-merged.32x64", "merged LoRA, peftc vs torch (fused q/k/v)"),
             ("peftc.infer.lora.32x64", "torch-separate.infer.lora.32x64", "unmerged LoRA, peftc vs torch (separate q/k/v)"),
             ("peftc.infer.lora-merged.32x64", "torch-separate.infer.lora-merged.32x64", "merged LoRA, peftc vs torch (separate q/k/v)"),
             ("peftc.infer.lora.32x64", "peftc.infer.lora-merged.32x64", "peftc merged vs unmerged"),
             ("torch.infer.lora.32x64", "torch.infer.lora-merged.32x64", "torch merged vs unmerged")]
    # bf16 against fp32, and the two bf16 implementations against each other
    pairs16 = [("peftc-bf16.infer.lora.32x64", "peftc.infer.lora.32x64", "unmerged LoRA, peftc bf16 vs peftc fp32"),
               ("peftc-bf16.infer.lora-merged.32x64", "peftc.infer.lora-merged.32x64",
                "merged LoRA, peftc bf16 vs peftc fp32"),
               ("torch-bf16.infer.lora.32x64", "torch.infer.lora.32x64", "unmerged LoRA, torch autocast vs torch fp32"),
               ("torch-bf16.infer.lora-merged.32x64", "torch.infer.lora-merged.32x64",
                "merged LoRA, torch autocast vs torch fp32"),
               ("peftc-bf16.infer.lora.32x64", "torch-bf16.infer.lora.32x64", "unmerged LoRA, peftc bf16 vs torch autocast"),
               ("peftc-bf16.infer.lora.32x64", "peftc-bf16.infer.lora-merged.32x64", "peftc bf16 merged vs unmerged")]

    def compare(pairs, tol):
        lines = []
        for x, y, what in pairs:
            a, b = logits(x), logits(y)
            if not a or not b:
                continue
            scale = max(abs(v) for v in a + b) or 1.0
            d = max(abs(u - v) for u, v in zip(a, b)) if len(a) == len(b) else float("inf")
            ok = d / scale <= tol
            if not ok:
                problems.append(f"logits {what}: max abs diff {d:.3g} (max |logit| {scale:.3g})")
            lines.append(f"  - {what}: max abs diff {d:.2g} (max |logit| {scale:.2g}, relative "
                         f"{d / scale:.1g}){'' if ok else ' **FAIL**'}")
        return lines
    lines = compare(pairs, LOGIT_TOL)
    if lines:
        p("- inference logits of all 32 sequences, with the same deterministic classifier and LoRA values "
          f"on both sides (relative tolerance {LOGIT_TOL:g}):")
        out.extend(lines)
    lines = compare(pairs16, BF16_LOGIT_TOL)
    if lines:
        p(f"- bf16 inference logits (relative tolerance {BF16_LOGIT_TOL:g}; relative = max abs diff / max |logit|):")
        out.extend(lines)
    if problems:
        p("")
        p("**Problems:**")
        out.extend(f"- {x}" for x in problems)
    print("\n".join(out))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
