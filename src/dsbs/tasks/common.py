"""What every task shares: the example record, file readers with precise errors, splits."""

import csv
import io
import json
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from dsbs.errors import ConfigError, DataError
from dsbs.names import default_cache_dir

# single_task targets are "rationale + marker + label"; the label is read back after the last marker.
SINGLE_TASK_MARKER = " So the answer is "


@dataclass
class Example:
    """One input with its gold label and, where a teacher answered, its rationale and label."""

    input: str
    label: str | None = None
    rationale: str | None = None
    teacher_label: str | None = None  # in the task's label space: what training uses
    completion: str | None = None
    id: str = ""
    choices: tuple[str, ...] | None = None  # multiple choice: the row's options, verbatim
    teacher_answer: str | None = None  # the label as the teacher wrote it: what the paper scores
    where: str = ""  # "file:line" of its row, for messages about it
    cluster: str | None = None  # rows sharing one (e-SNLI's hypotheses of a premise) are not independent samples
    # every answer of a teacher asked several times (teach --samples k): (rationale, label in the task's space)
    samples: tuple[tuple[str | None, str | None], ...] = ()
    rationales: tuple[str, ...] | None = None  # several rationale targets (--rationales all-agreeing), else None


def keep_label(label: str, example: Example) -> str | None:
    return label


def paper_fields() -> dict[str, str]:
    """Where a benchmark row's parts come from, as messages name them."""
    return {"label": "the gold label", "rationale": "the teacher's rationale (none where its answer did not parse)",
            "teacher_label": "the teacher's label (none where its answer did not parse)"}


@dataclass(frozen=True)
class Task:
    """A benchmark or user task: how to load a split, parse a teacher completion, score a label.

    A built-in task is one module of dsbs.tasks with a ``task(data_dir)`` function returning one of
    these, and its teacher prompt beside it (``NAME.json``).
    """

    name: str
    load: Callable[[str], list[Example]]
    parse_completion: Callable[[str], tuple[str | None, str | None]]
    labels_match: Callable[[str, str], bool]
    label_max_tokens: int = 32
    train_split: str = "train"
    test_split: str = "test"
    label_is_valid: Callable[[str], bool] = bool  # a student answer we could score at all
    # The teacher's label in the task's label space given its row (a CQA answer matched to one of
    # the row's choices), or None when it names none: such an answer is a parse failure.
    canonical_label: Callable[[str, Example], str | None] = keep_label
    # the labels an input allows (a fixed set, or a multiple-choice input's own options), or None
    # where answers are open: students then choose instead of generating (`--choices`)
    label_choices: Callable[[str], tuple[str, ...]] | None = None
    paper_layout: bool = False  # read from (and `dsbs teach` writes) the paper's released data layout
    # reference points for reports, in percent: PaLM 540B few-shot CoT on the full test set (scored
    # from the released completions) and the paper's T5-Base students on full data (Table 1)
    teacher_few_shot_accuracy: float | None = None
    paper_t5_base: dict = field(default_factory=dict)
    # where the rows come from and under which licences, for the cards of data derived from them
    sources: str = ""
    # messages: where each part of a row (label, rationale, teacher_label) comes from
    fields: Callable[[], dict[str, str]] = paper_fields
    # how to read this task again (a TaskConfig as a dict), recorded with every student trained on it
    config: dict = field(default_factory=dict)
    origin: str = "the teacher's, from the task data"  # where its rationales come from, for model cards

    def read_answer(self, completion: str, example: Example) -> tuple[str | None, str | None, str | None]:
        """(rationale, label to train on, label as written) of a teacher completion for ``example``.

        An answer without a usable label keeps neither: its reasoning is untrustworthy too.
        """
        return read_teacher_answer(self.parse_completion, self.canonical_label, completion, example)


def read_teacher_answer(parse_completion, canonical_label, completion: str, example: Example):
    """Task.read_answer for a parser and a canonicaliser not yet bound in a Task."""
    rationale, written = parse_completion(completion)
    label = None if written is None else canonical_label(written, example)
    return (rationale if label is not None else None), label, written


