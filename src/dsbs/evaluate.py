"""`dsbs evaluate`: label-only generation on a split, scored by the task's metric."""

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from dsbs.files import write_atomic
from dsbs.tasks import TaskConfig, get_task, student_task_config
from dsbs.tasks.common import DataError


def teacher_vector(task, rows) -> str | None:
    """The teacher's per-item correctness on ``rows``, scored as the paper scores it; None without answers."""
    if not rows or any(e.completion is None or e.label is None for e in rows):
        return None
    return "".join("1" if e.teacher_answer is not None and task.labels_match(e.teacher_answer, e.label) else "0"
                   for e in rows)


def cluster_indices(rows) -> list[int] | None:
    """Each row's cluster as a small integer (first appearance order), or None where rows are independent."""
    if not any(e.cluster for e in rows):
        return None
    index: dict = {}
    keys = [e.cluster if e.cluster is not None else ("row", i) for i, e in enumerate(rows)]
    return [index.setdefault(key, len(index)) for key in keys]


def log_to_tracker(model_dir: Path, meta: dict, metrics: dict) -> None:
    """Test metrics into the tracker run of the training run this student came from, if it had one."""
    from dsbs.tracking import resume_tracker

    tracker = resume_tracker(model_dir.resolve().parent)
    if tracker is not None:
        split = metrics["split"]
        tracker.log({f"{split}/accuracy": metrics["accuracy"], f"{split}/n": metrics["n"],
                     f"{split}/parse_failures": metrics["parse_failures"]}, meta.get("step") or 0)
        tracker.finish()


def scored_rows(task, split: str, limit: int | None) -> tuple[list, int]:
    """(the rows of ``split`` with a gold label to score against, how many without one were left out)."""
    rows = task.load(split)[:limit] if limit else task.load(split)
    labelled = [row for row in rows if row.label is not None]
    if not labelled:
        raise DataError(f"{task.name} [{split}]: no row has a gold label to score against (the label: "
                        f"{task.fields()['label']})")
    if len(labelled) < len(rows):
        first = next(row for row in rows if row.label is None)
        print(f"{len(rows) - len(labelled)} of {len(rows)} rows have no gold label and are left out of the score "
              f"(the first: {first.where or first.id})", file=sys.stderr)
    return labelled, len(rows) - len(labelled)


def evaluate(model_dir: str, task_config: TaskConfig, split: str | None = None, limit: int | None = None,
             batch_size: int = 16, output: str | None = None, with_rationale: bool = False,
             precision: str = "fp32", choices: bool = False) -> dict:
    """Accuracy of the student in ``model_dir``; writes predictions.jsonl and metrics.json to ``output``."""
    from dsbs.checkpoint import read_meta
    from dsbs.inference import label_choices, predict
    from dsbs.models import load_student

    meta = read_meta(model_dir)
    task_config = student_task_config(meta, task_config)  # the student's own task, with any flag given on top
    task = get_task(task_config)
    split = split or task.test_split
    rows, unlabelled = scored_rows(task, split, limit)
    model, tokenizer = load_student(model_dir, for_inference=True, precision=precision)
    started = time.perf_counter()
    inputs = [e.input for e in rows]
    predictions = predict(model, tokenizer, meta, inputs, with_rationale=with_rationale, batch_size=batch_size,
                          progress=True, choices=label_choices(task, inputs) if choices else None)
    seconds = time.perf_counter() - started
    records, correct, failures = [], 0, 0
    for example, prediction in zip(rows, predictions, strict=True):
        gold = example.label
        ok = task.labels_match(prediction["label"], gold)
        valid = task.label_is_valid(prediction["label"])
        correct += ok
        failures += not valid
        records.append({"id": example.id, "input": example.input, "gold": gold, **prediction,
                        "correct": ok, "parsed": valid})
    # per item, in test order: a report rebuilds paired statistics from these alone
    vector = "".join("1" if r["correct"] else "0" for r in records)
    metrics = {"accuracy": correct / len(rows), "n": len(rows), "correct": correct, "left_out_unlabelled": unlabelled,
               "correct_vector": vector, "teacher_correct_vector": teacher_vector(task, rows),
               "clusters": cluster_indices(rows),
               "parse_failures": failures, "task": task.name, "split": split, "model": str(model_dir),
               "method": meta["method"], "precision": precision, "choices": choices, "seconds": round(seconds, 2),
               "task_config": asdict(task_config)}
    log_to_tracker(Path(model_dir), meta, metrics)
    if output:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "predictions.jsonl", "".join(json.dumps(record) + "\n" for record in records))
        write_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics
