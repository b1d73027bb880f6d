"""A new benchmark is one file in dsbs/tasks: the task list, errors and reports find it there."""

import sys

import pytest

import dsbs.tasks
from dsbs.errors import DataError
from dsbs.tasks import TaskConfig, benchmarks, built_in_names, get_task

TOY = '''
"""A toy paper-layout task: yes/no questions."""

from dsbs.tasks.common import paper_task, row_field, split_on_marker, text_labels_match


def parse_row(row, where):
    return {"input": row_field(row, "question", str, where), "label": row_field(row, "answer", str, where)}


def parse_completion(completion):
    return split_on_marker(completion, "So the answer is")


def task(data_dir=None):
    return paper_task("toy", data_dir, parse_row, parse_completion, text_labels_match, label_max_tokens=2,
                      teacher_few_shot_accuracy=51.0, paper_t5_base={"dsbs": 60.0})
'''


def test_the_shipped_tasks_are_the_modules_of_the_package():
    assert built_in_names() == ("anli1", "cqa", "demo", "esnli", "svamp")
    assert benchmarks() == ("anli1", "cqa", "esnli", "svamp")  # the demo generates its rows
    for name in benchmarks():
        assert get_task(TaskConfig(task=name)).teacher_few_shot_accuracy > 60


def test_a_new_task_file_is_found_everywhere(tmp_path, monkeypatch):
    package = tmp_path / "extra"
    package.mkdir()
    (package / "toy.py").write_text(TOY)
    (tmp_path / "data" / "toy").mkdir(parents=True)
    (tmp_path / "data" / "toy" / "toy_train.json").write_text('{"question": "Is ice cold?", "answer": "yes"}\n')
    monkeypatch.setattr(dsbs.tasks, "__path__", [*dsbs.tasks.__path__, str(package)])
    monkeypatch.delitem(sys.modules, "dsbs.tasks.toy", raising=False)
    assert "toy" in built_in_names() and "toy" in benchmarks()
    [row] = get_task(TaskConfig(task="toy", data_dir=str(tmp_path / "data"))).load("train")
    assert (row.input, row.label) == ("Is ice cold?", "yes")
    from dsbs.report import references

    assert references("toy") == (51.0, {"dsbs": 60.0})
    with pytest.raises(DataError, match="use anli1, cqa, demo, esnli, svamp, toy, a .jsonl/.csv/.parquet/.arrow file"):
        get_task(TaskConfig(task="nosuch"))
