"""A user's own task file: how its rows become examples, and what stops with the file, line and field."""

import io

import pytest

from dsbs.errors import ConfigError, DataError
from dsbs.tasks import TaskConfig, get_task
from dsbs.tasks.common import csv_rows


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_gold_labels_take_the_label_sets_spelling_and_one_outside_it_stops(tmp_path):
    """Before: "Positive" in the file never matched the teacher's or --choices' "positive", so a distilled
    student scored 0 against its test file and --rationales agreeing kept no rationale."""
    source = write(tmp_path / "reviews.csv", 'text,sentiment\ngreat,Positive\nawful,"negative."\nok,\n')
    task = get_task(TaskConfig(task=source, input_field="text", label_field="sentiment",
                               label_set="positive,negative"))
    assert [row.label for row in task.load("train")] == ["positive", "negative", None]
    numbers = write(tmp_path / "numbers.jsonl", '{"input": "a", "label": 1.0}\n{"input": "b", "label": 0}\n')
    assert [r.label for r in get_task(TaskConfig(task=numbers, label_set="0,1")).load("train")] == ["1", "0"]
    odd = write(tmp_path / "odd.jsonl", '{"input": "a", "label": "positive", "teacher_label": "The review is good"}\n')
    assert get_task(TaskConfig(task=odd, label_set="positive,negative")).load("train")[0].teacher_label is None
    stray = write(tmp_path / "stray.csv", "text,sentiment\ngreat,positive\nmeh,neutral\n")
    with pytest.raises(DataError, match=r"stray.csv:3: field 'sentiment' is 'neutral', which is not one of "
                                        "--label-set positive,negative"):
        get_task(TaskConfig(task=stray, input_field="text", label_field="sentiment",
                            label_set="positive,negative")).load("train")


def test_an_answer_is_scored_as_the_label_it_names_and_one_outside_the_set_is_not_a_label():
    task = get_task(TaskConfig(task="x.csv", label_set="positive,negative"))
    assert task.label_is_valid("Positive.") and not task.label_is_valid("neutral")
    assert task.labels_match("Positive.", "positive") and not task.labels_match("negative", "positive")
    assert get_task(TaskConfig(task="x.csv", label_set="0,1")).labels_match("1.0", "1")
    spaced = get_task(TaskConfig(task="x.csv", label_set="very positive,no"))
    assert spaced.labels_match("very  Positive", "very positive")
    with pytest.raises(ConfigError, match="'A' and 'a' differ only in case"):
        get_task(TaskConfig(task="x.csv", label_set="A,a"))
    assert not task.label_is_valid("The product")
    assert get_task(TaskConfig(task="x.csv")).label_is_valid("anything") and not get_task(
        TaskConfig(task="x.csv")).label_is_valid("  ")


def test_a_cell_of_spaces_is_empty_and_a_template_never_reads_none(tmp_path):
    source = write(tmp_path / "t.csv", "input,label\nhello,  \n   ,yes\n")
    with pytest.raises(DataError, match=r"t.csv:3: empty field 'input' \(--input-field\)"):
        get_task(TaskConfig(task=source)).load("train")
    spaces = write(tmp_path / "u.csv", "input,label\nhello,  \n")
    assert get_task(TaskConfig(task=spaces)).load("train")[0].label is None
    rows = '{"q": "Why?", "options": ["a", "b"]}\n{"q": "What?", "options": null}\n'
    template = TaskConfig(task=write(tmp_path / "q.jsonl", rows), input_template="{q} Options: {options}")
    inputs = [e.input for e in get_task(template).load("train")]
    assert inputs == ["Why? Options: ['a', 'b']", "What? Options: "]  # before: "What? Options: None"
    empty = TaskConfig(task=write(tmp_path / "e.jsonl", '{"q": null, "options": ""}\n'), input_template="{q} {options}")
    with pytest.raises(DataError, match=r"e.jsonl:1: every field used by --input-template is empty"):
        get_task(empty).load("train")
    indexed = TaskConfig(task=write(tmp_path / "i.jsonl", '{"q": "x", "options": 5}\n'), input_template="{options[0]}")
    with pytest.raises(DataError, match=r"i.jsonl:1: cannot fill --input-template '\{options\[0\]\}' from this row"):
        get_task(indexed).load("train")  # before: a TypeError, and a 500 from serve


