#!/usr/bin/env bash
# The GPU checks in one call, sized for a short device lease (8 minutes end to end on one H100/H200):
#   bash benchmarks/gpu_suite.sh OUTDIR             # on a CUDA machine
#   bash benchmarks/gpu_suite.sh --dry-run OUTDIR   # on a CPU, tiny shapes, about a minute: the plumbing
# The machine needs torch (>= 2.11) and transformers (>= 5.17), not this package: the repository root goes
# on PYTHONPATH. networkx is needed too; pytest + hypothesis for the tests, matplotlib for the PNGs (each
# missing one is said, and what it costs). PYTHON names the interpreter (default: python).
# Steps, each with its log OUTDIR/<step>.log and its files under OUTDIR/<step>/:
#   tests      pytest -m device -k cuda: the compiled path on cuda (Inductor merges vs eager in bf16, the
#              HoliTom backend on a tiny LLaVA-OneVision: no fallback, graph break, recompile or host sync)
#   bench_ops  HoliTom's own ops, eager vs compiled, 32 x 196 x 3584 bf16
#   latency    TTFT (vision / HoliTom / LLM), decode tokens/s and KV bytes at LLaVA-OneVision-7B dims
#   scaling    the merge at 16, 64 and 256 frames; last, and skipped when the time left is short
# Then OUTDIR/summary.txt and summary.json: each GPU goal (HoliTom's nodes <= 5 ms, TTFT speed-up >= 2.5x,
# no graph break, no recompile, no device-to-host sync in the merged prefill) passed, failed or not evaluated.
# --dry-run: the same steps and files on the CPU with tiny shapes and Dynamo's eager backend (tests collected,
# not run: the CPU suite runs them), so that CI proves the script, the JSONs and the summary still fit.
# Exit status: failed steps plus failed goals (0: all ran and every evaluated goal passed).
set -uo pipefail

dry=0
if [[ "${1:-}" == "--dry-run" ]]; then dry=1; shift; fi
out="${1:?usage: bash benchmarks/gpu_suite.sh [--dry-run] OUTDIR}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$out" && out="$(cd "$out" && pwd)"
cd "$repo" || exit 1
py="${PYTHON:-python}"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1  # a step killed at its timeout still leaves its log

# Time caps per step (s) for the 8-minute budget; GPU_SUITE_BUDGET_S=N scales them to N s. GPU: estimated from
# the CPU runs in docs/results.md, not yet measured on a GPU (docs/results.md, "The GPU suite"). No step starts
# once the budget is spent.
budget=${GPU_SUITE_BUDGET_S:-480}
if ((dry)); then
    device=cpu; caps=(60 60 90 60); min_scaling=20
else
    device=cuda; caps=(100 70 270 120); min_scaling=45
fi
read -r cap_tests cap_bench_ops cap_latency cap_scaling <<< "$(for c in "${caps[@]}"; do echo -n "$((c * budget / 480)) "; done)"
started=$SECONDS
: > "$out/steps.tsv"

record() {  # name, status, seconds, detail
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$out/steps.tsv"
}

# Preflight: what the steps need, said up front; versions to OUTDIR/versions.txt.
"$py" - "$device" > "$out/versions.txt" 2> "$out/preflight.log" <<'EOF'
import importlib, platform, sys
print(f"python {platform.python_version()} ({sys.executable})")
missing = []
for name in ("torch", "transformers", "networkx", "holitom_fx", "pytest", "hypothesis", "matplotlib"):
    try:
        module = importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - an import that fails for any reason is missing here
        missing.append(name)
        print(f"{name} MISSING ({type(err).__name__}: {err})")
        continue
    where = f" ({module.__file__})" if name == "holitom_fx" else ""
    print(f"{name} {getattr(module, '__version__', '')}{where}")
