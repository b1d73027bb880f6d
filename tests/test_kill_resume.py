"""kill -9 at random moments of `dsbs train`, `dsbs teach` and `dsbs experiment`, then resume:
finished work is all there, nothing is duplicated, and the end state matches an uninterrupted run.
The fast suite runs 2 trials of each; `-m slow` runs 10 more."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.fake_openai import FakeOpenAI

TRIALS = [pytest.param(seed, marks=pytest.mark.slow) if seed >= 2 else seed for seed in range(12)]


def kill_at_random(command: list[str], seed: int, low: float, high: float, **env) -> None:
    """Start ``command``, SIGKILL it after a random delay (it may already have finished)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env})
    time.sleep(random.Random(seed).uniform(low, high))
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()


def dsbs(*args) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "dsbs", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("seed", TRIALS)
def test_train(seed, tiny_causal, tmp_path):
    args = ["train", "--task", "demo", "--student", tiny_causal, "--max-steps", "30", "--batch-size", "4",
            "--save-interval", "3", "--eval-interval", "10", "--eval-limit", "4", "--precision", "fp32",
            "--max-input-tokens", "64", "--max-target-tokens", "32", "--log-interval", "1", "--output", str(tmp_path)]
    kill_at_random([sys.executable, "-m", "dsbs", *args], seed, 1.0, 6.0)
    dsbs(*args, "--resume")
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 30
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps == list(range(1, 31))
    assert (tmp_path / "model" / "model.safetensors").is_file() and not (tmp_path / ".old-model").exists()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000030"]


@pytest.mark.parametrize("seed", TRIALS)
def test_teach(seed, tmp_path):
    with FakeOpenAI(delay=0.02) as server:
        args = ["teach", "--task", "demo", "--limit", "30", "--backend", "openai", "--base-url", server.url,
                "--model", "fake", "--concurrency", "3", "--output", str(tmp_path)]
        kill_at_random([sys.executable, "-m", "dsbs", *args], seed, 0.5, 3.0)
        dsbs(*args)
        rows = [json.loads(line) for line in (tmp_path / "demo_train.jsonl").read_text().splitlines()]
        assert len(rows) == 30 and all(r["teacher_label"] == "42" for r in rows)
        assert sum(server.requests.values()) <= 30 + 3 and set(server.requests.values()) <= {1, 2}


@pytest.mark.parametrize("seed", TRIALS)
def test_experiment(seed, tiny_causal, tmp_path):
    import yaml

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "kill", "output": str(tmp_path / "out"), "tasks": ["demo"], "methods": ["standard", "dsbs"],
        "fractions": [0.5, 1.0], "students": [tiny_causal], "seeds": [0], "test_limit": 4,
        "train": {"max_steps": 6, "batch_size": 2, "eval_limit": 2, "precision": "fp32", "save_interval": 2,
                  "max_input_tokens": 64, "max_target_tokens": 32}}))
    kill_at_random([sys.executable, "-m", "dsbs", "experiment", str(recipe)], seed, 2.0, 12.0)
    dsbs("experiment", str(recipe))
    results = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["run"] for r in results) == sorted({r["run"] for r in results}) and len(results) == 4
    assert all(r["steps"] == 6 and r["test_n"] == 4 for r in results)
