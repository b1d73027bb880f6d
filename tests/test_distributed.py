"""Data-parallel training: 2 processes (gloo, on CPU) through `accelerate launch` match 1 process,
with replicated weights (DDP-style) and with sharded ones (FSDP2); a killed sharded run resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# FSDP2 on CPU processes (gloo) needs torch 2.7; dsbs refuses --fsdp on a CPU with older torch
CPU_FSDP = pytest.mark.skipif(tuple(int(p) for p in torch.__version__.split(".")[:2]) < (2, 7),
                              reason="FSDP2 on CPU needs torch >= 2.7")
LAUNCH_TWO = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "dsbs", "train"]


def common_args(student: str) -> list[str]:
    return ["--task", "demo", "--student", student, "--max-steps", "6", "--lr", "1e-3", "--eval-limit", "4",
            "--precision", "fp32", "--max-input-tokens", "64", "--max-target-tokens", "48", "--log-interval", "1",
            "--keep-checkpoints"]


def run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def final_weights(output: Path) -> dict:
    return load_file(str(output / "checkpoints" / "step-000006" / "model.safetensors"))


@pytest.mark.parametrize("sharding, seq2seq", [([], False), pytest.param(["--fsdp"], False, marks=CPU_FSDP),
                                               pytest.param(["--fsdp"], True, marks=CPU_FSDP)],
                         ids=["replicated", "fsdp", "fsdp-t5"])
def test_two_processes_match_one(sharding, seq2seq, tiny_causal, tiny_seq2seq, tmp_path):
    # a sharded seq2seq student trains with a pass per task (its shared pass could desynchronise FSDP's
    # collectives), so its one-process reference does too
    common = common_args(tiny_seq2seq if seq2seq else tiny_causal) + (["--no-shared-pass"] if seq2seq else [])
    run([*LAUNCH_TWO, *common, *sharding, "--batch-size", "2", "--output", str(tmp_path / "two")])
    run([sys.executable, "-m", "dsbs", "train", *common, "--batch-size", "4", "--output", str(tmp_path / "one")])
    assert json.loads((tmp_path / "two" / "train_config.json").read_text())["processes"] == 2
    logs = {name: [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()
                   if '"loss"' in line]
            for name in ("one", "two")}
    assert [r["step"] for r in logs["two"]] == list(range(1, 7))
    for a, b in zip(logs["one"], logs["two"], strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-4 and a["tokens"] == b["tokens"]
    one_w, two_w = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert one_w.keys() == two_w.keys()
    for name, tensor in one_w.items():
        torch.testing.assert_close(two_w[name], tensor, rtol=1e-4, atol=1e-5)
    architecture = "T5ForConditionalGeneration" if seq2seq else "LlamaForCausalLM"
    assert json.loads((tmp_path / "two" / "model" / "config.json").read_text())["architectures"] == [architecture]
    state = torch.load(tmp_path / "two" / "checkpoints" / "step-000006" / "training_state.pt", weights_only=False)
    # A sharded run's optimizer state is gathered whole, keyed by parameter name rather than position.
    assert isinstance(next(iter(state["optimizer"]["state"])), str) == bool(sharding)


@CPU_FSDP
def test_killed_sharded_run_resumes_to_the_same_weights(tiny_causal, tmp_path):
    args = [*LAUNCH_TWO, *common_args(tiny_causal), "--fsdp", "--batch-size", "2", "--save-interval", "3"]
    run([*args, "--output", str(tmp_path / "straight")])
    process = subprocess.Popen([*args, "--output", str(tmp_path / "killed")], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (tmp_path / "killed" / "checkpoints" / "step-000003").is_dir() and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint at step 3"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "summary.json").exists()
    run([*args, "--output", str(tmp_path / "killed"), "--resume"])
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "killed")
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6)
