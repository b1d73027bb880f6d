"""A user's own task: rows in a JSONL or CSV file, mapped to input, label, rationale, teacher label."""

from functools import partial
from pathlib import Path

from dsbs.equation import equations_equal, is_equation
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


def _load(config, split: str) -> list[Example]:
    if split == "train":
        return load_file(Path(config.task), config)
    if split == "test":
        if not config.test_file:
            raise DataError("this task has no test split: pass --test-file")
        return load_file(Path(config.test_file), config)
    raise DataError(f"unknown split {split!r} for a file task (train or test)")


def task(config) -> Task:
    path = Path(config.task)
    if path.suffix.lower() not in (".jsonl", ".json", ".csv"):
        from dsbs.tasks import built_in_names

        raise DataError(f"unknown task {config.task!r}: use {', '.join(built_in_names())}, or a .jsonl/.csv file")
    return Task(
        name=path.stem,
        load=partial(_load, config),
        parse_completion=partial(parse_completion, config),
        labels_match=equations_equal if config.metric == "equation" else text_labels_match,
        label_max_tokens=32,
        label_is_valid=is_equation if config.metric == "equation" else bool,
    )
