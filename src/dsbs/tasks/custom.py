"""A user's own task: rows in a JSONL, CSV or `datasets` source, mapped to input, label, rationale, teacher label.

Fields default to ``input``, ``label``, ``rationale`` and ``teacher_label``. A field named by its flag
must exist in the file: a misspelling stops with the flag and the fields the file has, while a
default field that is absent means the rows lack it (unlabeled rows, rows without rationales).
"""

import dataclasses
import json
import re
import string
from functools import partial
from pathlib import Path

from dsbs.equation import equations_equal, is_equation
from dsbs.errors import ConfigError, MissingDependency
from dsbs.tasks.common import (
    DataError,
    Example,
    Task,
    cut_at_next_example,
    normalize_text_label,
    read_records,
    split_on_marker,
    text_labels_match,
)

FIELD_DEFAULTS = {"input_field": "input", "label_field": "label", "rationale_field": "rationale",
                  "teacher_label_field": "teacher_label"}
DEFAULT_MARKER = "So the answer is"
FILE_SUFFIXES = (".jsonl", ".json", ".csv")
DATASET_SUFFIXES = (".parquet", ".arrow")
# a file named like a split takes its task's name from its folder: data/reviews/train.csv is "reviews"
SPLIT_NAMES = ("train", "test", "valid", "validation", "dev", "eval", "data", "rows")


def field_name(config, key: str) -> str:
    """The field a row holds ``key`` in: the flag's value, else the default."""
    return getattr(config, key) or FIELD_DEFAULTS[key]


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def answer_marker(config) -> str:
    return config.answer_marker or DEFAULT_MARKER


def label_set(text: str | None) -> tuple[str, ...] | None:
    """--label-set's labels (comma-separated, or a JSON list for labels that hold a comma), or None where
    answers are open."""
    if not text:
        return None
    if text.lstrip().startswith("["):
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--label-set {text!r}: not a JSON list ({err.msg})") from None
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise ConfigError(f"--label-set {text!r}: a JSON list of strings is needed")
        return distinct(tuple(label.strip() for label in labels if label.strip()), text)
    return distinct(tuple(label.strip() for label in text.split(",") if label.strip()), text)


def distinct(labels: tuple[str, ...], text: str) -> tuple[str, ...]:
    """Labels that answers can tell apart: answers are read whatever their case, spacing and final full stop."""
    seen = {}
    for label in labels:
        if label_key(label) in seen:
            raise ConfigError(f"--label-set {text!r}: {seen[label_key(label)]!r} and {label!r} differ only in case, "
                              "spacing, quotes or a final full stop, which answers are read without")
        seen[label_key(label)] = label
    return labels


def task_name(config) -> str:
    """--name, else the dataset's or file's name (its folder's, for a file named like a split)."""
    if config.name:
        return config.name
    if config.task.startswith("hf:"):
        return config.task[3:].split(":")[0].split("/")[-1]
    path = Path(config.task)
    stem = path.stem if path.suffix else path.name
    if stem.lower() in SPLIT_NAMES and path.resolve().parent.name:
        return path.resolve().parent.name
    return stem


def _optional_text(row: dict, name: str, where: str) -> str | None:
    value = row.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):  # a cell of spaces is an empty one
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: field {name!r} should be text, got {type(value).__name__}")
    return str(value)


def _fields_of(row: dict) -> str:
    return ", ".join(map(str, row)) or "none"


def student_input(row: dict, config, where: str) -> str:
    """The text the student reads for ``row``: its input field, or --input-template filled from its fields."""
    if config.input_template:
        return templated(row, config.input_template, where)
    name = field_name(config, "input_field")
    text = _optional_text(row, name, where)
    if text is None:
        state = "missing" if name not in row else "empty"
        raise DataError(f"{where}: {state} field {name!r} (--input-field); the row's fields are: {_fields_of(row)}")
    return text


def templated(row: dict, template: str, where: str) -> str:
    """--input-template filled from ``row``: an empty field (a CSV's empty cell, a JSON null) as nothing, never
    as "None"; a row that fills it with nothing but the template's own text stops."""
    values = {k: "" if v is None else v for k, v in row.items()}
    try:
        text = template.format(**values)
    except KeyError as err:
        raise DataError(f"{where}: missing field {err.args[0]!r} used by --input-template; the row's fields are: "
                        f"{_fields_of(row)}") from None
    except (IndexError, TypeError, ValueError, AttributeError) as err:  # "{options[0]}" of a number, "{n:d}" of text
        raise DataError(f"{where}: cannot fill --input-template {template!r} from this row ({err})") from None
    if all(row.get(name) is None or not str(row[name]).strip() for name in template_fields(template)):
        raise DataError(f"{where}: every field used by --input-template is empty; the row's fields are: "
                        f"{_fields_of(row)}")
    return text


