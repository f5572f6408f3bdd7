#!/usr/bin/env python3
"""report.py: bench/run's raw result lines -> the markdown report (stdout).

  report.py build/bench/raw.txt

Lines: "META key=K value=V", "RESULT impl=... label=L rss_kib=N ...",
"FAILED label=L". Exit 1 when a check fails (parameter counts differ, a loss
is not finite or does not fall, inference logits of peftc and torch or of
merged and unmerged LoRA disagree) or a run failed.
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
OTHER_TOL = 0.1    # CPUs other processes kept busy during a run above which its time is flagged


def parse(path):
    meta, res, failed = {}, {}, []
    for line in open(path):
        f = line.split()
        if not f:
            continue
        kv = dict(x.split("=", 1) for x in f[1:] if "=" in x)
        if f[0] == "META":
            meta[kv["key"]] = kv.get("value", "").replace("_", " ")
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
        cands = [(num(res[k], "median_ms"), k) for k in (f"torch.{n}", f"torch-separate.{n}") if k in res]
        # the faster of the undisturbed runs (all runs if every one was disturbed)
        clean = [c for c in cands if num(res[c[1]], "other_cpus") <= OTHER_TOL]
        if cands:
            best = min(clean or cands)[1]
            torch_layout[n] = (res[best].get("qkv", "?"), [(res[k].get("qkv", "?") + flag(res[k]), ms) for ms, k in cands])
            res[f"torch-fused.{n}"] = res.get(f"torch.{n}")
            res[f"torch.{n}"] = res[best]
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
    p(f"- timing: {meta.get('warmup', '2')} warm-up steps, then >= {meta.get('min_steps', '5')} steps and "
      f">= {meta.get('min_seconds', '3')} s; the **median** step; peak RSS = /usr/bin/time -v's maximum "
      f"resident set size of the workload's own process (model load included)")
    load_note = (f"- machine load: {fmt(busy, 0)}% of the CPUs busy just before the run, "
                 f"{fmt(busy_after, 0)}% just after")
    others = meta.get("others_before", "")
    if others:
        load_note += f" (busiest other processes before: {others})"
    # the labels as run (torch.* now holds the chosen layout; torch-fused.* the fused run)
    ran = {k: r for k, r in res.items() if not (k.startswith("torch.") and f"torch-fused.{k[6:]}" in res)}
    flagged = sorted(r["label"] for r in ran.values() if num(r, "other_cpus") > OTHER_TOL)
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

    def ratio(a, b):
        return a / b if a and b and not math.isnan(a) and not math.isnan(b) else float("nan")

    # training
    rows = [(n, d) for n, d in TRAIN if f"peftc.{n}" in res or f"torch.{n}" in res]
    if rows:
        p("## Training step (median)")
        p("")
        p("| workload | batch × seq | trainable params | peftc ms | peftc tok/s | peftc PASSIVE tok/s "
          "| torch ms | torch tok/s | **speed peftc/torch** | peftc RSS MiB | torch RSS MiB "
          "| **memory torch/peftc** |")
        p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n, desc in rows:
            a, ap, t = res.get(f"peftc.{n}", {}), res.get(f"peftc-passive.{n}", {}), res.get(f"torch.{n}", {})
            bt = n.split(".")[-1].replace("x", " × ")
            sp, spp = ratio(num(a, "tokens_per_s"), num(t, "tokens_per_s")), \
                ratio(num(ap, "tokens_per_s"), num(t, "tokens_per_s"))
            sp_s = fmt(sp, 2) + "×" + (f" (PASSIVE {fmt(spp, 2)}×)" if not math.isnan(spp) else "")
            p(f"| {desc} | {bt} | {int(num(a or t, 'trainable')):,} | {fmt(num(a, 'median_ms'))}{flag(a)} "
              f"| {fmt(num(a, 'tokens_per_s'), 0)} | {fmt(num(ap, 'tokens_per_s'), 0)}{flag(ap)} "
              f"| {fmt(num(t, 'median_ms'))}{flag(t)} | {fmt(num(t, 'tokens_per_s'), 0)} | {sp_s} "
              f"| {fmt(num(a, 'rss_kib') / 1024, 0)} | {fmt(num(t, 'rss_kib') / 1024, 0)} "
              f"| {fmt(ratio(num(t, 'rss_kib'), num(a, 'rss_kib')), 2)}× |")
        p("")

    rows = [(n, d) for n, d in INFER if f"peftc.{n}" in res or f"torch.{n}" in res]
    if rows:
        p("## Inference (eval mode, no gradients; median batch)")
        p("")
        p("| workload | batch × seq | peftc ms | peftc sent/s | peftc PASSIVE sent/s | torch ms "
          "| torch sent/s | **speed peftc/torch** | peftc RSS MiB | torch RSS MiB | **memory torch/peftc** |")
        p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n, desc in rows:
            a, ap, t = res.get(f"peftc.{n}", {}), res.get(f"peftc-passive.{n}", {}), res.get(f"torch.{n}", {})
            bt = n.split(".")[-1].replace("x", " × ")
            sp, spp = ratio(num(a, "seq_per_s"), num(t, "seq_per_s")), ratio(num(ap, "seq_per_s"), num(t, "seq_per_s"))
            sp_s = fmt(sp, 2) + "×" + (f" (PASSIVE {fmt(spp, 2)}×)" if not math.isnan(spp) else "")
            p(f"| {desc} | {bt} | {fmt(num(a, 'median_ms'))}{flag(a)} | {fmt(num(a, 'seq_per_s'))} "
              f"| {fmt(num(ap, 'seq_per_s'))}{flag(ap)} | {fmt(num(t, 'median_ms'))}{flag(t)} | {fmt(num(t, 'seq_per_s'))} "
              f"| {sp_s} | {fmt(num(a, 'rss_kib') / 1024, 0)} | {fmt(num(t, 'rss_kib') / 1024, 0)} "
              f"| {fmt(ratio(num(t, 'rss_kib'), num(a, 'rss_kib')), 2)}× |")
        p("")

    # FLOP utilisation
    rows = [(n, d) for n, d in TRAIN + INFER if f"peftc.{n}" in res]
    if rows:
        p("## FLOP utilisation (matmul FLOPs per step / median step time, vs the sgemm peak)")
        p("")
        p("| workload | batch × seq | GFLOP per step | peftc GFLOPS | peftc % of peak | peftc PASSIVE GFLOPS "
          "| torch GFLOPS | torch % of peak |")
        p("|---|---|---:|---:|---:|---:|---:|---:|")
        for n, desc in rows:
            a, ap, t = res.get(f"peftc.{n}", {}), res.get(f"peftc-passive.{n}", {}), res.get(f"torch.{n}", {})
            g = num(a, "gflop")
            bt = n.split(".")[-1].replace("x", " × ")
            ga = g / (num(a, "median_ms") / 1e3)
            gp = g / (num(ap, "median_ms") / 1e3) if ap else float("nan")
            gt = g / (num(t, "median_ms") / 1e3) if t else float("nan")
            bold = "**" if n.startswith("train.lora") else ""
            p(f"| {bold}{('train ' if n.startswith('train') else 'infer ') + desc}{bold} | {bt} | {fmt(g, 1)} "
              f"| {bold}{fmt(ga)}{bold} | {bold}{pct(100 * ga / peak)}{bold} | {fmt(gp)} "
              f"| {fmt(gt)} | {pct(100 * gt / peak)} |")
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
        a = res.get(f"peftc.{n}")
        for impl in ("torch-fused", "torch-separate"):
            t = res.get(f"{impl}.{n}")
            if a and t and a.get("trainable") != t.get("trainable"):
                problems.append(f"{n}: trainable parameters differ: peftc {a.get('trainable')}, {impl} {t.get('trainable')}")
    if torch_layout:
        p("- torch's query/key/value projections: " + "; ".join(
            f"{n}: {lay} (" + ", ".join(f"{q} {ms:.0f} ms" for q, ms in c) + ")"
            for n, (lay, c) in torch_layout.items()) + " — the table uses the faster undisturbed one")
    p("- trainable parameters, peftc = torch: "
      + ("yes for every workload" if not any("trainable" in x for x in problems) else "**NO** (below)"))
    falls = []
    for n, desc in TRAIN:
        parts = []
        for impl in ("peftc", "peftc-passive", "torch-fused", "torch-separate"):
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
    lines = []
    for x, y, what in pairs:
        a, b = logits(x), logits(y)
        if not a or not b:
            continue
        scale = max(abs(v) for v in a + b) or 1.0
        d = max(abs(u - v) for u, v in zip(a, b)) if len(a) == len(b) else float("inf")
        ok = d / scale <= LOGIT_TOL
        if not ok:
            problems.append(f"logits {what}: max abs diff {d:.3g} (max |logit| {scale:.3g})")
        lines.append(f"  - {what}: max abs diff {d:.2g} (max |logit| {scale:.2g}){'' if ok else ' **FAIL**'}")
    if lines:
        p("- inference logits of all 32 sequences, with the same deterministic classifier and LoRA values "
          f"on both sides (relative tolerance {LOGIT_TOL:g}):")
        out.extend(lines)
    if problems:
        p("")
        p("**Problems:**")
        out.extend(f"- {x}" for x in problems)
    print("\n".join(out))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
