"""Readers, alignment and splits, on files written here and on the paper's released data."""

import json
from pathlib import Path

import pytest

from dsbs.tasks import TaskConfig, get_task, svamp
from dsbs.tasks.common import DataError, Example, load_paper_split, read_jsonl, split_validation, subsample
from tests.conftest import DATA_DIR, needs_data


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"input": "a", "label": "b"}\n{"input": "c", "label"\n')
    with pytest.raises(DataError, match=rf"{path}:2: invalid JSON"):
        list(read_jsonl(path))


def test_empty_file_and_non_utf8(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="file is empty"):
        list(read_jsonl(empty))
    binary = tmp_path / "latin.jsonl"
    binary.write_bytes(b'{"input": "ok"}\n{"input": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin.jsonl:2: not valid UTF-8"):
        list(read_jsonl(binary))


def test_missing_and_mistyped_fields_named(tmp_path):
    root = tmp_path / "svamp"
    root.mkdir()
    (root / "svamp_train.json").write_text('{"input": "q1", "label": "( 1 + 2 )"}\n{"input": "q2"}\n')
    with pytest.raises(DataError, match=r"svamp_train.json:2: missing field 'label'"):
        load_paper_split(tmp_path, "svamp", "train", svamp.parse_row, svamp.parse_completion)
    (root / "svamp_train.json").write_text('{"input": 5, "label": "( 1 + 2 )"}\n')
    with pytest.raises(DataError, match=r"svamp_train.json:1: field 'input' should be str, got int"):
        load_paper_split(tmp_path, "svamp", "train", svamp.parse_row, svamp.parse_completion)
    (root / "svamp_train.json").write_text('{"input": "q1", "label": "( 1 + 2 )"}\n{"input": "q2", "label": "three"}\n')
    with pytest.raises(DataError, match=r"svamp_train.json:2: field 'label' is not an arithmetic expression"):
        load_paper_split(tmp_path, "svamp", "train", svamp.parse_row, svamp.parse_completion)


def test_alignment_by_position_and_count_mismatch(tmp_path):
    root = tmp_path / "svamp"
    (root / "llm").mkdir(parents=True)
    rows = [{"input": f"q{i}", "label": f"( {i} + 1 )"} for i in range(3)]
    (root / "svamp_train.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # two batch files, ordered by their number (10 after 2), not by name
    (root / "llm" / "train_CoT_0.json").write_text(json.dumps(["r0. The answer is (0 + 1).", "no answer"]))
    (root / "llm" / "train_CoT_1.json").write_text(json.dumps(["r2. The answer is (2 + 1)."]))
    examples = load_paper_split(tmp_path, "svamp", "train", svamp.parse_row, svamp.parse_completion)
    assert [(e.input, e.rationale, e.teacher_label) for e in examples] == [
        ("q0", "r0.", "0+1"), ("q1", None, None), ("q2", "r2.", "2+1")]
    (root / "llm" / "train_CoT_1.json").write_text(json.dumps([]))
    with pytest.raises(DataError, match="2 teacher completions .* 3 rows"):
        load_paper_split(tmp_path, "svamp", "train", svamp.parse_row, svamp.parse_completion)


def test_validation_split_is_fixed_and_disjoint():
    pool = [Example(input=str(i)) for i in range(100)]
    train, val = split_validation(pool, 0.1, seed=0)
    assert len(val) == 10 and len(train) == 90
    assert not {e.input for e in train} & {e.input for e in val}
    assert [e.input for e in split_validation(pool, 0.1, seed=0)[1]] == [e.input for e in val]
    quarter = subsample(train, 0.25, seed=1)
    assert len(quarter) == 22 and subsample(train, 0.25, seed=1) == quarter
    assert subsample(train, 0.25, seed=2) != quarter


def test_custom_task_jsonl_and_csv(tmp_path):
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text(json.dumps({"q": "2+2?", "ctx": "math", "answer": "4", "why": "two and two",
                                 "teacher": "4"}) + "\n")
    config = TaskConfig(task=str(jsonl), input_template="{ctx}: {q}", label_field="answer",
                        rationale_field="why", teacher_label_field="teacher", metric="equation")
    task = get_task(config)
    [example] = task.load("train")
    assert (example.input, example.label, example.rationale, example.teacher_label) == ("math: 2+2?", "4",
                                                                                        "two and two", "4")
    assert task.labels_match("2 + 2", "4")
    csv_path = tmp_path / "mine.csv"
    csv_path.write_text("text,label\nhello,greeting\nbye,\n")
    rows = get_task(TaskConfig(task=str(csv_path), input_field="text")).load("train")
    assert [(e.input, e.label) for e in rows] == [("hello", "greeting"), ("bye", None)]
    with pytest.raises(DataError, match=r"mine.csv:2: missing field 'body'"):
        get_task(TaskConfig(task=str(csv_path), input_field="body")).load("train")
    with pytest.raises(DataError, match="--test-file"):
        task.load("test")


def test_a_csv_is_read_as_the_csv_module_writes_it(tmp_path):
    """Before: rows were split at every str.splitlines break: U+2028 made two rows (the first silently
    unlabelled), a quoted line break vanished, an Excel byte-order mark hid the header's first field."""
    import csv

    path = tmp_path / "mine.csv"
    with open(path, "w", newline="", encoding="utf-8-sig") as f:
        csv.writer(f).writerows([["text", "label"], ["first\u2028second", "pos"], ["multi\nline", "neg"]])
    rows = get_task(TaskConfig(task=str(path), input_field="text")).load("train")
    assert [(e.input, e.label) for e in rows] == [("first\u2028second", "pos"), ("multi\nline", "neg")]
    # a quoted \r\n is kept as written, as predict reads it (before: training read \n, predict \r\n)
    from dsbs.predict import _records

    path.write_bytes(b'text,label\r\n"a\r\nb",pos\r\n')
    assert get_task(TaskConfig(task=str(path), input_field="text")).load("train")[0].input == "a\r\nb"
    assert next(iter(_records(path)))[1]["text"] == "a\r\nb"
    path.write_text("text,label\nfine,pos\nno, quotes, here,neg\n")
    with pytest.raises(DataError, match=r"mine.csv:3: 4 fields where the header has 2"):
        get_task(TaskConfig(task=str(path), input_field="text")).load("train")


def test_a_jsonl_the_tool_appends_to_keeps_unicode_line_separators(tmp_path):
    from dsbs.tasks.common import read_appended_jsonl

    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"a": "x\u2028y\x85z"}, ensure_ascii=False) + "\n" + '{"a": "cut')
    assert read_appended_jsonl(path) == [{"a": "x\u2028y\x85z"}]
    assert path.read_text() == json.dumps({"a": "x\u2028y\x85z"}, ensure_ascii=False) + "\n"


