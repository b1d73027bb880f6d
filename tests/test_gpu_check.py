"""benchmarks/gpu_check.sh dry-run on the CPU at tiny size: the files it must leave in OUTDIR."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_writes_results_report_and_throughput(tiny_causal, tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "tiny-gpu-check", "output": "unused", "tasks": ["demo"], "methods": ["standard", "dsbs"],
        "students": [tiny_causal], "seeds": [0], "test_limit": 6, "keep_weights": False,
        "train": {"max_steps": 2, "batch_size": 2, "eval_limit": 2, "precision": "fp32", "max_input_tokens": 64,
                  "max_target_tokens": 32, "keep_checkpoints": False}}))
    out = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_RECIPE": str(recipe), "GPU_CHECK_TESTS": "tests/test_stats.py",
           "GPU_CHECK_JOBS": "2", "PYTHON": sys.executable, "GPU_CHECK_WORK": str(tmp_path / "work"),
           "DSBS_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), str(tmp_path),
                           str(tmp_path / "absent.gguf"), "300"], env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "passed" in (out / "tests.log").read_text()
    assert json.loads((out / "environment.json").read_text())["cuda"] is False
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["method"] for r in results) == ["dsbs", "standard"]
    assert "| dsbs |" in (out / "report.md").read_text() and list(out.glob("demo-*.png"))
    throughput = json.loads((out / "throughput.json").read_text())
    assert throughput["runs"] == 2 and throughput["train_tokens"] > 0 and throughput["train_flops"] > 0
    assert not list((tmp_path / "work" / "runs").glob("*/model")), "the grid keeps no weights"

    # run again on the same machine: the grid resumes with nothing left, and the throughput counts no old run
    again = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), str(tmp_path),
                            str(tmp_path / "absent.gguf"), "300"], env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-2000:]
    throughput = json.loads((out / "throughput.json").read_text())
    assert throughput["runs"] == 0 and throughput["runs_before"] == 2 and throughput["train_tokens"] == 0
