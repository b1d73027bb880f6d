"""Tasks: the paper's four benchmarks, a built-in demo, and a user's own JSONL/CSV file.

A built-in task is one module of this package defining ``task(data_dir) -> Task``, with its
teacher prompt beside it (``NAME.json``, where it has one). The list of built-in tasks is read from
the package itself, so adding a task is adding its file; help texts and errors derive from it.
"""

import pkgutil
from dataclasses import dataclass
from typing import Literal

from dsbs.configs import check_choices, option
from dsbs.errors import DataError
from dsbs.tasks.common import Example, Task

NOT_TASKS = ("common", "custom")  # the shared code, and the reader of a user's own file


def built_in_names() -> tuple[str, ...]:
    """Every module of this package that is a task, by name."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in NOT_TASKS))


BUILT_IN = built_in_names()


def built_in_task(name: str, data_dir=None) -> Task:
    import importlib

    module = importlib.import_module(f"dsbs.tasks.{name}")
    return module.task(data_dir)


def benchmarks() -> tuple[str, ...]:
    """The built-in tasks read from the paper's data layout (the others generate their rows)."""
    return tuple(name for name in built_in_names() if built_in_task(name).paper_layout)


@dataclass
class TaskConfig:
    """Which task to load and, for a user's own file, how to read it."""

    task: str = option("svamp", ", ".join(BUILT_IN) + ", or a JSONL/CSV file of your own (its training pool)")
    data_dir: str | None = option(None, "the paper's data directory (default: $DSBS_DATA_DIR, then `dsbs data "
                                  "download`'s cache)")
    test_file: str | None = option(None, "own task: JSONL/CSV file of the test split")
    input_field: str = option("input", "own task: field holding the student input")
    input_template: str | None = option(None, "own task: a str.format template over several fields, e.g. "
                                        "'{question} Options: {options}' (overrides --input-field)")
    label_field: str = option("label", "own task: field holding the gold label (may be absent in unlabeled rows)")
    rationale_field: str = option("rationale", "own task: field holding the teacher's rationale (optional)")
    teacher_label_field: str = option("teacher_label", "own task: field holding the teacher's label (optional)")
    metric: Literal["exact", "equation"] = option("exact", "own task: exact (text match after light normalisation) "
                                                  "or equation (arithmetic compared by value)")
    answer_marker: str = option("So the answer is", "own task: the phrase before the label in a teacher's answer")
    label_set: str | None = option(None, "own task: comma-separated allowed labels; a teacher answer outside them "
                                   "counts as unparsable")

    def __post_init__(self):
        check_choices(self)


def get_task(config: TaskConfig) -> Task:
    if config.task in built_in_names():
        return built_in_task(config.task, config.data_dir)
    from dsbs.tasks import custom

    return custom.task(config)


__all__ = ["BUILT_IN", "DataError", "Example", "Task", "TaskConfig", "benchmarks", "get_task"]
