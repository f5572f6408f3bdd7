#!/usr/bin/env python3
"""Driver of bench/lm_train.sh (see there): makes the token rows, runs every
case as its own process under /usr/bin/time -v, and prints the table.

  lm_train.py WORK_DIR GGUF HF_DIR DATA.jsonl

Environment: B (8), T (256), STEPS (3: the first is a warm-up, the rest are
timed), THREADS (2), R (8), ALPHA (16), TARGETS (q_proj,v_proj), CASES (the
list below, comma-separated), LR (5e-4).

Every side trains on the same B x T token rows: texts of GSM8K train
examples ("Question: ...\\nAnswer: ..." joined until a text is longer than T
tokens), tokenised with HF tokenizers from the model's tokenizer.json for
torch, and given to peftc as {"text": ...} lines with --max-len T, which keeps
each text's first T tokens (the same ids: tests/check_lm_data.sh). peftc's
per-step time is the gap between its consecutive "step k/N" progress lines
(read as they arrive); torch's is timed around the step inside the process.
Peak RSS is /usr/bin/time -v's maximum resident set size of the process
(loading included)."""
import json
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PY = "/usr/bin/python3"


def env(k, d):
    return os.environ.get(k, d)


def make_rows(work, hf, data, B, T, steps):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(hf, "tokenizer.json"))
    texts, rows, cur = [], [], []
    need = B * steps
    with open(data, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            cur.append(f"Question: {d['question']}\nAnswer: {d['answer']}")
            s = "\n\n".join(cur)
            ids = tok.encode(s, add_special_tokens=False).ids
            if len(ids) > T:
                texts.append(s)
                rows.append(ids[:T])
                cur = []
                if len(rows) == need:
                    break
    if len(rows) < need:
        sys.exit(f"lm_train.py: {data} gives only {len(rows)} rows of {T} tokens, {need} needed")
    with open(os.path.join(work, "texts.jsonl"), "w", encoding="utf-8") as f:
        for s in texts:
            f.write(json.dumps({"text": s}) + "\n")
    with open(os.path.join(work, "rows.json"), "w") as f:
        json.dump(rows, f)
    return os.path.join(work, "texts.jsonl"), os.path.join(work, "rows.json")


def timed(cmd, envx, log):
    """runs cmd under /usr/bin/time -v; returns (stdout, [(t, stderr line)], peak MiB, rc)"""
    e = dict(os.environ)
    e.update(envx)
    p = subprocess.Popen(["/usr/bin/time", "-v"] + cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e,
                         text=True, cwd=REPO)
    lines = []
    for line in p.stderr:
        lines.append((time.perf_counter(), line.rstrip("\n")))
    out = p.stdout.read()
    rc = p.wait()
    with open(log, "w") as f:
        f.write("+ " + " ".join(cmd) + "\n" + out + "\n".join(l for _, l in lines) + "\n")
    rss = None
    for _, l in lines:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", l)
        if m:
            rss = int(m.group(1)) / 1024
    return out, lines, rss, rc


def main():
    work, gguf, hf, data = sys.argv[1:5]
    B, T, steps, threads = int(env("B", 8)), int(env("T", 256)), int(env("STEPS", 3)), int(env("THREADS", 2))
    r, alpha, targets, lr = int(env("R", 8)), env("ALPHA", "16"), env("TARGETS", "q_proj,v_proj"), env("LR", "5e-4")
    cases = env("CASES", "torch-fp32,peftc-q4_1,peftc-f32,peftc-bf16,peftc-nf4,peftc-qlora,torch-bf16").split(",")
    os.makedirs(work, exist_ok=True)
    texts, rows = make_rows(work, hf, data, B, T, steps)
    base_env = {"OMP_NUM_THREADS": str(threads)}
    res = {}
    for c in cases:
        log = os.path.join(work, c + ".log")
        print(f"lm_train: {c} ...", file=sys.stderr, flush=True)
        if c.startswith("torch-"):
            # Debian/PyPI torch's OpenMP pool spins beside OpenBLAS otherwise (bench/README.md)
            out, lines, rss, rc = timed([PY, os.path.join(HERE, "torch_lm_step.py"), hf, rows, c[6:], str(r), alpha,
                                         targets, str(steps), str(threads), lr],
                                        dict(base_env, OMP_WAIT_POLICY="PASSIVE"), log)
            if rc:
                res[c] = {"error": f"exit {rc}, see {log}"}
                continue
            j = json.loads(out.strip().splitlines()[-1])
            st = j["step_seconds"][1:] or j["step_seconds"]
            res[c] = {"s_step": statistics.median(st), "tok_step": j["tokens_per_step"], "rss": rss,
                      "loss": j["losses"], "trainable": j["trainable"]}
            continue
        kind = c[6:]
        model, extra = hf, []
        if kind.endswith("-ckpt"):   # gradient checkpointing
            kind, extra = kind[:-5], ["--gradient-checkpointing"]
        if kind == "q4_1":
            model = gguf
        elif kind == "f32":
            extra += ["--fp32"]
        elif kind == "bf16":
            extra += ["--bf16"]
        elif kind == "nf4":
            extra += ["--quantize", "nf4"]
        meth = ["--method", "lora", "--r", str(r), "--alpha", alpha, "--lora-dropout", "0", "--target-modules", targets]
        if kind == "qlora":   # the method's own defaults (r 64, alpha 16, dropout 0.1, every linear layer)
            meth = ["--method", "qlora"]
        out_dir = os.path.join(work, "run-" + c[6:])
        cmd = ["./peftc", "train", "--model", model, "--train", texts, "--format", "text", "--max-len", str(T),
               "--batch", str(B), "--max-steps", str(steps), "--lr", lr, "--weight-decay", "0.01", "--clip", "1.0",
               "--warmup-ratio", "0", "--schedule", "constant", "--threads", str(threads), "--out", out_dir] + meth + extra
        out, lines, rss, rc = timed(cmd, base_env, log)
        if rc:
            res[c] = {"error": f"exit {rc}: " + next((l for _, l in lines if l.startswith("peftc")), "") + f" (see {log})"}
            continue
        st, losses = {}, []
        for t, l in lines:
            m = re.match(r"step (\d+)/\d+ .*?loss ([0-9.naninf]+)", l)
            if m:
                st[int(m.group(1))] = t
                losses.append(float(m.group(2)))
        gaps = [st[k] - st[k - 1] for k in sorted(st) if k - 1 in st]
        tr = next((l for _, l in lines if l.startswith("trainable params")), "")
        m = re.search(r"trainable params: (\d+)", tr)
        bpp = next((re.search(r"NF4 base: ([0-9.]+)", l).group(1) for _, l in lines if "NF4 base:" in l), None)
        res[c] = {"s_step": statistics.median(gaps) if gaps else float("nan"), "tok_step": B * T, "rss": rss,
                  "loss": losses, "trainable": int(m.group(1)) if m else None, "nf4_bytes": bpp}
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump({"B": B, "T": T, "steps": steps, "threads": threads, "r": r, "alpha": alpha, "targets": targets,
                   "cases": res}, f, indent=1)
    ref = res.get("torch-fp32", {})
    print(f"SmolLM2-135M LoRA training, batch {B} x {T} tokens, {threads} threads, LoRA r {r} alpha {alpha} on "
          f"{targets} (peftc-qlora: its defaults), median of {max(steps - 1, 1)} timed steps\n")
    print("| case | s/step | tokens/s | peak RSS MiB | tokens/s vs torch fp32 | RSS vs torch fp32 | losses |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for c in cases:
        x = res.get(c, {})
        if "error" in x:
            print(f"| {c} | {x['error']} | | | | | |")
            continue
        tps = x["tok_step"] / x["s_step"]
        rt = f"{tps / (ref['tok_step'] / ref['s_step']):.2f}x" if "s_step" in ref else "-"
        rr = f"{x['rss'] / ref['rss']:.3f}" if ref.get("rss") and x.get("rss") else "-"
        print(f"| {c} | {x['s_step']:.2f} | {tps:.1f} | {x['rss']:.0f} | {rt} | {rr} | "
              f"{' '.join(f'{v:.3f}' for v in x['loss'])} |")
    q, b = res.get("peftc-nf4", {}), res.get("peftc-bf16", {})
    if "s_step" in q and "s_step" in b:
        print(f"\npeftc NF4 base (QLoRA storage) tokens/s / peftc LoRA on the bf16 path: {b['s_step'] / q['s_step']:.2f}x")


if __name__ == "__main__":
    main()
