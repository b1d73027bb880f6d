"""`dsbs predict`: the deployment path, JSONL in and JSONL out, streamed in batches."""

import json
import os
from itertools import islice
from pathlib import Path

from dsbs.files import exclusive
from dsbs.tasks.common import DataError, csv_rows, read_appended_jsonl


def _records(path: Path):
    """(line number, raw row or the error that line has) of a JSONL or CSV file, streamed."""
    if path.suffix.lower() == ".csv":
        check_utf8(path)  # a CSV reader cannot step past a bad byte, and the text layer meets it a chunk early
        with open(path, encoding="utf-8-sig", newline="") as f:
            yield from csv_rows(f)
        return
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
                if not isinstance(obj, dict):
                    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
            except (UnicodeDecodeError, ValueError) as err:
                yield number, err
                continue
            yield number, obj


def check_utf8(path: Path) -> None:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{number}: not valid UTF-8 ({err.reason}); save the file as UTF-8") from None


def _inputs(path: Path, fields, skip_bad: bool, bad: list):
    """(line number, the row's id or None, student input) per usable line, built as in training; a bad line is
    fatal unless ``skip_bad``."""
    from dsbs.tasks.custom import student_input

    for number, row in _records(path):
        try:
            if isinstance(row, Exception):
                raise DataError(f"{path}:{number}: {row}")
            given = row.get("id")
            yield number, given if given not in (None, "") else None, student_input(row, fields, f"{path}:{number}")
        except DataError as err:
            if not skip_bad:
                raise
            bad.append(str(err))


def input_fields(meta: dict, input_field: str | None, input_template: str | None):
    """How to build a student input from a row: the flags given, else the student's recorded task, else 'input'."""
    from types import SimpleNamespace

    recorded = meta.get("task_config") or {}
    if input_field or input_template:
        return SimpleNamespace(input_field=input_field, input_template=input_template)
    return SimpleNamespace(input_field=recorded.get("input_field"), input_template=recorded.get("input_template"))


def finished_lines(output: Path) -> dict[int, str]:
    """Input line number -> the input answered, for the lines already in ``output``; a last line cut by a kill is
    dropped."""
    done = {}
    for number, record in enumerate(read_appended_jsonl(output), start=1):
        if not isinstance(record, dict) or not isinstance(record.get("line"), int):
            raise DataError(f"{output}:{number}: not a prediction line; cannot resume into this file")
        done[record["line"]] = record.get("input")
    return done


def not_done(lines, done: dict[int, str], output: Path):
    """The lines ``output`` has no answer for; a line answered for another input means another input file."""
    for number, row_id, text in lines:
        if number not in done:
            yield number, row_id, text
        elif done[number] != text:
            raise DataError(f"{output}: line {number} was answered for another input than this file's line {number}: "
                            "--resume goes on with the same input file; choose another --output")


def predict_file(model_dir: str, input: str, output: str, input_field: str | None = None,
                 input_template: str | None = None, batch_size: int = 16, with_rationale: bool = False,
                 skip_bad_lines: bool = False, resume: bool = False, precision: str = "fp32",
                 choices: bool = False) -> dict:
    """Predict a label for every row of ``input`` (JSONL or CSV); memory stays constant however long the file.

    Inputs are built the way the student's task built them (its recorded field or template) unless
    ``input_field`` / ``input_template`` say otherwise.

    Predictions are appended batch by batch, so after a kill ``resume`` answers only the lines
    that are not in ``output`` yet.
    """
    path = Path(input)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if Path(output).exists() and os.path.samefile(path, output):
        raise DataError(f"--output {output} is the input file {path} (or a link to it): it would be emptied; "
                        "choose another output")
    with exclusive(output, "predict"):
        return _predict_file(model_dir, path, Path(output), (input_field, input_template), batch_size,
                             with_rationale, skip_bad_lines, resume, precision, choices)


def _predict_file(model_dir, path: Path, output: Path, fields: tuple, batch_size, with_rationale, skip_bad_lines,
                  resume, precision, choices) -> dict:
    from tqdm.auto import tqdm

    from dsbs.checkpoint import read_meta
    from dsbs.inference import choice_task, label_choices, predict
    from dsbs.models import load_student

    meta = read_meta(model_dir)
    fields = input_fields(meta, *fields)
    task = choice_task(meta) if choices else None
    model, tokenizer = load_student(model_dir, for_inference=True, precision=precision)
    done = finished_lines(Path(output)) if resume else {}
    bad: list[str] = []
    lines = not_done(_inputs(path, fields, skip_bad_lines, bad), done, Path(output))
    written = 0
    with open(output, "a" if resume else "w", encoding="utf-8") as out, tqdm(desc="predict", unit="input") as bar:
        while chunk := list(islice(lines, batch_size * 8)):
            texts = [text for *_, text in chunk]
            results = predict(model, tokenizer, meta, texts, with_rationale=with_rationale, batch_size=batch_size,
                              choices=label_choices(task, texts) if task else None)
            for (number, row_id, text), result in zip(chunk, results, strict=True):
                row = {"line": number, **({"id": row_id} if row_id is not None else {}), "input": text}
                out.write(json.dumps({**row, **result}) + "\n")
            out.flush()
            written += len(chunk)
            bar.update(len(chunk))
    for message in bad:
        print(f"skipped {message}")
    return {"predicted": written, "already_done": len(done), "skipped": len(bad),
            "input": fields.input_template or f"field {fields.input_field or 'input'!r}", "choices": choices}
