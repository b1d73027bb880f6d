"""evaluate and predict on a briefly trained tiny student."""

import json
import subprocess
import sys

import pytest

from dsbs.evaluate import evaluate
from dsbs.tasks import TaskConfig
from dsbs.train import TrainConfig, train


@pytest.fixture(scope="module")
def trained(tiny_causal, tmp_path_factory) -> str:
    output = tmp_path_factory.mktemp("run")
    train(TaskConfig(task="demo"), TrainConfig(student=tiny_causal, output=str(output), max_steps=3, batch_size=4,
                                               eval_limit=4, precision="fp32", max_input_tokens=64, max_target_tokens=32))
    return str(output / "model")


def test_evaluate_writes_predictions_and_metrics(trained, tmp_path):
    metrics = evaluate(trained, TaskConfig(task="demo"), split="test", limit=6, output=str(tmp_path), with_rationale=True)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["n"] == 6 and saved["accuracy"] == metrics["accuracy"] and 0 <= saved["accuracy"] <= 1
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 6 and {"input", "gold", "label", "rationale", "correct", "parsed"} <= set(records[0])
    assert saved["correct"] == sum(r["correct"] for r in records)
    assert saved["parse_failures"] == sum(not r["parsed"] for r in records)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "dsbs", *args], capture_output=True, text=True)


def test_predict_streams_jsonl_and_reports_bad_lines(trained, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"input": "Ava has 3 apples. How many?"}\n{"input": 7}\n\n{"input": "2 boxes of 5?"}\n')
    out = tmp_path / "out.jsonl"
    failed = run_cli("predict", "--model", trained, "--input", str(source), "--output", str(out))
    assert failed.returncode == 2
    assert f"{source}:2: missing text field 'input'" in failed.stderr and "Traceback" not in failed.stderr
    ok = run_cli("predict", "--model", trained, "--input", str(source), "--output", str(out), "--skip-bad-lines")
    assert ok.returncode == 0, ok.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 4] and all(isinstance(r["label"], str) for r in rows)
    assert "skipped" in ok.stdout and ":2:" in ok.stdout


def test_predict_resume_answers_only_the_missing_lines(trained, tmp_path):
    from dsbs.predict import predict_file

    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"input": f"{i} boxes of 3?"}) + "\n" for i in range(5)))
    out = tmp_path / "out.jsonl"
    assert predict_file(trained, str(source), str(out))["predicted"] == 5
    complete = out.read_text().splitlines()
    out.write_text("\n".join(complete[:2]) + "\n" + complete[2][:15])  # killed while writing line 3
    summary = predict_file(trained, str(source), str(out), resume=True)
    assert summary["predicted"] == 3 and summary["already_done"] == 2
    assert [json.loads(line)["line"] for line in out.read_text().splitlines()] == [1, 2, 3, 4, 5]
