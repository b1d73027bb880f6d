"""--report-to: what tensorboard and trackio stored, read back; a resumed run continues its tracker run,
and the test metrics of `dsbs evaluate` land in it."""

import json
import subprocess
import sys

import pytest

from dsbs.configs import TrainConfig
from dsbs.tasks import TaskConfig

DEMO = TaskConfig(task="demo")


def settings(student, output, **overrides) -> TrainConfig:
    return TrainConfig(**{**dict(student=student, output=str(output), max_steps=4, batch_size=2, eval_limit=2,
                                 eval_interval=2, log_interval=1, precision="fp32", max_input_tokens=64,
                                 max_target_tokens=32), **overrides})


def scalars(log_dir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_gets_losses_validation_and_test_metrics(tiny_causal, tmp_path):
    pytest.importorskip("tensorboard")
    from dsbs.evaluate import evaluate
    from dsbs.train import train

    train(DEMO, settings(tiny_causal, tmp_path / "run", report_to="tensorboard"))
    evaluate(str(tmp_path / "run" / "model"), DEMO, limit=4)
    logged = scalars(tmp_path / "run" / "tensorboard")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [s for s, _ in logged["label_loss"]] == [1, 2, 3, 4]
    assert [round(v, 4) for _, v in logged["label_loss"]] == [round(r["label_loss"], 4) for r in log if "loss" in r]
    assert [s for s, _ in logged["val_accuracy"]] == [2, 4] and "lr" in logged and "tokens_per_s" in logged
    assert len(logged["test/accuracy"]) == 1  # evaluate found the run's tracker by itself
    assert json.loads((tmp_path / "run" / "tracker.json").read_text())["kind"] == "tensorboard"


def test_trackio_run_is_continued_after_a_resume(tiny_causal, tmp_path):
    pytest.importorskip("trackio")
    code = f"""
import sys, shutil
from dsbs.configs import TrainConfig
from dsbs.tasks import TaskConfig
from dsbs.train import train
settings = dict(student={tiny_causal!r}, output={str(tmp_path / "cell")!r}, max_steps=4, batch_size=2, eval_limit=2,
                log_interval=1, precision="fp32", max_input_tokens=64, max_target_tokens=32, save_interval=2,
                report_to="trackio", tracker_project="dsbs-test", keep_checkpoints=True)
real = shutil.rmtree
shutil.rmtree = lambda p, *a, **k: None if "step-000002" in str(p) else real(p, *a, **k)
train(TaskConfig(task="demo"), TrainConfig(**settings))
shutil.rmtree = real
shutil.rmtree({str(tmp_path / "cell" / "checkpoints" / "step-000004")!r})
import os; os.remove({str(tmp_path / "cell" / "summary.json")!r})
train(TaskConfig(task="demo"), TrainConfig(**settings, resume=True))
from trackio.sqlite_storage import SQLiteStorage
logs = SQLiteStorage.get_logs("dsbs-test", "cell")
print("STEPS", sorted({{row["step"] for row in logs if "label_loss" in row}}))
print("RUNS", SQLiteStorage.get_runs("dsbs-test"))
"""
    env = {"TRACKIO_DIR": str(tmp_path / "trackio"), "PATH": "/usr/bin:/bin"}
    import os

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env},
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.startswith(("STEPS", "RUNS")))
    assert lines["STEPS"] == "[1, 2, 3, 4]"
    assert lines["RUNS"].count("cell") == 1, "the resumed run is the same trackio run"
