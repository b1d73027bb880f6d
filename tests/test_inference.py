"""Answering: choosing a label from a label set agrees with greedy generation, in one pass where it can."""

import json

import pytest

from dsbs.checkpoint import read_meta
from dsbs.errors import UserError
from dsbs.inference import choose, generate, predict
from dsbs.models import load_student
from dsbs.tasks import demo
from tests.conftest import DATA_DIR, needs_data, run_dsbs


def greedy_and_chosen(model_dir: str, choices_of) -> tuple[list[str], list[str]]:
    model, tokenizer = load_student(model_dir, for_inference=True)
    meta = read_meta(model_dir)
    inputs = [e.input for e in demo.load("test")[:8]]
    limits = {"max_input_tokens": meta["max_input_tokens"], "form": meta["prompt_form"], "batch_size": 4}
    greedy = generate(model, tokenizer, inputs, max_new_tokens=meta["label_max_tokens"], **limits)
    choices = [choices_of(answer) for answer in greedy]
    return greedy, choose(model, tokenizer, inputs, choices, max_target_tokens=meta["max_target_tokens"], **limits)


@pytest.mark.parametrize("family", ["causal", "seq2seq"])
def test_choosing_gives_the_greedy_answer_when_it_is_a_choice(family, well_trained_students):
    # the greedy answer shares its first tokens with a longer choice, so the choice is read on to its EOS
    greedy, chosen = greedy_and_chosen(well_trained_students[family], lambda g: ("zebra", f"{g} and 7", g))
    assert any(greedy) and chosen == greedy


def restricted_greedy(model_dir: str, text: str, choices: tuple[str, ...]) -> str:
    """What greedy decoding restricted to ``choices`` writes, from one unbatched, unpadded forward pass per token."""
    import torch

    from dsbs.batching import encode_prompt, target_ids
    from dsbs.models import is_seq2seq

    model, tokenizer = load_student(model_dir, for_inference=True)
    meta = read_meta(model_dir)
    seq2seq = is_seq2seq(model.config)
    prompt, prefix = encode_prompt(tokenizer, text, seq2seq, meta["max_input_tokens"], form=meta["prompt_form"])
    options = {tuple(target_ids(tokenizer, c, seq2seq, meta["max_target_tokens"])): c for c in choices}
    live, written = list(options), []
    while len(live) > 1:
        with torch.inference_mode():
            if seq2seq:
                start = [model.generation_config.decoder_start_token_id]
                logits = model(input_ids=torch.tensor([prompt]),
                               decoder_input_ids=torch.tensor([start + prefix + written])).logits[0, -1]
            else:
                logits = model(input_ids=torch.tensor([prompt + written])).logits[0, -1]
        best = max({seq[len(written)] for seq in live}, key=lambda token: float(logits[token]))
        written.append(best)
        live = [seq for seq in live if seq[len(written) - 1] == best]
    return options[live[0]]


@pytest.mark.parametrize("family", ["causal", "seq2seq"])
def test_choosing_among_answers_it_would_not_write_is_restricted_greedy_decoding(family, well_trained_students):
    student = well_trained_students[family]
    options = lambda g: (f"{g}0", f"{g} apples", "zebra")  # noqa: E731
    greedy, chosen = greedy_and_chosen(student, options)
    inputs = [e.input for e in demo.load("test")[:8]]
    assert chosen == [restricted_greedy(student, text, options(g)) for text, g in zip(inputs, greedy, strict=True)]
    assert len(set(chosen)) > 1  # not one answer for every input


def test_choices_need_a_task_with_a_label_set(trained_student, tmp_path):
    refused = run_dsbs("evaluate", "--model", trained_student, "--task", "demo", "--choices", check=False)
    assert refused.returncode == 2 and "task demo has open answers" in refused.stderr
    source = tmp_path / "in.jsonl"
    source.write_text('{"input": "2 boxes of 5?"}\n')
    refused = run_dsbs("predict", "--model", trained_student, "--input", str(source), "--output",
                       str(tmp_path / "out.jsonl"), "--choices", check=False)
    assert refused.returncode == 2 and "task demo has open answers" in refused.stderr


def test_a_single_task_student_cannot_choose(trained_student):
    model, tokenizer = load_student(trained_student, for_inference=True)
    meta = {**read_meta(trained_student), "method": "single_task"}
    with pytest.raises(UserError, match="writes its rationale before its label"):
        predict(model, tokenizer, meta, ["2 boxes of 5?"], choices=[("10", "7")])


@needs_data
@pytest.mark.parametrize("task", ["cqa", "esnli"])
def test_evaluate_with_choices_answers_every_row_with_one_of_its_choices(task, trained_student, tmp_path):
    from dsbs.tasks import TaskConfig, get_task

    ok = run_dsbs("evaluate", "--model", trained_student, "--task", task, "--data-dir", DATA_DIR, "--limit", "6",
                  "--choices", "--output", str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    rows = get_task(TaskConfig(task=task, data_dir=DATA_DIR)).load("test")[:6]
    allowed = [e.choices if task == "cqa" else ("entailment", "neutral", "contradiction") for e in rows]
    assert len(records) == 6 and all(r["label"] in a for r, a in zip(records, allowed, strict=True))
    assert json.loads(ok.stdout)["choices"] is True
