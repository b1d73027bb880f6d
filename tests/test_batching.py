"""Each method's items, the loss masks of both model families, and the two-task loss."""

import typing

import pytest
from transformers import AutoTokenizer

from dsbs.batching import (
    IGNORE_INDEX,
    LABEL_TASK,
    RATIONALE_TASK,
    collate,
    encode_item,
    items_for,
    parse_single_task_output,
)
from dsbs.tasks.common import Example

EXAMPLE = Example(input="2 boxes of 3?", label="( 2 * 3 )", rationale="2 * 3 = 6.", teacher_label="(3 * 2)")


def test_items_per_method():
    assert [(i.prompt, i.target) for i in items_for(EXAMPLE, "standard")] == [("[label] 2 boxes of 3?", "( 2 * 3 )")]
    assert [i.target for i in items_for(EXAMPLE, "distill")] == ["(3 * 2)"]
    both = items_for(EXAMPLE, "dsbs")
    assert [(i.task, i.prompt, i.target) for i in both] == [
        (LABEL_TASK, "[label] 2 boxes of 3?", "( 2 * 3 )"), (RATIONALE_TASK, "[rationale] 2 boxes of 3?", "2 * 3 = 6.")]
    assert items_for(EXAMPLE, "dsbs", label_source="teacher")[0].target == "(3 * 2)"
    assert [i.target for i in items_for(EXAMPLE, "single_task")] == ["2 * 3 = 6. So the answer is ( 2 * 3 )"]


def test_items_without_teacher_answer():
    unanswered = Example(input="x", label="y")
    assert items_for(unanswered, "distill") == []
    assert items_for(unanswered, "single_task") == []
    assert [i.task for i in items_for(unanswered, "dsbs")] == [LABEL_TASK]  # gold label still teaches


def test_single_task_output_parsing():
    assert parse_single_task_output("2 * 3 = 6. So the answer is ( 2 * 3 ).") == ("2 * 3 = 6.", "( 2 * 3 )")
    assert parse_single_task_output("( 2 * 3 )") == ("", "( 2 * 3 )")


def test_causal_item_masks_prompt_and_ends_in_eos(tiny_causal):
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal)
    item = items_for(EXAMPLE, "standard")[0]
    encoded = encode_item(tokenizer, item, seq2seq=False, max_input=64, max_target=32)
    n_prompt = sum(1 for t in encoded["labels"] if t == IGNORE_INDEX)
    assert n_prompt > 0 and encoded["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert encoded["labels"][n_prompt:] == encoded["input_ids"][n_prompt:]
    assert encoded["labels"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(encoded["input_ids"][n_prompt:-1]) == "( 2 * 3 )"


def test_seq2seq_item_keeps_input_and_target_apart(tiny_seq2seq):
    tokenizer = AutoTokenizer.from_pretrained(tiny_seq2seq)
    encoded = encode_item(tokenizer, items_for(EXAMPLE, "dsbs")[1], seq2seq=True, max_input=64, max_target=32)
    assert tokenizer.decode(encoded["input_ids"], skip_special_tokens=True) == "[rationale] 2 boxes of 3?"
    assert tokenizer.decode(encoded["labels"], skip_special_tokens=True) == "2 * 3 = 6."
    assert encoded["labels"][-1] == tokenizer.eos_token_id and encoded["task"] == RATIONALE_TASK


def test_collate_pads_with_ignored_labels():
    features = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "task": 0}, {"input_ids": [8], "labels": [8],
                                                                              "task": 1}]
    batch = collate(features, pad_id=0, seq2seq=False)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert set(batch) == {"input_ids", "attention_mask", "labels"}


def test_every_method_is_one_record_that_training_and_inference_read():
    from dsbs.configs import MethodName
    from dsbs.methods import METHOD_NAMES, get_method

    assert typing.get_args(MethodName) == METHOD_NAMES
    assert get_method("dsbs").loss_weights(0.8) == {LABEL_TASK: 0.8, RATIONALE_TASK: pytest.approx(0.2)}
    assert get_method("dsbs").loss_weights(0.8, rationale_weight=0.5) == {LABEL_TASK: 1.0, RATIONALE_TASK: 0.5}
    assert get_method("standard").loss_weights(0.8) == {LABEL_TASK: 1.0}
    assert [m for m in METHOD_NAMES if get_method(m).answers_with_rationale] == ["single_task"]
    with pytest.raises(ValueError, match="unknown method 'dsbss'"):
        get_method("dsbss")
