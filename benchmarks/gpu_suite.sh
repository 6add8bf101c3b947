#!/usr/bin/env bash
# The GPU checks in one call, sized for a short device lease (about 10 minutes on an H100/H200):
#   bash benchmarks/gpu_suite.sh OUTDIR
# 1. TTFT / decode / KV at LLaVA-OneVision-7B dims (random bf16 weights, 32 frames)
# 2. HoliTom's own ops, eager vs compiled (Triton), 32 x 196 x 3584
# 3. the merge from 16 to 256 frames: time per frame, peak memory, compile time
# Each step writes its JSON and PNG under OUTDIR and its log to OUTDIR/*.log; a failing step does not
# stop the others (the exit status is the number of failed steps).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: bash benchmarks/gpu_suite.sh OUTDIR}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1 || true
python -c "import torch, transformers; print(torch.__version__, torch.version.cuda, transformers.__version__)" \
    > "$out/versions.txt" 2>&1
failed=0
step() {  # name, command...
    local name="$1"; shift
    echo "== $name: $*"
    if ! timeout 420 "$@" > "$out/$name.log" 2>&1; then
        echo "   failed (see $out/$name.log)"; failed=$((failed + 1))
    fi
    tail -n 15 "$out/$name.log"
}
step latency python benchmarks/latency.py --preset 7b --device cuda --repeats 5 --out "$out/latency"
step bench_ops python benchmarks/bench_ops.py --device cuda --repeats 10 --out "$out/bench_ops"
step scaling python benchmarks/scaling.py --device cuda --frames 16 32 64 128 256 --out "$out/scaling"
exit "$failed"
