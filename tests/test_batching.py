"""Each method's items, the loss masks of both model families, and the two-task loss."""

import typing

import pytest
from transformers import AutoTokenizer

from dsbs.batching import (
    IGNORE_INDEX,
    LABEL_TASK,
    RATIONALE_TASK,
    collate,
    collate_shared,
    encode_item,
    encode_shared,
    items_for,
    parse_single_task_output,
)
from dsbs.tasks.common import Example

EXAMPLE = Example(input="2 boxes of 3?", label="( 2 * 3 )", rationale="2 * 3 = 6.", teacher_label="(3 * 2)")


def test_items_per_method():
    assert [(i.prompt, i.target) for i in items_for(EXAMPLE, "standard")] == [("2 boxes of 3?", "( 2 * 3 )")]
    assert [i.target for i in items_for(EXAMPLE, "distill")] == ["(3 * 2)"]
    both = items_for(EXAMPLE, "dsbs")
    assert [(i.task, i.prompt, i.target) for i in both] == [
        (LABEL_TASK, "2 boxes of 3?", "( 2 * 3 )"), (RATIONALE_TASK, "2 boxes of 3?", "2 * 3 = 6.")]
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
    item = items_for(EXAMPLE, "dsbs")[1]
    encoded = encode_item(tokenizer, item, seq2seq=True, max_input=64, max_target=32, form="prefix", decoder_start=0)
    assert tokenizer.decode(encoded["input_ids"], skip_special_tokens=True) == "[rationale] 2 boxes of 3?"
    assert tokenizer.decode(encoded["labels"], skip_special_tokens=True) == "2 * 3 = 6."
    assert encoded["labels"][-1] == tokenizer.eos_token_id and encoded["task"] == RATIONALE_TASK
    suffix = encode_item(tokenizer, item, seq2seq=True, max_input=64, max_target=32, form="suffix", decoder_start=0)
    assert tokenizer.decode(suffix["input_ids"], skip_special_tokens=True) == "2 boxes of 3?"  # the marker moved
    n_marker = suffix["labels"].count(IGNORE_INDEX)
    assert tokenizer.decode(suffix["decoder_input_ids"][1 : 1 + n_marker]) == "[rationale]"
    assert suffix["decoder_input_ids"][0] == 0  # the decoder start, then marker and target shifted by one
    assert suffix["decoder_input_ids"][1 + n_marker :] == suffix["labels"][n_marker:-1]


def test_shared_sequence_reads_the_input_once_and_hides_the_branches_from_each_other(tiny_causal):
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal)
    shared = encode_shared(tokenizer, items_for(EXAMPLE, "dsbs"), seq2seq=False, max_input=64, max_target=32)
    n_input = shared["segments"].count(0)
    separate = [encode_item(tokenizer, i, False, 64, 32, form="suffix") for i in items_for(EXAMPLE, "dsbs")]
    # the same tokens as the two suffix-form items, with the input written once
    assert shared["input_ids"] == separate[0]["input_ids"] + separate[1]["input_ids"][n_input:]
    label_len = len(separate[0]["input_ids"]) - n_input
    rationale_positions = list(range(n_input, len(separate[1]["input_ids"])))  # restart where the input ends
    assert shared["position_ids"] == list(range(n_input + label_len)) + rationale_positions
    assert shared["tasks"] == {LABEL_TASK: separate[0]["tasks"][LABEL_TASK],
                               RATIONALE_TASK: separate[1]["tasks"][RATIONALE_TASK]}
    batch = collate_shared([shared, encode_shared(tokenizer, items_for(EXAMPLE, "standard"), False, 64, 32)], 0, False,
                           pack=False)
    mask = batch["attention_mask"][0, 0]
    first_label, first_rationale = n_input, n_input + label_len
    assert mask[first_rationale, :n_input].all() and not mask[first_rationale, first_label:first_rationale].any()
    assert mask[first_label, :first_label + 1].all() and not mask[n_input - 1, n_input:].any()
    padded = batch["attention_mask"][1, 0]
    assert padded[-1, -1] and padded[-1].sum() == 1  # padding sees itself only


def test_collate_pads_with_ignored_labels():
    features = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "task": 0},
                {"input_ids": [8], "labels": [8], "task": 1}]
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


def test_rationale_selection_keeps_the_label_task_and_the_agreeing_rationales(tiny_causal):
    from dsbs.batching import select_rationales, target_ids

    right = Example(input="a", label="6", rationale="r1", teacher_label="6",
                    samples=(("r1", "6"), ("r2", "7"), ("r3", "3+3"), (None, None)))
    wrong = Example(input="b", label="6", rationale="r4", teacher_label="7")
    equal = lambda a, b: eval(a) == eval(b)  # noqa: E731, S307 - tiny literal sums of the test
    assert select_rationales([right, wrong], "all", equal) == [right, wrong]
    kept = select_rationales([right, wrong], "agreeing", equal)
    assert [e.rationale for e in kept] == ["r1", None] and [e.label for e in kept] == ["6", "6"]
    assert [len(items_for(e, "dsbs")) for e in kept] == [2, 1]  # the label task keeps every row
    every = select_rationales([right, wrong], "all-agreeing", equal)
    assert every[0].rationales == ("r1", "r3") and every[1].rationales == ()
    items = items_for(every[0], "dsbs")
    assert [i.target for i in items] == ["6", "r1", "r3"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal)
    shared = encode_shared(tokenizer, items, False, 64, 32)
    each = [len(target_ids(tokenizer, r, False, 32)) for r in ("r1", "r3")]
    assert shared["tasks"][RATIONALE_TASK] == sum(each)  # both targets count in the rationale loss


def test_cuts_are_counted_per_input_and_target_and_only_single_task_keeps_its_answer(tiny_causal):
    """Before: a long single_task target lost its label; then (a first fix) any long target holding the answer
    phrase lost its middle, and an input shared by dsbs's two items counted as two cut inputs."""
    from dsbs.batching import cut_items, target_ids
    from dsbs.tasks.common import SINGLE_TASK_MARKER

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal)
    long_text = "word " * 100
    single = target_ids(tokenizer, long_text + SINGLE_TASK_MARKER + "positive", False, 32, answer_last=True)
    assert len(single) == 32 and tokenizer.decode(single[:-1]).endswith("So the answer is positive")
    rationale = target_ids(tokenizer, long_text + SINGLE_TASK_MARKER + "positive", False, 32)
    assert rationale[:-1] == tokenizer(long_text, add_special_tokens=False)["input_ids"][:31]  # its end, as any
    example = Example(input=long_text, label="positive", rationale=long_text)
    short = Example(input="short", label="negative", rationale="short reason")
    groups = [items_for(example, "dsbs"), items_for(short, "dsbs")]
    assert cut_items(groups, tokenizer, False, 64, 32) == {"inputs": 1, "rationale_targets": 1}
    exact = len(tokenizer("x " * 30, add_special_tokens=True)["input_ids"])  # fits in the suffix form alone
    near = [items_for(Example(input="x " * 30, label="a", rationale="b"), "dsbs")]
    assert cut_items(near, tokenizer, False, exact + 1, 32, "suffix") == {}
    assert cut_items(near, tokenizer, False, exact + 1, 32, "prefix") == {"inputs": 1}  # its marker is read too
