#!/usr/bin/env bash
# bench/mpi.sh: data-parallel training on this machine and a model of it on
# more machines (README "Data-parallel training on MPI").
#   1. bytes all-reduced per optimizer step for LoRA, adapters, prefix and full
#      fine-tuning of all-MiniLM-L6-v2 (metrics.json allreduce_bytes_per_step
#      of a 2-rank run: the trainable block, padded to 16 floats per tensor,
#      plus the loss), and how much of it the overlapped sum starts inside
#      the backward (allreduce_overlapped_bytes_per_step: the layers' buckets;
#      the embeddings, head and prefix MLP are summed after it);
#   2. step time and tokens/s on SST-2 (LoRA and full, batch BATCH x 64
#      tokens): 1 process x 2 threads, 2 ranks x 1 thread with the sum after
#      the backward (--dp-overlap off, the default on one machine) and
#      overlapped with it (--dp-overlap on), REPS rounds, the layouts
#      interleaved within a round, the median reported;
#   3. a model of N machines like this one (8, 64) on 10 and 100 GbE: a step
#      is compute (the measured per-row time of 1 x 2 threads, over N
#      machines) plus a ring all-reduce (2 (N-1)/N x bytes / bandwidth +
#      2 (N-1) x latency per sum), not overlapped and overlapped (the layers'
#      buckets travel during the backward of the layers below, the rest after
#      it); and the global batch above which the all-reduce is under 10% of
#      the step.
# Environment: MODEL (models/all-MiniLM-L6-v2), DATA (../shared/data/glue-sst2/train.tsv),
# STEPS (20), BATCH (32), REPS (3). Writes build/bench/mpi.md.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-models/all-MiniLM-L6-v2}
DATA=${DATA:-../shared/data/glue-sst2/train.tsv}
STEPS=${STEPS:-20}
BATCH=${BATCH:-32}
REPS=${REPS:-3}
PY=${PYTHON:-/usr/bin/python3}
MPIRUN="mpirun --allow-run-as-root --oversubscribe --mca btl self,vader"
W=$(mktemp -d /tmp/peftc_bench_mpi.XXXXXX)
trap 'rm -rf "$W"' EXIT
mkdir -p build/bench
head -n 2001 "$DATA" >"$W/train.tsv"
export PEFTC_BF16=0 OMP_WAIT_POLICY=PASSIVE
uptime >"$W/load"

# 1. bytes per step, and the part the backward starts
for m in lora adapter-pfeiffer adapter-houlsby prefix full; do
    OMP_NUM_THREADS=1 $MPIRUN -np 2 ./peftc train --model "$MODEL" --train "$W/train.tsv" --method $m --max-steps 1 \
        --batch 2 --max-len 16 --dp-overlap on --out "$W/bytes.$m" >"$W/bytes.$m.log" 2>&1
done

# 2. step time: 1 x 2 threads, 2 ranks x 1 thread without and with the overlap
for r in $(seq 1 "$REPS"); do
    for m in lora full; do
        args="--model $MODEL --train $W/train.tsv --method $m --max-steps $STEPS --batch $BATCH --max-len 64"
        OMP_NUM_THREADS=2 /usr/bin/time -f "%U %S" -o "$W/t1.$m.$r.cpu" ./peftc train $args --out "$W/t1.$m.$r" >"$W/t1.$m.$r.log" 2>&1
        OMP_NUM_THREADS=1 $MPIRUN -np 2 ./peftc train $args --dp-overlap off --out "$W/t2.$m.$r" >"$W/t2.$m.$r.log" 2>&1
        OMP_NUM_THREADS=1 $MPIRUN -np 2 ./peftc train $args --dp-overlap on --out "$W/t2o.$m.$r" >"$W/t2o.$m.$r.log" 2>&1
    done
done
uptime >>"$W/load"

"$PY" - "$W" "$BATCH" "$REPS" <<'PYEOF' | tee build/bench/mpi.md
import json, statistics, sys
w, B, R = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
M = lambda p: json.load(open(f"{w}/{p}/metrics.json"))
print("load (uptime) before and after: " + " / ".join(l.split("load average:")[1].strip() for l in open(f"{w}/load")))
print()
print("| method | trainable params | bytes all-reduced per step | of which started inside the backward (overlap on) |")
print("|---|---:|---:|---:|")
nbytes, early = {}, {}
for m in ["lora", "adapter-pfeiffer", "adapter-houlsby", "prefix", "full"]:
    j = M(f"bytes.{m}")
    nbytes[m], early[m] = j["allreduce_bytes_per_step"], j["allreduce_overlapped_bytes_per_step"]
    print(f"| {m} | {j['trainable_params']:,} | {nbytes[m]:,} ({nbytes[m] / 1e6:.2f} MB) | "
          f"{early[m] / 1e6:.2f} MB ({j['allreduce_buckets']} buckets, {j['allreduce_ranges']} sums in all) |")
