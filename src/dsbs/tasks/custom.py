"""A user's own task: rows in a JSONL or CSV file, mapped to input, label, rationale, teacher label."""

from functools import partial
from pathlib import Path

from dsbs.equation import equations_equal, is_equation
from dsbs.errors import MissingDependency
from dsbs.tasks.common import (
    DataError,
    Example,
    Task,
    cut_at_next_example,
    read_records,
    split_on_marker,
    text_labels_match,
)


def _optional_text(row: dict, name: str, where: str) -> str | None:
    value = row.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: field {name!r} should be text, got {type(value).__name__}")
    return str(value)


def parse_completion(config, completion: str) -> tuple[str | None, str | None]:
    """(rationale, label) around the task's answer marker, checked against its label set or metric."""
    rationale, answer = split_on_marker(cut_at_next_example(completion, ("\nQ:",)), config.answer_marker)
    if rationale is None or not answer:
        return None, None
    answer = answer.splitlines()[0].strip().rstrip(".").strip()
    if config.label_set:
        allowed = {label.strip().lower(): label.strip() for label in config.label_set.split(",")}
        label = allowed.get(answer.lower())
        return (rationale, label) if label else (None, None)
    if config.metric == "equation" and not is_equation(answer):
        return None, None
    return rationale, answer


def row_to_example(row: dict, where: str, config) -> Example:
    if config.input_template:
        try:
            text = config.input_template.format(**row)
        except KeyError as err:
            raise DataError(f"{where}: missing field {err.args[0]!r} used by --input-template") from None
    else:
        text = _optional_text(row, config.input_field, where)
        if text is None:
            raise DataError(f"{where}: missing field {config.input_field!r}")
    return Example(
        input=text,
        label=_optional_text(row, config.label_field, where),
        rationale=_optional_text(row, config.rationale_field, where),
        teacher_label=_optional_text(row, config.teacher_label_field, where),
        id=str(row.get("id", where.rsplit(":", 1)[-1])),
    )


def load_file(path: Path, config) -> list[Example]:
    examples = [row_to_example(row, f"{path}:{number}", config) for number, row in read_records(path)]
    if not examples:
        raise DataError(f"{path}: no rows")
    return examples


DATASET_SUFFIXES = (".parquet", ".arrow")


def is_dataset_source(source: str) -> bool:
    """A Hugging Face `datasets` source: hf:NAME[:CONFIG], a parquet or arrow file, or a save_to_disk directory."""
    path = Path(source)
    return source.startswith("hf:") or path.suffix.lower() in DATASET_SUFFIXES or (
        path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "dataset_info.json", "state.json")))


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


def load_dataset_split(source: str, split: str, config) -> list[Example]:
    """Rows of one split of a `datasets` source; errors name the dataset, split, row and field."""
    import datasets

    data = open_dataset(source)
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise DataError(f"{source}: no split {split!r} (it has {', '.join(data)}); choose one with "
                            "--train-split or --split")
        data = data[split]
    examples = [row_to_example(row, f"{source} [{split}] row {number}", config) for number, row in enumerate(data)]
    if not examples:
        raise DataError(f"{source} [{split}]: no rows")
    return examples


def _load(config, split: str) -> list[Example]:
    if is_dataset_source(config.task):
        single_file = not config.task.startswith("hf:") and not Path(config.task).is_dir()
        if single_file and split == "test":  # one file is one split: the test rows come from --test-file
            if not config.test_file:
                raise DataError("this task has no test split: pass --test-file")
            return _load_any(config.test_file, "test", config)
        return load_dataset_split(config.task, "train" if single_file else split, config)
    if split == "train":
        return load_file(Path(config.task), config)
    if split == "test":
        if not config.test_file:
            raise DataError("this task has no test split: pass --test-file")
        return _load_any(config.test_file, "test", config)
    raise DataError(f"unknown split {split!r} for a file task (train or test)")


def _load_any(source: str, split: str, config) -> list[Example]:
    if is_dataset_source(source):
        return load_dataset_split(source, "train" if not Path(source).is_dir() else split, config)
    return load_file(Path(source), config)


def task(config) -> Task:
    path = Path(config.task)
    if path.suffix.lower() not in (".jsonl", ".json", ".csv") and not is_dataset_source(config.task):
        from dsbs.tasks import built_in_names

        raise DataError(f"unknown task {config.task!r}: use {', '.join(built_in_names())}, a .jsonl/.csv/.parquet/"
                        ".arrow file, a directory saved with datasets' save_to_disk, or hf:NAME[:CONFIG]")
    return Task(
        name=config.task[3:].split(":")[0].split("/")[-1] if config.task.startswith("hf:") else path.stem,
        load=partial(_load, config),
        parse_completion=partial(parse_completion, config),
        labels_match=equations_equal if config.metric == "equation" else text_labels_match,
        label_max_tokens=32,
        label_is_valid=is_equation if config.metric == "equation" else bool,
        label_choices=partial(fixed_labels, tuple(label.strip() for label in config.label_set.split(",")))
        if config.label_set else None,
    )


def fixed_labels(labels: tuple[str, ...], text: str) -> tuple[str, ...]:
    return labels
