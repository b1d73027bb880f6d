"""Tasks: the paper's four benchmarks, a built-in demo, and a user's own JSONL/CSV file.

A built-in task is one module of this package defining ``task(data_dir) -> Task``, with its
teacher prompt beside it (``NAME.json``, where it has one). The list of built-in tasks is read from
the package itself, so adding a task is adding its file; help texts and errors derive from it.
"""

import dataclasses
import functools
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dsbs.configs import check_choices, option
from dsbs.errors import ConfigError, DataError
from dsbs.tasks.common import Example, Task

NOT_TASKS = ("common", "custom", "taught")  # shared code, the readers of a user's own file and of a teach output


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
    """Which task to load and, for a user's own file, how to read it.

    Own-task settings left unset (None) take their defaults, or, for a student, what its dsbs.json
    recorded; a teach output's own fields are fixed, so there they describe the user's other files.
    """

    task: str | None = option(None, ", ".join(BUILT_IN) + ", a JSONL/CSV/parquet file of your own (its training "
                              "pool), or a `dsbs teach` output directory (the teacher's rationales and labels); "
                              "evaluate's default is the student's own task")
    data_dir: str | None = option(None, "the paper's data directory, for the built-in benchmarks (default: "
                                  "$DSBS_DATA_DIR, then `dsbs data download`'s cache)")
    test_file: str | None = option(None, "own task: JSONL/CSV file of the test split, in the format of the file "
                                   "the task started from")
    name: str | None = option(None, "own task: its name in outputs, cards and reports (default: the file's name, "
                              "or its folder's for a file named like a split, e.g. reviews/train.csv)")
    input_field: str | None = option(None, "own task: field holding the student input (default: input)")
    input_template: str | None = option(None, "own task: a str.format template over several fields, e.g. "
                                        "'{question} Options: {options}' (overrides --input-field)")
    label_field: str | None = option(None, "own task: field holding the gold label; rows may leave it empty "
                                     "(default: label)")
    rationale_field: str | None = option(None, "own task: field holding a rationale; rows may leave it empty "
                                         "(default: rationale)")
    teacher_label_field: str | None = option(None, "own task: field holding the teacher's label, if any (default: "
                                             "teacher_label)")
    metric: Literal["exact", "equation"] | None = option(None, "own task: exact (text match after light "
                                                         "normalisation; the default) or equation (arithmetic "
                                                         "compared by value)")
    answer_marker: str | None = option(None, "own task: the phrase before the label in a teacher's answer "
                                       "(default: So the answer is)")
    label_set: str | None = option(None, "own task: comma-separated allowed labels (a JSON list where a label holds a "
                                   "comma); a teacher answer outside them "
                                   "counts as unparsable, and students can --choices among them")
    cluster_field: str | None = option(None, "own task: a field whose equal values mark rows that are not "
                                       "independent (several questions on one passage): reports' intervals count "
                                       "each such group once")

    def __post_init__(self):
        check_choices(self)


OWN_TASK_SETTINGS = ("test_file", "name", "input_field", "input_template", "label_field", "rationale_field",
                     "teacher_label_field", "metric", "answer_marker", "label_set", "cluster_field")
# what a student's recorded task keeps when it is evaluated on another task file: the format, not the files
FORMAT_SETTINGS = ("input_field", "input_template", "label_field", "rationale_field", "teacher_label_field", "metric",
                   "answer_marker", "label_set", "cluster_field")


def get_task(config: TaskConfig) -> Task:
    from dsbs.tasks import custom, taught

    if not config.task:
        raise ConfigError(f"choose a task with --task: {', '.join(built_in_names())}, a JSONL/CSV file of your own, "
                          "or a dsbs teach output directory")
    if config.task in built_in_names():
        given = [name for name in OWN_TASK_SETTINGS if getattr(config, name) is not None]
        if given:
            raise ConfigError(f"{', '.join('--' + g.replace('_', '-') for g in given)}: these describe your own "
                              f"file; the built-in task {config.task} reads its own")
        return built_in_task(config.task, config.data_dir)
    if taught.is_teach_output(config.task):
        return taught.task(config)
    if not custom.is_task_file(config.task):
        raise DataError(f"unknown task {config.task!r}: use {', '.join(built_in_names())}, a .jsonl/.csv/.parquet/"
                        ".arrow file, a directory saved with datasets' save_to_disk, hf:NAME[:CONFIG], or a dsbs "
                        "teach output directory")
    if config.data_dir:
        raise ConfigError(f"--data-dir is the paper's data directory for the built-in benchmarks; your own task reads "
                          f"its rows from --task {config.task}. To train on the rationales of a teach output, pass its "
                          f"directory as the task: --task {config.data_dir}")
    return custom.task(config)


def same_source(a: str, b: str | None) -> bool:
    """The same task: the same name, or the same file however its path is written."""
    if b is None or a.startswith("hf:") or a in built_in_names():
        return a == b
    return Path(a).resolve() == Path(b).resolve()


def student_task_config(meta: dict, given: TaskConfig) -> TaskConfig:
    """The task a student was trained on, as its dsbs.json records it, with the settings given now on top.

    Another task file given now keeps the recorded format (fields, label set, metric) but not the
    recorded files; a built-in task given now keeps nothing of an own task's format (it has its own).
    """
    recorded = dict(meta.get("task_config") or {"task": meta["task"]})
    if given.task and not same_source(given.task, recorded.get("task")):
        keep = () if given.task in built_in_names() else FORMAT_SETTINGS
        recorded = {k: v for k, v in recorded.items() if k in keep}
    settings = {**recorded, **{k: v for k, v in dataclasses.asdict(given).items() if v is not None}}
    return TaskConfig(**{f.name: settings.get(f.name) for f in dataclasses.fields(TaskConfig)})


def data_files(config: TaskConfig) -> list[Path]:
    """The files a task's rows come from: a benchmark's directory, a user's files, a teach output's data."""
    from dsbs.tasks import taught
    from dsbs.tasks.common import files_under, resolve_data_dir

    if config.task in built_in_names():
        paper = built_in_task(config.task).paper_layout
        return files_under(resolve_data_dir(config.data_dir) / config.task) if paper else []  # else: generated
    sources = [config.task, config.test_file]
    if taught.is_teach_output(config.task):
        directory = Path(config.task)
        record = taught.read_record(directory)
        sources = [*taught.data_paths(directory, record), (record.get("source") or {}).get("test_file"),
                   config.test_file]
    return sorted({f for s in sources if s and not str(s).startswith("hf:") for f in files_under(Path(s))})


def data_digest(config: TaskConfig) -> str:
    """A digest of the contents of the task's files: a run on changed data is another run."""
    files = data_files(config)
    return _digest(str(config.task), tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@functools.lru_cache(maxsize=64)
def _digest(task: str, files: tuple) -> str:
    """Keyed by each file's size and time, so that a recipe of many cells reads the same files once."""
    import hashlib

    digest = hashlib.sha256(task.encode())
    for path, _, _ in files:
        digest.update(Path(path).name.encode())
        digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return digest.hexdigest()


__all__ = ["BUILT_IN", "DataError", "Example", "Task", "TaskConfig", "benchmarks", "data_digest", "get_task",
           "student_task_config"]