def normalize_text_label(label: str) -> str:
    """Collapse spaces, drop surrounding quotes and a trailing full stop.

    Case is kept, as in the paper's scoring: labels are choice texts copied verbatim.
    """
    label = " ".join(label.split())
    return label.strip("\"'").rstrip(".").strip()


def text_labels_match(predicted: str, gold: str) -> bool:
    return normalize_text_label(predicted) == normalize_text_label(gold)


def cut_at_next_example(completion: str, markers: tuple[str, ...]) -> str:
    """Few-shot completions run on into an invented next example; keep what comes before it."""
    cut = len(completion)
    for marker in markers:
        pos = completion.find(marker)
        if pos != -1:
            cut = min(cut, pos)
    return completion[:cut].strip()


def split_on_marker(text: str, marker: str) -> tuple[str | None, str | None]:
    """(rationale, answer text) around the last ``marker``; (None, None) when it is absent."""
    pos = text.rfind(marker)
    if pos == -1:
        return None, None
    rationale = text[:pos].strip()
    return (rationale or None), text[pos + len(marker):].strip()


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """--data-dir, else $DSBS_DATA_DIR, else what `dsbs data download` unpacked."""
    if data_dir:
        path = Path(data_dir)
    elif os.environ.get("DSBS_DATA_DIR"):
        path = Path(os.environ["DSBS_DATA_DIR"])
    else:
        path = default_cache_dir() / "datasets"
        if not path.is_dir():
            raise DataError(
                "no data directory: pass --data-dir, set DSBS_DATA_DIR, or run `dsbs data download`"
            )
    if not path.is_dir():
        raise DataError(f"data directory {path} does not exist")
    return path