print()
print(f"Median of {R} rounds (each round runs the three layouts one after the other); the all-reduce column is the")
print("time inside MPI calls per step, waiting for the slower rank included (overlapped: the starts and tests")
print("between layers and the final wait).")
print()
print(f"| method, batch {B} x 64 | layout | s per step (median) | min - max | tokens/s | all-reduce s per step |")
print("|---|---|---:|---|---:|---:|")
row_s, wall_row, step = {}, {}, {}
for m in ["lora", "full"]:
    for tag, lay in [("t1", "1 process x 2 threads"), ("t2", "2 ranks x 1 thread, sum after the backward"),
                     ("t2o", "2 ranks x 1 thread, sum overlapped")]:
        js = [M(f"{tag}.{m}.{r}") for r in range(1, R + 1)]
        st = [j["train_seconds"] / j["train_steps"] for j in js]
        med = statistics.median(st)
        step[tag, m] = med
        tok = statistics.median(j["train_tokens_per_s"] for j in js)
        ar = statistics.median(j["allreduce_seconds"] / j["train_steps"] for j in js)
        if tag == "t1":
            # compute per row on an idle machine: the run's CPU seconds over its 2 threads (this
            # machine is shared: wall time includes waiting for the cores)
            cpu = statistics.median(sum(map(float, open(f"{w}/t1.{m}.{r}.cpu").read().split())) / js[r - 1]["train_steps"]
                                    for r in range(1, R + 1))
            row_s[m] = cpu / 2 / B
            wall_row[m] = med / B
        print(f"| {m} | {lay} | {med:.3f} | {min(st):.3f} - {max(st):.3f} | {tok:.0f} | {ar:.4f} |")
print()
for m in row_s:
    print(f"{m}: compute {row_s[m] * 1e3:.1f} ms per row from CPU time ({wall_row[m] * 1e3:.1f} ms wall); "
          f"overlap on / off, 2 ranks: {step['t2o', m] / step['t2', m]:.3f}  ")
print()
print("Model: N machines like this one (2 cores each), per-row compute of 1 process x 2 threads (CPU time),")
print("ring all-reduce 2(N-1)/N x bytes / bandwidth + 2(N-1) x 50 us per sum. Not overlapped: compute + all-reduce.")
print("Overlapped (at best: the transport moves data during the backward): the backward is 2/3 of the compute,")
print("the layers' buckets (the bytes started inside the backward) travel from the end of the top layer's")
print("backward on (L = 6 layers), the rest (embeddings, head) after the backward.")
print()
print("| method | N | link | step at global batch 256 (s) | efficiency at 256 | at 1024 | global batch for comm < 10% | overlapped: step at 256 | efficiency at 256 | global batch for comm < 10% |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
L = 6
for m in ["lora", "full"]:
    for N in [8, 64]:
        for link, bw in [("10 GbE", 10e9 / 8), ("100 GbE", 100e9 / 8)]:
            ring = lambda b, k=1: 2 * (N - 1) / N * b / bw + k * 2 * (N - 1) * 50e-6
            comm = ring(nbytes[m])
            cb, cr = ring(early[m]), ring(nbytes[m] - early[m])
            comp = lambda G: G * row_s[m] / N
            plain = lambda G: comp(G) + comm
            # forward, then the backward with the buckets behind it, then the rest
            over = lambda G: comp(G) / 3 + max(2 * comp(G) / 3, 2 * comp(G) / 3 / L + cb) + cr
            need = 9 * comm * N / row_s[m]   # compute >= 9 x comm
            # overlapped: the smallest G whose exposed comm is under 10% of the step (bisection)
            lo, hi = 1.0, 1e9
            for _ in range(200):
                g = (lo * hi) ** 0.5
                lo, hi = (g, hi) if over(g) - comp(g) > 0.1 * over(g) else (lo, g)
            print(f"| {m} | {N} | {link} | {plain(256):.3f} | {comp(256) / plain(256):.0%} | {comp(1024) / plain(1024):.0%} | {need:,.0f} "
                  f"| {over(256):.3f} | {comp(256) / over(256):.0%} | {hi:,.0f} |")
PYEOF