if "torch" not in missing:
    import torch
    print(f"torch.version.cuda {torch.version.cuda}")
    print(f"cuda available {torch.cuda.is_available()}"
          + (f": {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    if sys.argv[1] == "cuda" and not torch.cuda.is_available():
        missing.append("cuda")
print("missing " + " ".join(missing))
sys.exit(1 if {"torch", "transformers", "networkx", "holitom_fx", "cuda"} & set(missing) else 0)
EOF
preflight=$?
cat "$out/versions.txt"
missing="$(sed -n 's/^missing //p' "$out/versions.txt")"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    > "$out/gpu.csv" 2>&1
if ((preflight != 0)); then
    echo "preflight failed: missing ${missing:-torch, transformers or holitom_fx} (see $out/versions.txt and" \
         "$out/preflight.log); torch, transformers, networkx and, without --dry-run, a CUDA device are required"
    record preflight failed $((SECONDS - started)) "missing: ${missing:-see preflight.log}"
    "$py" benchmarks/gpu_summary.py "$out" $( ((dry)) && echo --dry-run )
    exit 1
fi
record preflight ok $((SECONDS - started)) "${missing:+missing: $missing}"
[[ " $missing " == *" matplotlib "* ]] && echo "matplotlib missing: the benchmarks write their JSON, no PNG"

failed=0
step() {  # name, cap (s), command...
    local name="$1" cap="$2"; shift 2
    local left=$((budget - (SECONDS - started) - 5))  # 5 s kept for the summary
    local limit=$((cap < left ? cap : left))
    if ((limit < 10)); then
        echo "== $name: skipped, ${left}s of the ${budget}s budget left"
        record "$name" skipped 0 "budget spent"
        return
    fi
    echo "== $name (at most ${limit}s): $*"
    local t0=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
    rc=$?
    if ((rc == 0)); then
        record "$name" ok $((SECONDS - t0)) ""
    elif ((rc == 124 || rc == 137)); then
        echo "   timed out after ${limit}s (see $out/$name.log)"; failed=$((failed + 1))
        record "$name" timeout $((SECONDS - t0)) "killed after ${limit}s"
    else
        echo "   failed, exit $rc (see $out/$name.log)"; failed=$((failed + 1))
        record "$name" failed $((SECONDS - t0)) "exit $rc"
    fi
    tail -n 12 "$out/$name.log"
}

if [[ " $missing " == *" pytest "* || " $missing " == *" hypothesis "* ]]; then
    echo "== tests: skipped, pytest or hypothesis is not installed (missing: $missing)"
    record tests skipped 0 "missing: $missing"
elif ((dry)); then
    step tests "$cap_tests" "$py" -m pytest -q -p no:cacheprovider -m device --collect-only
else
    step tests "$cap_tests" "$py" -m pytest -q -p no:cacheprovider -m device -k cuda -rs \
        --junitxml="$out/tests.xml"
fi

if ((dry)); then
    step bench_ops "$cap_bench_ops" "$py" benchmarks/bench_ops.py --device cpu --compiler eager --frames 2 \
        --tokens 16 --dim 32 --vision-heads 2 --vision-patches 16 --vision-head-dim 8 --repeats 1 \
        --out "$out/bench_ops"
    step latency "$cap_latency" "$py" benchmarks/latency.py --preset tiny --device cpu --compiler eager \
        --frames 2 --new-tokens 2 --repeats 1 --retain-ratio 0.25 --out "$out/latency"
else
    step bench_ops "$cap_bench_ops" "$py" benchmarks/bench_ops.py --device cuda --repeats 10 --out "$out/bench_ops"
    step latency "$cap_latency" "$py" benchmarks/latency.py --preset 7b --device cuda --repeats 5 \
        --out "$out/latency"
fi

left=$((budget - (SECONDS - started) - 5))
if ((left < min_scaling)); then
    echo "== scaling: skipped, ${left}s of the ${budget}s budget left (it needs ${min_scaling}s)"
    record scaling skipped 0 "budget spent"
elif ((dry)); then
    step scaling "$cap_scaling" "$py" benchmarks/scaling.py --device cpu --compiler eager --frames 2 4 \
        --tokens 16 --dim 32 --repeats 1 --out "$out/scaling"
else
    step scaling "$cap_scaling" "$py" benchmarks/scaling.py --device cuda --frames 16 64 256 \
        --out "$out/scaling"
fi

echo "== summary ($((SECONDS - started))s so far)"
"$py" benchmarks/gpu_summary.py "$out" $( ((dry)) && echo --dry-run )
goals_failed=$?
exit $((failed + goals_failed))
