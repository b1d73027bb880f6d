"""Training on tiny students: every method, loss falls, weights change, checkpoints, resume."""

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

from dsbs.methods import METHOD_NAMES
from dsbs.tasks import TaskConfig
from dsbs.tasks.common import DataError
from dsbs.train import TrainConfig, batch_indices, select_rows, train
from tests.conftest import run_dsbs

DEMO = TaskConfig(task="demo")


def quick_config(student: str, output: Path, **overrides) -> TrainConfig:
    settings = dict(student=student, output=str(output), max_steps=4, batch_size=4, lr=1e-3, eval_limit=8,
                    max_input_tokens=64, max_target_tokens=48, log_interval=2, precision="fp32",
                    keep_checkpoints=True)  # these tests read the last checkpoint
    return TrainConfig(**{**settings, **overrides})


def weights(path) -> dict:
    return load_file(str(Path(path) / "model.safetensors"))


def log_records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_trains_and_saves_a_plain_transformers_model(method, tiny_student, tmp_path):
    from transformers import AutoConfig

    summary = train(DEMO, quick_config(tiny_student, tmp_path, method=method))
    assert summary["steps"] == 4 and summary["train_examples"] == 360
    model_dir = tmp_path / "model"
    meta = json.loads((model_dir / "dsbs.json").read_text())
    assert meta["method"] == method and meta["task"] == "demo"
    assert AutoConfig.from_pretrained(model_dir).model_type in ("llama", "t5")
    card = (model_dir / "README.md").read_text()
    assert f"| method | {method} |" in card and "| training examples | 360 |" in card and "from_pretrained" in card
    assert "| prompt form | suffix (the task marker after the input) |" in card and meta["prompt_form"] == "suffix"
    resolved = json.loads((tmp_path / "train_config.json").read_text())
    assert resolved["train"]["method"] == method and resolved["max_steps"] == 4
    losses = [r for r in log_records(tmp_path) if "loss" in r]
    assert all(r["rationale_loss"] > 0 for r in losses) == (method == "dsbs")


def test_loss_falls_and_every_weight_changes(tiny_student, tmp_path):
    before = weights(tiny_student)
    train(DEMO, quick_config(tiny_student, tmp_path, method="dsbs", max_steps=60, lr=5e-3, log_interval=10,
                             eval_limit=4))
    losses = [r for r in log_records(tmp_path) if "loss" in r]
    assert losses[-1]["label_loss"] < 0.85 * losses[0]["label_loss"]
    assert losses[-1]["rationale_loss"] < 0.85 * losses[0]["rationale_loss"]
    after = weights(tmp_path / "checkpoints" / "step-000060")
    unchanged = [name for name, tensor in before.items() if name in after and torch.equal(tensor, after[name])]
    assert not unchanged


@pytest.mark.parametrize("keep", ["best", "last"])
def test_model_dir_holds_the_best_validated_step_or_the_last(keep, tiny_causal, tmp_path):
    summary = train(DEMO, quick_config(tiny_causal, tmp_path, max_steps=6, eval_interval=2, keep_model=keep))
    checks = [r for r in log_records(tmp_path) if "val_accuracy" in r]
    assert [r["step"] for r in checks] == [2, 4, 6]
    accuracies = [r["val_accuracy"] for r in checks]
    kept = 6 if keep == "last" else checks[accuracies.index(max(accuracies))]["step"]
    assert summary["best_step"] == kept
    assert json.loads((tmp_path / "model" / "dsbs.json").read_text())["step"] == kept
    assert [r["step"] for r in checks if r["best"]][-1] == kept


def test_phase_times_account_for_the_whole_step(tiny_causal, tmp_path):
    train(DEMO, quick_config(tiny_causal, tmp_path, method="dsbs", max_steps=4, log_interval=2, phase_times=True))
    lines = [r for r in log_records(tmp_path) if "loss" in r]
    assert len(lines) == 2
    for r in lines:
        phases = [r[f"{p}_s"] for p in ("collate", "forward", "backward", "optimizer")]
        step_seconds = r["tokens"] / r["tokens_per_s"] / 2
        assert all(p > 0 for p in phases)
        assert 0.9 * step_seconds < sum(phases) <= step_seconds * 1.001 + 1e-4
    plain = tmp_path / "plain"
    train(DEMO, quick_config(tiny_causal, plain, method="dsbs", max_steps=2, log_interval=2))
    assert "forward_s" not in log_records(plain)[0]