@needs_data
@pytest.mark.parametrize("name, split, rows, failures, accuracy", [
    ("cqa", "test", 1221, 31, 0.7723), ("cqa", "train", 9741, 318, 0.7426), ("svamp", "test", 200, 2, 0.74),
    ("svamp", "train", 800, 13, 0.7325), ("esnli", "test", 2000, 0, 0.737), ("esnli", "valid", 9842, 4, 0.7317),
    ("anli1", "valid", 300, 2, 0.6533)])
def test_released_data_loads_with_palm_accuracy(name, split, rows, failures, accuracy):
    """Teacher accuracy is scored as the paper scores it; parse failures count labels we cannot train on
    (CQA: 315 train labels that name no choice, most of them two)."""
    from dsbs.data import inspect

    report = inspect(TaskConfig(task=name, data_dir=DATA_DIR), split=split)
    assert report["rows"] == rows and report["teacher_answers"] == rows
    assert report["parse_failures"] == failures and report["teacher_accuracy"] == accuracy


@needs_data
def test_cqa_teacher_labels_are_the_rows_own_choices():
    rows = get_task(TaskConfig(task="cqa", data_dir=DATA_DIR)).load("train")
    labelled = [e for e in rows if e.teacher_label is not None]
    assert all(e.teacher_label in e.choices for e in labelled)
    assert sum(e.teacher_label != e.teacher_answer for e in labelled) == 130  # differed only in case or spacing
    assert all(e.rationale is None for e in rows if e.teacher_label is None)


@pytest.mark.parametrize("content, message", [
    ('["ok", "cut', r"train_CoT_0.json:1: invalid JSON"),
    ('{"not": "a list"}', "expected a JSON list of completion strings"),
    ('["fine", 7]', "expected a JSON list of completion strings"),
    (b'["caf\xe9"]', "not valid UTF-8"),
])
def test_malformed_teacher_outputs_are_named(tmp_path, content, message):
    root = tmp_path / "svamp"
    (root / "llm").mkdir(parents=True)
    (root / "svamp_train.json").write_text('{"input": "q", "label": "( 1 + 2 )"}\n')
    target = root / "llm" / "train_CoT_0.json"
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=message):
        load_paper_split(tmp_path, "svamp", "train", svamp.parse_row, svamp.parse_completion)


@needs_data
def test_svamp_labels_load_compact_with_the_released_values():
    from dsbs.equation import evaluate_equation

    released = [row["label"] for _, row in read_jsonl(Path(DATA_DIR) / "svamp" / "svamp_test.json")]
    loaded = [e.label for e in svamp.task(DATA_DIR).load("test")]
    assert released[0] == "( 10.0 * 45.0 )" and loaded[0] == "10*45"
    assert [evaluate_equation(a) for a in loaded] == [evaluate_equation(b) for b in released]
    assert sum(map(len, loaded)) < 0.5 * sum(map(len, released))