def template_fields(template: str) -> set[str]:
    """The row fields a format string reads ("{choices[0]}" reads choices)."""
    return {re.split(r"[.\[]", name)[0] for _, name, _, _ in string.Formatter().parse(template) if name}


def parse_completion(config, completion: str) -> tuple[str | None, str | None]:
    """(rationale, label) around the task's answer marker, checked against its label set or metric."""
    rationale, answer = split_on_marker(cut_at_next_example(completion, ("\nQ:",)), answer_marker(config))
    if rationale is None or not answer:
        return None, None
    answer = answer.splitlines()[0].strip()
    labels = label_set(config.label_set)
    if labels:
        label = in_label_set(answer, labels)
        return (rationale, label) if label else (None, None)
    answer = answer.rstrip(".").strip()
    if config.metric == "equation" and not is_equation(answer):
        return None, None
    return rationale, answer


def label_key(text: str) -> str:
    """What a label is compared by: spaces collapsed, surrounding quotes and a final full stop dropped, any case."""
    return normalize_text_label(text).lower()


def in_label_set(text: str, labels: tuple[str, ...]) -> str | None:
    """``text`` as the label set spells it, or None: case, spacing, surrounding quotes and a final full stop
    aside ("U.S." is a label; "positive." is the label "positive" ending a sentence), and "1.0" is the label "1"."""
    allowed = {label_key(label): label for label in labels}
    text = " ".join(text.split())
    plain = (text, text.removesuffix(".").strip())
    found = next((allowed[label_key(c)] for c in plain if label_key(c) in allowed), None)
    return found or next((label for label in labels if same_number(text, label)), None)


def own_labels_match(labels: tuple[str, ...] | None, predicted: str, gold: str) -> bool:
    """With a label set, an answer is scored as the label it names ("Positive" is "positive"); else as text."""
    if labels:
        predicted, gold = in_label_set(predicted, labels) or predicted, in_label_set(gold, labels) or gold
    return text_labels_match(predicted, gold)


def same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def gold_label(row: dict, config, where: str) -> str | None:
    """A row's gold label, spelt as the label set spells it; a gold label outside the set stops the run."""
    name = field_name(config, "label_field")
    value, labels = _optional_text(row, name, where), label_set(config.label_set)
    if value is None or not labels:
        return value
    label = in_label_set(value, labels)
    if label is None:
        raise DataError(f"{where}: field {name!r} is {value!r}, which is not one of --label-set "
                        f"{config.label_set}")
    return label


def teacher_answer(value: str | None, config) -> str | None:
    """A teacher's label, spelt as the label set spells it; one outside the set is an answer that did not parse."""
    labels = label_set(config.label_set)
    return in_label_set(value, labels) if value is not None and labels else value


def row_to_example(row: dict, where: str, config) -> Example:
    return Example(
        input=student_input(row, config, where),
        label=gold_label(row, config, where),
        rationale=_optional_text(row, field_name(config, "rationale_field"), where),
        teacher_label=teacher_answer(_optional_text(row, field_name(config, "teacher_label_field"), where), config),
        id=row_id(row, where),
        where=where,
        cluster=_optional_text(row, config.cluster_field, where) if config.cluster_field else None,
        samples=tuple((_optional_text(s, "rationale", where), teacher_answer(_optional_text(s, "teacher_label", where),
                                                                             config))
                      for s in row["samples"] if isinstance(s, dict)) if isinstance(row.get("samples"), list) else (),
    )


def row_id(row: dict, where: str) -> str:
    """The row's own id, else where it stands (its line, or its row number in a dataset)."""
    given = row.get("id")
    if given is not None and str(given).strip():
        return str(given)
    return where.rsplit(" ", 1)[-1].rsplit(":", 1)[-1]


TEST_OPTIONAL = ("rationale_field", "teacher_label_field")  # a test file needs inputs and labels only


def check_named_fields(columns, config, source: str, optional: tuple[str, ...] = ()) -> None:
    """A field named by its flag that no row holds is a misspelling, not a file without that field (``optional``:
    fields this file may lack)."""
    present = set(columns)
    for key in (*FIELD_DEFAULTS, "cluster_field"):
        name = getattr(config, key)
        if key != "input_field" and key not in optional and name is not None and name not in present:
            raise DataError(f"{source}: no row has the field {name!r} given by {flag(key)}; the fields are: "
                            f"{', '.join(map(str, columns)) or 'none'}")


def load_file(path: Path, config, columns: dict | None = None, optional: tuple[str, ...] = ()) -> list[Example]:
    """Every row of a JSONL or CSV file; ``columns`` (if given) learns the fields the file has, for messages."""
    records = list(read_records(path))
    if not records:
        raise DataError(f"{path}: no rows")
    fields = list(dict.fromkeys(name for _, row in records for name in row))
    check_named_fields(fields, config, str(path), optional)
    if columns is not None:
        columns[str(path)] = fields
    return [row_to_example(row, f"{path}:{number}", config) for number, row in records]


