"""A `dsbs teach` output directory as a task: the teacher's rationales and labels for the split it
annotated, every other split from the task it annotated.

The output records how to read it (``task.json``): the benchmark it came from, or the user's own
task with its field names, label set, metric and answer marker. The output's own fields are fixed
(``input``, ``label``, ``rationale``, ``teacher_label``), so field flags given with such a task
describe the user's other files, a test file in the format of the one the teacher read.
"""

import dataclasses
import importlib
import importlib.util
import json
from functools import partial
from pathlib import Path

from dsbs.errors import ConfigError, DataError
from dsbs.tasks import custom
from dsbs.tasks.common import Task

RECORD = "task.json"
SUMMARY = "teach_summary.json"


def is_teach_output(source: str) -> bool:
    path = Path(source)
    return path.is_dir() and ((path / RECORD).is_file() or (path / SUMMARY).is_file())


def read_record(directory: Path) -> dict:
    path = directory / RECORD
    if not path.is_file():
        raise DataError(f"{directory} was written by an older dsbs teach (no {RECORD}): run dsbs teach again into a "
                        "new --output (prompts and the local backend's API changed, so the teacher may be asked "
                        "again; --api completion keeps an old local run's requests)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None


def data_paths(directory: Path, record: dict) -> list[Path]:
    """The files that hold the output's rows (not its card, summary or answer cache)."""
    return [directory / RECORD, directory / (record.get("benchmark") or record["file"])]


def is_built_in(name: str) -> bool:
    return name.isidentifier() and importlib.util.find_spec(f"dsbs.tasks.{name}") is not None


def given_settings(config) -> dict:
    """The own-task settings given as flags (None means not given)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if v is not None and k not in ("task", "data_dir")}


def taught_fields(directory: Path, source: dict) -> dict[str, str]:
    label = source.get("label_field") or custom.FIELD_DEFAULTS["label_field"]
    return {"label": f"the gold label (field {label!r} of {source['task']})",
            "rationale": f"the teacher's rationale in {directory} (none where its answer did not parse)",
            "teacher_label": f"the teacher's label in {directory} (none where its answer did not parse)"}


def load(directory: Path, record: dict, taught_config, source_task: Task, split: str) -> list:
    if split == record["split"]:
        return custom.load_file(directory / record["file"], taught_config)
    return source_task.load(split)


def task(config) -> Task:
    directory = Path(config.task)
    record = read_record(directory)
    if config.data_dir:
        raise ConfigError(f"{directory} is a teach output and holds its own data: leave out --data-dir")
    origin = f"the teacher's, from {directory}"
    if record.get("benchmark"):
        if given_settings(config):
            raise ConfigError(f"{', '.join(given_settings(config))}: {directory} holds the built-in task "
                              f"{record['benchmark']}, which reads its own fields")
        built_in = importlib.import_module(f"dsbs.tasks.{record['benchmark']}").task(directory)
        return dataclasses.replace(built_in, origin=origin)
    source = dataclasses.replace(config, **{**record["source"], "data_dir": None, **given_settings(config)})
    if is_built_in(source.task):  # a generated task (the demo): its other splits are its own
        if given_settings(config):
            raise ConfigError(f"{', '.join(given_settings(config))}: {directory} holds the built-in task "
                              f"{source.task}, which reads its own fields")
        source_task = importlib.import_module(f"dsbs.tasks.{source.task}").task(None)
    else:
        source_task = custom.task(source)
    # the output's own rows: the student input already built, gold and teacher labels, the rationale
    taught_config = dataclasses.replace(source, task=str(directory / record["file"]), input_template=None,
                                        cluster_field="cluster" if source.cluster_field else None,
                                        **custom.FIELD_DEFAULTS)
    return dataclasses.replace(source_task, load=partial(load, directory, record, taught_config, source_task),
                               fields=partial(taught_fields, directory, dataclasses.asdict(source)), origin=origin)