def test_a_single_file_has_no_other_split_than_train_and_test(tmp_path):
    pytest.importorskip("datasets")
    import datasets

    pool = tmp_path / "pool.parquet"
    datasets.Dataset.from_list([{"input": "a", "label": "x"}, {"input": "b", "label": "y"}]).to_parquet(str(pool))
    task = get_task(TaskConfig(task=str(pool)))
    assert len(task.load("train")) == 2
    with pytest.raises(DataError, match="unknown split 'validation' for a file task"):
        task.load("validation")  # before: the training file, scored as if it were validation


def test_a_test_file_is_the_test_split_of_a_saved_dataset_too(tmp_path):
    """Before: a save_to_disk or hf: task ignored --test-file and scored the dataset's own test split."""
    pytest.importorskip("datasets")
    import datasets

    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"input": "a", "label": "x"}]),
                          "test": datasets.Dataset.from_list([{"input": "own test", "label": "x"}])}
                         ).save_to_disk(str(saved))
    test_file = write(tmp_path / "mine.csv", "input,label\nmy row,y\nanother,x\n")
    assert [e.input for e in get_task(TaskConfig(task=str(saved))).load("test")] == ["own test"]
    assert [e.input for e in get_task(TaskConfig(task=str(saved), test_file=test_file)).load("test")] == [
        "my row", "another"]


def test_a_test_file_needs_no_rationale_or_teacher_label_field(tmp_path):
    """Before: a student trained with --rationale-field why could not be evaluated on a test file without 'why'."""
    train = write(tmp_path / "train.csv", "text,sentiment,why,teacher\ngood,positive,it is good,positive\n")
    test = write(tmp_path / "test.csv", "text,sentiment\nbad,negative\n")
    task = get_task(TaskConfig(task=train, test_file=test, input_field="text", label_field="sentiment",
                               rationale_field="why", teacher_label_field="teacher"))
    assert task.load("train")[0].rationale == "it is good"
    assert [(e.input, e.label) for e in task.load("test")] == [("bad", "negative")]
    with_why = write(tmp_path / "why.csv", "text,sentiment,why\nbad,negative,it is bad\n")
    named = get_task(TaskConfig(task=train, test_file=with_why, input_field="text", label_field="sentiment",
                                rationale_field="why"))
    assert named.load("test")[0].rationale == "it is bad"  # a test file that has the field is still read by it


def test_a_csv_row_is_numbered_by_the_line_it_starts_on():
    text = 'id,text\r\n\r\nA,"two\r\nlines"\r\nB,one\r\n  \r\nC,"x\ny\nz"\nD,last'
    rows = list(csv_rows(io.StringIO(text, newline="")))
    assert [(n, r["id"]) for n, r in rows if isinstance(r, dict)] == [(3, "A"), (5, "B"), (7, "C"), (10, "D")]
    assert [n for n, r in rows if isinstance(r, ValueError)] == [6]  # a line of spaces: one field, not two


def test_the_samples_of_an_own_file_are_read_as_its_other_fields(tmp_path):
    """Before: a sample's blank rationale became a target, and its label kept the file's spelling."""
    row = ('{"input": "x", "label": "positive", "samples": [{"rationale": "   ", "teacher_label": "positive"}, '
           '{"rationale": "It praises it.", "teacher_label": "Positive"}]}\n')
    example = get_task(TaskConfig(task=write(tmp_path / "s.jsonl", row), label_set="positive,negative")).load(
        "train")[0]
    assert example.samples == ((None, "positive"), ("It praises it.", "positive"))