def is_dataset_source(source: str) -> bool:
    """A Hugging Face `datasets` source: hf:NAME[:CONFIG], a parquet or arrow file, or a save_to_disk directory."""
    path = Path(source)
    return source.startswith("hf:") or path.suffix.lower() in DATASET_SUFFIXES or (
        path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "dataset_info.json", "state.json")))


def is_task_file(source: str) -> bool:
    return Path(source).suffix.lower() in FILE_SUFFIXES or is_dataset_source(source)


def open_dataset(source: str):
    """The `datasets` Dataset or DatasetDict behind ``source``."""
    try:
        import datasets
    except ImportError:
        raise MissingDependency("a datasets source needs the datasets package: pip install 'dsbs[hf]'") from None
    if source.startswith("hf:"):
        name, _, subset = source[3:].partition(":")
        return datasets.load_dataset(name, subset or None)
    path = Path(source)
    if not path.exists():
        raise DataError(f"{source}: file not found")
    if path.is_dir():
        return datasets.load_from_disk(str(path))
    if path.suffix.lower() == ".parquet":
        return datasets.Dataset.from_parquet(str(path))
    return datasets.Dataset.from_file(str(path))


def load_dataset_split(source: str, split: str, config, columns: dict | None = None,
                       optional: tuple[str, ...] = ()) -> list[Example]:
    """Rows of one split of a `datasets` source; errors name the dataset, split, row and field."""
    import datasets

    data = open_dataset(source)
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise DataError(f"{source}: no split {split!r} (it has {', '.join(data)}); choose one with "
                            "--train-split or --split")
        data = data[split]
    check_named_fields(data.column_names, config, f"{source} [{split}]", optional)
    if columns is not None:
        columns[source] = list(data.column_names)
    examples = [row_to_example(row, f"{source} [{split}] row {number}", config) for number, row in enumerate(data)]
    if not examples:
        raise DataError(f"{source} [{split}]: no rows")
    return examples


def _load(config, columns: dict, split: str) -> list[Example]:
    single_file = not config.task.startswith("hf:") and not Path(config.task).is_dir()
    # --test-file is the test split, whatever the source; one file is one split, so it has no other
    if split == "test" and (config.test_file or single_file):
        if not config.test_file:
            raise DataError("this task has no test split: pass --test-file")
        return load_any(config.test_file, "test", config, columns, TEST_OPTIONAL)
    if is_dataset_source(config.task) and not single_file:
        return load_dataset_split(config.task, split, config, columns)
    if split != "train":
        raise DataError(f"unknown split {split!r} for a file task (train, or test from --test-file)")
    if is_dataset_source(config.task):
        return load_dataset_split(config.task, "train", config, columns)
    return load_file(Path(config.task), config, columns)


def load_any(source: str, split: str, config, columns: dict | None = None,
             optional: tuple[str, ...] = ()) -> list[Example]:
    if is_dataset_source(source):
        return load_dataset_split(source, "train" if not Path(source).is_dir() else split, config, columns, optional)
    return load_file(Path(source), config, columns, optional)


def describe_fields(config, columns: dict) -> dict[str, str]:
    """How a message names where each of a row's parts comes from (the flag, and the fields the files have)."""
    seen = "; the fields are: " + " / ".join(", ".join(map(str, c)) for c in columns.values()) if columns else ""
    return {part: f"field {field_name(config, key)!r} ({flag(key)}{seen})"
            for part, key in (("label", "label_field"), ("rationale", "rationale_field"),
                              ("teacher_label", "teacher_label_field"))}


def recorded_config(config) -> dict:
    """The settings a student keeps to read this task's files again: paths made absolute, no data directory."""
    recorded = dataclasses.asdict(config)
    for key in ("task", "test_file"):
        value = recorded[key]
        if value and not value.startswith("hf:"):
            recorded[key] = str(Path(value).resolve())
    return {**recorded, "data_dir": None, "name": task_name(config)}


def task(config) -> Task:
    labels = label_set(config.label_set)
    columns: dict = {}  # filled as files are read, so that messages can list the fields a file has
    return Task(
        name=task_name(config),
        load=partial(_load, config, columns),
        parse_completion=partial(parse_completion, config),
        labels_match=equations_equal if config.metric == "equation" else partial(own_labels_match, labels),
        label_max_tokens=32,
        label_is_valid=is_equation if config.metric == "equation" else partial(is_own_label, labels),
        label_choices=partial(fixed_labels, labels) if labels else None,
        fields=partial(describe_fields, config, columns),
        config=recorded_config(config),
        origin=f"the task file's field {field_name(config, 'rationale_field')!r}",
    )


def fixed_labels(labels: tuple[str, ...], text: str) -> tuple[str, ...]:
    return labels


def is_own_label(labels: tuple[str, ...] | None, label: str) -> bool:
    """An answer is a label: one of the label set where there is one, else any text."""
    return in_label_set(label, labels) is not None if labels else bool(label.strip())
