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

from tests.conftest import run_dsbs
from tests.fake_openai import FakeOpenAI

TRIALS = [pytest.param(seed, marks=pytest.mark.slow) if seed >= 2 else seed for seed in range(12)]


def kill_at_random(args: list[str], seed: int, progress, total: int) -> None:
    """Run `dsbs ARGS`; SIGKILL it once ``progress()`` (work it has finished) reaches a random point in
    the first two thirds of ``total``, a few random milliseconds later; assert that it died of it."""
    rng = random.Random(seed)
    target, extra = rng.randint(1, max(1, total * 2 // 3)), rng.uniform(0.0, 0.05)
    process = subprocess.Popen([sys.executable, "-m", "dsbs", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while progress() < target and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(extra)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, f"the run ended before the kill (at {progress()} of {total})"


def lines(path, marker: str = "") -> int:
    return sum(marker in line for line in path.read_text().splitlines()) if path.is_file() else 0


@pytest.mark.parametrize("seed", TRIALS)
def test_train(seed, tiny_causal, tmp_path):
    args = ["train", "--task", "demo", "--student", tiny_causal, "--max-steps", "30", "--batch-size", "4",
            "--save-interval", "3", "--eval-interval", "10", "--eval-limit", "4", "--precision", "fp32",
            "--max-input-tokens", "64", "--max-target-tokens", "32", "--log-interval", "1", "--output", str(tmp_path)]
    kill_at_random(args, seed, lambda: lines(tmp_path / "log.jsonl", '"loss"'), 30)
    run_dsbs(*args, "--resume")
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 30
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps == list(range(1, 31))
    assert (tmp_path / "model" / "model.safetensors").is_file() and not (tmp_path / ".old-model").exists()
    assert not (tmp_path / "checkpoints").exists()  # a finished run keeps model/ alone


@pytest.mark.parametrize("seed", TRIALS)
def test_teach(seed, tmp_path):
    with FakeOpenAI(delay=0.02) as server:
        args = ["teach", "--task", "demo", "--limit", "30", "--backend", "openai", "--base-url", server.url,
                "--model", "fake", "--concurrency", "3", "--output", str(tmp_path)]
        kill_at_random(args, seed, lambda: sum(server.requests.values()), 30)
        run_dsbs(*args)
        rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
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
    progress = lambda: lines(tmp_path / "out" / "results.jsonl") * 6 + max(  # noqa: E731 - steps of the grid done
        [lines(log, '"loss"') for log in (tmp_path / "out" / "runs").glob("*/log.jsonl")] or [0])
    kill_at_random(["experiment", str(recipe)], seed, progress, 4 * 6)
    run_dsbs("experiment", str(recipe))
    results = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["run"] for r in results) == sorted({r["run"] for r in results}) and len(results) == 4
    assert all(r["steps"] == 6 and r["test_n"] == 4 for r in results)
