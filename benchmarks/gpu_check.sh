#!/usr/bin/env bash
# One command for a CUDA machine: the end-to-end tests on the GPU, then the GPU grid, with results,
# report and plots written into OUTDIR as each run finishes, stopping cleanly at a deadline.
#
#   bash benchmarks/gpu_check.sh OUTDIR DATA_DIR GGUF_PATH [SECONDS]
#
# Needs only a stock CUDA PyTorch image (torch, transformers >= 5, accelerate, pytest, pyyaml,
# matplotlib) and the `gguf` reader on PYTHONPATH; dsbs runs from this checkout, nothing is
# installed and nothing is downloaded. SECONDS (default 500) bounds the whole check.
# Overrides: GPU_CHECK_RECIPE (default recipes/gpu-smollm2.yaml), GPU_CHECK_JOBS (4),
# GPU_CHECK_TESTS (pytest arguments; default: the gpu-marked tests), PYTHON (python3),
# GPU_CHECK_THROUGHPUT=1 (first, benchmarks/train_throughput.py at batch 64: tokens/s, MFU and where a
# step's time goes, into train_throughput.log; about 2 minutes).
# OUTDIR gets: environment.json (versions, card, measured bf16 matmul peak), tests.log, grid.log,
# results.jsonl, report.md, one PNG per task, throughput.json (tokens/s and MFU of the whole grid).
set -uo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 OUTDIR DATA_DIR GGUF_PATH [SECONDS]" >&2
    exit 2
fi
started=$(date +%s)
out=$(mkdir -p "$1" && cd "$1" && pwd)
data=$(cd "$2" && pwd)
gguf=$(cd "$(dirname "$3")" && pwd)/$(basename "$3")
budget=${4:-500}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PYTHONPATH="$root/src:$root${PYTHONPATH:+:$PYTHONPATH}"
export DSBS_DATA_DIR="$data" DSBS_SMOLLM2_GGUF="$gguf" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export DSBS_CACHE_DIR="${DSBS_CACHE_DIR:-${TMPDIR:-/tmp}/dsbs-gpu-check-cache}"
recipe=${GPU_CHECK_RECIPE:-recipes/gpu-smollm2.yaml}
py=${PYTHON:-python3}
work=${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/dsbs-gpu-check-runs}
jobs=${GPU_CHECK_JOBS:-4}

"$py" - > "$out/environment.json" <<'EOF'
import json, platform, torch, transformers, accelerate
from dsbs.hardware import cpu_name, matmul_flops
env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
       "accelerate": accelerate.__version__, "cpu": cpu_name(), "cuda": torch.cuda.is_available()}
if torch.cuda.is_available():
    env["gpu"] = torch.cuda.get_device_name(0)
    env["gpus"] = torch.cuda.device_count()
    env["bf16_matmul_tflops"] = round(matmul_flops("bfloat16", (8192, 8192, 8192), "cuda", seconds=2.0) / 1e12, 1)
print(json.dumps(env, indent=2))
EOF
cat "$out/environment.json"

if [ "${GPU_CHECK_THROUGHPUT:-0}" = 1 ]; then
    timeout 240 "$py" benchmarks/train_throughput.py --batch-size 64 --steps 12 > "$out/train_throughput.log" 2>&1
    echo "train_throughput: exit $? ($(tail -n 1 "$out/train_throughput.log"))"
fi

# (a) train -> evaluate -> predict with the real student on CUDA
read -r -a tests <<< "${GPU_CHECK_TESTS:--m gpu tests/test_gpu.py}"
timeout 150 "$py" -m pytest -q -p no:cacheprovider "${tests[@]}" > "$out/tests.log" 2>&1
echo "tests: exit $? ($(tail -n 1 "$out/tests.log"))"

# (b) the grid, (c) results, report and plots into OUTDIR as runs finish; stop before the budget ends
left=$(( budget - ($(date +%s) - started) - 45 ))
# a grid resumed on the same machine already has lines: throughput counts only the runs finished here
before=$(grep -c . "$work/results.jsonl" 2>/dev/null); before=${before:-0}
grid_started=$(date +%s)
"$py" -m dsbs experiment "$recipe" --output "$work" --jobs "$jobs" --time-limit "$left" \
    --report-dir "$out" > "$out/grid.log" 2>&1
echo "grid: exit $? after $(( $(date +%s) - grid_started )) s"
tail -n 5 "$out/grid.log"

"$py" - "$out" "$(( $(date +%s) - grid_started ))" "$before" "$jobs" <<'EOF'
import json, sys
from pathlib import Path
from dsbs.tasks.common import read_appended_jsonl
out, wall, before, jobs = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
results = read_appended_jsonl(out / "results.jsonl", repair=False) if (out / "results.jsonl").is_file() else []
results = results[before:]
env = json.loads((out / "environment.json").read_text())
tokens = sum(r.get("tokens") or 0 for r in results)
# 6 FLOPs per parameter per token through the transformer body, the tied output head on target tokens only
flops = sum(6 * (r["parameters"] - r["embedding_parameters"]) * r["tokens"]
            + 6 * r["embedding_parameters"] * r["target_tokens"] for r in results if r.get("tokens"))
summary = {"runs": len(results), "runs_before": before, "jobs": jobs, "grid_wall_s": wall, "train_tokens": tokens,
           "tokens_per_s": tokens / wall if wall else None,
           "train_flops": flops, "achieved_tflops": flops / wall / 1e12 if wall else None,
           "bf16_peak_tflops": env.get("bf16_matmul_tflops")}
if summary["achieved_tflops"] and env.get("bf16_matmul_tflops"):
    summary["mfu_vs_measured_bf16_peak"] = summary["achieved_tflops"] / env["bf16_matmul_tflops"]
(out / "throughput.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary))
EOF
echo "gpu_check: done in $(( $(date +%s) - started )) s; files in $out"