def files_under(path: Path) -> list[Path]:
    """A file, or the files of a directory and its folders (not hidden ones, answer caches or locks)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    return sorted(f for f in path.rglob("*") if f.is_file() and ".sqlite" not in f.name
                  and not any(part.startswith(".") for part in f.relative_to(path).parts))


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; DataError names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{number}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
            yield number, obj


def read_appended_jsonl(path: Path, repair: bool = True) -> list[dict]:
    """The complete lines of a JSONL file that the tool appends to as work finishes.

    A kill can cut only the last line, so a last line that is not valid JSON is dropped (from the
    file too when ``repair``: the writer's next start redoes its work; a reader leaves the file
    alone); an invalid line anywhere else is an error.
    """
    path = Path(path)
    if not path.is_file():
        return []
    # split at "\n" alone: str.splitlines also splits at U+2028 and U+0085, which JSON may hold unescaped
    records, lines = [], path.read_text(encoding="utf-8").removesuffix("\n").split("\n")
    lines = [] if lines == [""] else lines
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines):
                raise DataError(f"{path}:{number}: invalid JSON") from None
            if repair:
                from dsbs.files import write_atomic

                write_atomic(path, "".join(kept + "\n" for kept in lines[:-1]))
    return records


def read_csv(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) like read_jsonl, for a CSV file with a header row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        # -sig: a spreadsheet's byte-order mark is not in the header; bytes, not read_text: its newline translation
        # would turn a quoted \r\n into \n here and not in predict, which reads the file with newline=""
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({err.reason})") from None
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    for number, row in csv_rows(io.StringIO(text, newline="")):
        if isinstance(row, ValueError):
            raise DataError(f"{path}:{number}: {row}")
        yield number, row


def csv_rows(stream) -> Iterator[tuple[int, dict | ValueError]]:
    """(the line a row starts on, the row, or the error of a row whose field count is not the header's) of a CSV
    stream opened with newline="": the csv module then reads quoted line breaks itself, and U+2028 stays inside
    its field."""
    seen = {"lines": 0, "start": None}

    def counted():  # the reader's line_num is where a row ends; a row with a quoted line break starts before it
        for line in stream:
            seen["lines"] += 1
            if seen["start"] is None and line.strip("\r\n"):
                seen["start"] = seen["lines"]
            yield line

    reader = csv.DictReader(counted())
    if reader.fieldnames is None:
        return
    seen["start"] = None
    for row in reader:
        start, seen["start"] = seen["start"], None
        if None in row or None in row.values():
            fields = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or [])
            yield start, ValueError(f"{fields} fields where the header has {len(reader.fieldnames)} "
                                    "(an unquoted comma or quote?)")
        else:
            yield start, row


def read_records(path: Path) -> Iterator[tuple[int, dict]]:
    """JSONL or CSV chosen by the file's suffix."""
    return read_csv(path) if Path(path).suffix.lower() == ".csv" else read_jsonl(path)


def row_field(obj: dict, name: str, kind: type | tuple[type, ...], where: str):
    """obj[name] checked for presence and type; ``where`` is "file:line" for the message."""
    if name not in obj:
        raise DataError(f"{where}: missing field {name!r}")
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field {name!r} should be {expected}, got {type(value).__name__}")
    return value


def read_completions(llm_dir: Path, split: str) -> list[str] | None:
    """Teacher completions of the paper's layout, ``{split}_CoT_{i}.json`` concatenated by i."""
    files = sorted(llm_dir.glob(f"{split}_CoT_*.json"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if not files:
        return None
    completions: list[str] = []
    for path in files:
        try:
            batch = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not valid UTF-8 ({err.reason})") from None
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
        if not isinstance(batch, list) or not all(isinstance(c, str) for c in batch):
            raise DataError(f"{path}: expected a JSON list of completion strings")
        completions.extend(batch)
    return completions


def load_paper_split(
    data_dir: Path,
    name: str,
    split: str,
    parse_row: Callable[[dict, str], dict],
    parse_completion: Callable[[str], tuple[str | None, str | None]],
    canonical_label: Callable[[str, Example], str | None] = keep_label,
) -> list[Example]:
    """Gold rows of ``{name}/{name}_{split}.json`` aligned by position with the teacher's completions.

    ``parse_row`` gives a row's Example fields (input, label, choices where the task has them).
    """
    path = Path(data_dir) / name / f"{name}_{split}.json"
    examples = []
    for number, row in read_jsonl(path):
        fields = parse_row(row, f"{path}:{number}")
        examples.append(Example(**fields, id=str(row.get("id", row.get("uid", number))), where=f"{path}:{number}"))
    completions = read_completions(Path(data_dir) / name / "llm", split)
    if completions is not None:
        if len(completions) != len(examples):
            raise DataError(
                f"{path.parent / 'llm'}: {len(completions)} teacher completions for split {split!r} "
                f"but {path} has {len(examples)} rows; they are aligned by position and must match"
            )
        for example, completion in zip(examples, completions, strict=True):
            example.completion = completion
            example.rationale, example.teacher_label, example.teacher_answer = read_teacher_answer(
                parse_completion, canonical_label, completion, example)
    details = Path(data_dir) / name / "llm" / f"{split}_teacher.jsonl"  # dsbs teach's, with every sample
    if details.is_file():
        for example, (_, record) in zip(examples, read_jsonl(details), strict=False):
            example.samples = tuple(read_teacher_answer(parse_completion, canonical_label, text, example)[:2]
                                    for text in record.get("completions") or ())
    return examples


def load_paper_task_split(data_dir, name: str, split: str, **parsers) -> list[Example]:
    """load_paper_split with the data directory resolved when a split is read, not before."""
    return load_paper_split(resolve_data_dir(data_dir), name, split, **parsers)


def paper_task(name: str, data_dir, parse_row, parse_completion, labels_match, **settings) -> Task:
    """A Task over the paper's released layout in ``data_dir`` (resolved as resolve_data_dir does)."""
    load = partial(load_paper_task_split, data_dir, name, parse_row=parse_row, parse_completion=parse_completion,
                   canonical_label=settings.get("canonical_label", keep_label))
    return Task(name=name, load=load, parse_completion=parse_completion, labels_match=labels_match, paper_layout=True,
                config={"task": name}, origin="the teacher's (PaLM 540B), from the paper's release", **settings)


def split_validation(examples: list, fraction: float = 0.1, seed: int = 0) -> tuple[list, list]:
    """(train, validation): a seeded ``fraction`` of the pool held out for model selection."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(examples) * fraction)) if len(examples) > 1 and fraction > 0 else 0
    held = set(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


def subsample(examples: list, fraction: float, seed: int) -> list:
    """A seeded ``fraction`` of ``examples``, in their original order."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"data fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return list(examples)
    n = max(1, round(len(examples) * fraction))
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


