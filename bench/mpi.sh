#!/usr/bin/env bash
# bench/mpi.sh: data-parallel training on this machine and a model of it on
# more machines (README "Data-parallel training on MPI").
#   1. bytes all-reduced per optimizer step for LoRA, adapters, prefix and full
#      fine-tuning of all-MiniLM-L6-v2 (metrics.json allreduce_bytes_per_step
#      of a 2-rank run: the trainable block, padded to 16 floats per tensor,
#      plus the loss);
#   2. step time and tokens/s on SST-2 (LoRA and full, batch BATCH x 64
#      tokens): 1 process x 2 threads against 2 ranks x 1 thread;
#   3. a model of N machines like this one (8, 64) on 10 and 100 GbE: a step
#      is compute (the measured per-row time of 1 x 2 threads, over N
#      machines) plus a ring all-reduce (2 (N-1)/N x bytes / bandwidth +
#      2 (N-1) x latency), not overlapped; and the global batch above which
#      the all-reduce is under 10% of the step.
# Environment: MODEL (models/all-MiniLM-L6-v2), DATA (../shared/data/glue-sst2/train.tsv),
# STEPS (20), BATCH (32). Writes build/bench/mpi.md.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-models/all-MiniLM-L6-v2}
DATA=${DATA:-../shared/data/glue-sst2/train.tsv}
STEPS=${STEPS:-20}
BATCH=${BATCH:-32}
PY=${PYTHON:-/usr/bin/python3}
MPIRUN="mpirun --allow-run-as-root --oversubscribe --mca btl self,vader"
W=$(mktemp -d /tmp/peftc_bench_mpi.XXXXXX)
trap 'rm -rf "$W"' EXIT
mkdir -p build/bench
head -n 2001 "$DATA" >"$W/train.tsv"
export PEFTC_BF16=0 OMP_WAIT_POLICY=PASSIVE

# 1. bytes per step
for m in lora adapter-pfeiffer adapter-houlsby prefix full; do
    OMP_NUM_THREADS=1 $MPIRUN -np 2 ./peftc train --model "$MODEL" --train "$W/train.tsv" --method $m --max-steps 1 \
        --batch 2 --max-len 16 --out "$W/bytes.$m" >"$W/bytes.$m.log" 2>&1
done

# 2. step time: 1 x 2 threads, 2 ranks x 1 thread
for m in lora full; do
    args="--model $MODEL --train $W/train.tsv --method $m --max-steps $STEPS --batch $BATCH --max-len 64"
    OMP_NUM_THREADS=2 /usr/bin/time -f "%U %S" -o "$W/t1.$m.cpu" ./peftc train $args --out "$W/t1.$m" >"$W/t1.$m.log" 2>&1
    OMP_NUM_THREADS=1 $MPIRUN -np 2 ./peftc train $args --out "$W/t2.$m" >"$W/t2.$m.log" 2>&1
done

"$PY" - "$W" "$BATCH" <<'EOF' | tee build/bench/mpi.md
import json, sys
w, B = sys.argv[1], int(sys.argv[2])
M = lambda p: json.load(open(f"{w}/{p}/metrics.json"))
print("| method | trainable params | bytes all-reduced per step |")
print("|---|---:|---:|")
nbytes = {}
for m in ["lora", "adapter-pfeiffer", "adapter-houlsby", "prefix", "full"]:
    j = M(f"bytes.{m}")
    nbytes[m] = j["allreduce_bytes_per_step"]
    print(f"| {m} | {j['trainable_params']:,} | {nbytes[m]:,} ({nbytes[m] / 1e6:.2f} MB) |")
print()
print("(The all-reduce column below is the time inside the call, waiting for the slower rank included.)")
print()
print(f"| method, batch {B} x 64 | layout | s per step | tokens/s | all-reduce s per step |")
print("|---|---|---:|---:|---:|")
row_s, wall_row = {}, {}
for m in ["lora", "full"]:
    for tag, lay in [("t1", "1 process x 2 threads"), ("t2", "2 ranks x 1 thread")]:
        j = M(f"{tag}.{m}")
        st = j["train_seconds"] / j["train_steps"]
        if tag == "t1":
            # compute per row on an idle machine: the run's CPU seconds over its 2 threads (this
            # machine is shared: wall time includes waiting for the cores)
            cpu = sum(map(float, open(f"{w}/t1.{m}.cpu").read().split()))
            row_s[m] = cpu / 2 / j["train_steps"] / B
            wall_row[m] = st / B
        print(f"| {m} | {lay} | {st:.3f} | {j['train_tokens_per_s']:.0f} | {j['allreduce_seconds'] / j['train_steps']:.4f} |")
print()
for m in row_s:
    print(f"{m}: compute {row_s[m] * 1e3:.1f} ms per row from CPU time ({wall_row[m] * 1e3:.1f} ms wall, shared machine)  ")
print()
print("Model: N machines like this one (2 cores each), per-row compute of 1 process x 2 threads (CPU time),")
print("ring all-reduce 2(N-1)/N x bytes / bandwidth + 2(N-1) x 50 us, not overlapped with the backward.")
print()
print("| method | N | link | step at global batch 256 (s) | efficiency at 256 | at 1024 | global batch for comm < 10% |")
print("|---|---:|---|---:|---:|---:|---:|")
for m in ["lora", "full"]:
    for N in [8, 64]:
        for link, bw in [("10 GbE", 10e9 / 8), ("100 GbE", 100e9 / 8)]:
            comm = 2 * (N - 1) / N * nbytes[m] / bw + 2 * (N - 1) * 50e-6
            eff = lambda G: (G * row_s[m] / N) / (G * row_s[m] / N + comm)
            step = 256 * row_s[m] / N + comm
            need = 9 * comm * N / row_s[m]   # compute >= 9 x comm
            print(f"| {m} | {N} | {link} | {step:.3f} | {eff(256):.0%} | {eff(1024):.0%} | {need:,.0f} |")
EOF