def test_lora_trains_only_adapters_and_saves_a_merged_plain_model(tiny_student, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    before = weights(tiny_student)
    train(DEMO, quick_config(tiny_student, tmp_path, max_steps=20, lr=1e-2, lora_rank=4, log_interval=5))
    losses = [r for r in log_records(tmp_path) if "loss" in r]
    assert losses[-1]["loss"] < losses[0]["loss"]
    after = weights(tmp_path / "model")
    assert set(after) == set(before), "merged: no adapter tensors, the base model's names"
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed and all("weight" in name and "norm" not in name and "embed" not in name for name in changed)
    assert "LoRA adapters of rank 4" in (tmp_path / "model" / "README.md").read_text()
    loader = AutoModelForSeq2SeqLM if "t5" in tiny_student else AutoModelForCausalLM
    loader.from_pretrained(tmp_path / "model")


def test_data_order_is_a_function_of_the_step():
    first_epoch = [i for k in range(5) for i in batch_indices(10, 2, seed=3, micro_step=k)]
    assert sorted(first_epoch) == list(range(10))
    assert batch_indices(10, 4, seed=3, micro_step=2) == batch_indices(10, 4, seed=3, micro_step=2)
    assert batch_indices(10, 4, seed=3, micro_step=3) != batch_indices(10, 4, seed=4, micro_step=3)


def test_pool_cap_is_one_draw_shared_by_every_seed_and_fraction():
    pool = list(range(1000))
    train_rows, validation = select_rows(pool, TrainConfig(pool_size=200))
    capped = set(train_rows) | set(validation)  # the paper's order: validation comes out of the capped pool
    assert len(capped) == 200 and len(validation) == 20 and not set(train_rows) & set(validation)
    for seed in (0, 1):
        quarter, held = select_rows(pool, TrainConfig(pool_size=200, data_fraction=0.25, seed=seed))
        assert (len(quarter), len(held)) == (45, 5) and set(quarter) | set(held) <= capped
    assert select_rows(pool, TrainConfig(pool_size=200, data_fraction=0.25, seed=0)) != \
        select_rows(pool, TrainConfig(pool_size=200, data_fraction=0.25, seed=1))
    assert sum(map(len, select_rows(pool, TrainConfig(pool_size=5000)))) == 1000  # a cap above the pool keeps it


def test_existing_run_needs_resume(tiny_causal, tmp_path):
    train(DEMO, quick_config(tiny_causal, tmp_path, max_steps=2))
    with pytest.raises(DataError, match="--resume"):
        train(DEMO, quick_config(tiny_causal, tmp_path, max_steps=2))


@pytest.mark.parametrize("extra", [[], ["--lora-rank", "4"]], ids=["full", "lora"])
def test_sigkill_then_resume_matches_an_uninterrupted_run(extra, tiny_causal, tmp_path):
    args = [*extra, "--task", "demo", "--student", tiny_causal, "--max-steps", "40", "--batch-size", "4", "--lr",
            "1e-3",
            "--save-interval", "2", "--eval-interval", "10", "--eval-limit", "4", "--precision", "fp32",
            "--max-input-tokens", "64", "--max-target-tokens", "48", "--log-interval", "1", "--keep-checkpoints"]
    reference = tmp_path / "reference"
    run_dsbs("train", *args, "--output", str(reference))

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "dsbs", "train", *args, "--output", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((killed / "checkpoints").glob("step-0000[1-3]*")) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"

    run_dsbs("train", *args, "--output", str(killed), "--resume")
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["steps"] == 40
    steps = [r["step"] for r in log_records(killed) if "loss" in r]
    assert steps == list(range(1, 41)), "each step logged exactly once"
    expected, got = weights(reference / "checkpoints" / "step-000040"), weights(killed / "checkpoints" / "step-000040")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)


def test_first_log_line_after_a_resume_averages_only_the_steps_it_ran(tiny_causal, tmp_path, monkeypatch):
    import shutil

    reference = tmp_path / "reference"
    train(DEMO, quick_config(tiny_causal, reference, max_steps=6, log_interval=1, save_interval=3))
    per_step = {r["step"]: r["loss"] for r in log_records(reference) if "loss" in r}

    rmtree = shutil.rmtree  # keep the step-3 checkpoint that the step-6 save would delete
    monkeypatch.setattr(shutil, "rmtree", lambda path, *a, **k: None if "step-000003" in str(path) else rmtree(path,
                                                                                                               *a, **k))
    resumed = tmp_path / "resumed"
    train(DEMO, quick_config(tiny_causal, resumed, max_steps=6, log_interval=4, save_interval=3))
    monkeypatch.undo()
    shutil.rmtree(resumed / "checkpoints" / "step-000006")
    (resumed / "summary.json").unlink()
    train(DEMO, quick_config(tiny_causal, resumed, max_steps=6, log_interval=4, save_interval=3, resume=True))
    logged = {r["step"]: r["loss"] for r in log_records(resumed) if "loss" in r}
    assert set(logged) == {4, 6}
    assert logged[4] == pytest.approx(per_step[4], rel=1e-4)  # one step since the resume, not a quarter of it
    assert logged[6] == pytest.approx((per_step[5] + per_step[6]) / 2, rel=1e-4)


def test_a_planted_pickle_in_a_checkpoint_is_refused_not_run(tiny_causal, tmp_path):
    import pickle

    train(DEMO, quick_config(tiny_causal, tmp_path, max_steps=2))
    (tmp_path / "summary.json").unlink()  # as if the run had been killed after its checkpoint
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    state = tmp_path / "checkpoints" / "step-000002" / "training_state.pt"
    state.write_bytes(pickle.dumps({"step": 2, "payload": Payload()}))
    with pytest.raises(DataError, match="training_state.pt: refused: it holds more than tensors"):
        train(DEMO, quick_config(tiny_causal, tmp_path, max_steps=2, resume=True))
    assert not marker.exists()
