"""Data-parallel training: 2 processes (gloo, on CPU) through `accelerate launch` match 1 process."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def test_two_processes_match_one(tiny_causal, tmp_path):
    common = ["--task", "demo", "--student", tiny_causal, "--max-steps", "6", "--lr", "1e-3", "--eval-limit", "4",
              "--precision", "fp32", "--max-input-tokens", "64", "--max-target-tokens", "48", "--log-interval", "1"]
    launcher = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "dsbs", "train"]
    two = subprocess.run([*launcher, *common, "--batch-size", "2", "--output", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "dsbs", "train", *common, "--batch-size", "4", "--output", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "train_config.json").read_text())["processes"] == 2
    logs = {name: [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines() if '"loss"' in line]
            for name in ("one", "two")}
    assert [r["step"] for r in logs["two"]] == list(range(1, 7))
    for a, b in zip(logs["one"], logs["two"]):
        assert abs(a["loss"] - b["loss"]) < 1e-4 and a["tokens"] == b["tokens"]
    one_w = load_file(str(tmp_path / "one" / "checkpoints" / "step-000006" / "model.safetensors"))
    two_w = load_file(str(tmp_path / "two" / "checkpoints" / "step-000006" / "model.safetensors"))
    for name, tensor in one_w.items():
        torch.testing.assert_close(two_w[name], tensor, rtol=1e-4, atol=1e-5)
