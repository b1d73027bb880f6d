"""`dsbs experiment RECIPE.yaml`: a grid of training runs, each evaluated once on the test split.

The grid is tasks x methods x data fractions x students x seeds with shared settings. Every run
has its own directory; a finished run is skipped, an interrupted one resumes from its last
checkpoint, and each result is appended once to ``results.jsonl`` with every setting that
defines it and its per-item test correctness (so a report's paired statistics can be rebuilt from
that file alone). Model selection uses the validation split inside `dsbs train`; the test split
is touched only by the single evaluation at the end of each run.

With ``--jobs N`` N cells run at once, each job in a process of its own: one GPU each where there
are several, one shared GPU otherwise, and on a CPU the cores divided among them. Only the parent
process appends to ``results.jsonl``.
"""

import dataclasses
import itertools
import json
import os
import queue
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from dsbs.configs import TrainConfig, option
from dsbs.errors import ConfigError, DataError, UserError
from dsbs.files import append_line, exclusive, write_atomic
from dsbs.methods import METHOD_NAMES
from dsbs.names import DEFAULT_STUDENT
from dsbs.tasks import TaskConfig, data_digest
from dsbs.tasks.common import read_appended_jsonl

AXES = ("task", "method", "fraction", "student", "seed", "variant")
RESULT_FILE = "result.json"  # in a run's directory once it is evaluated; results.jsonl gets the same line


class SweepFailed(Exception):
    """Some cells failed; the others finished and are in results.jsonl."""


@dataclass
class Recipe:
    """A sweep: the grid's axes and the settings every run shares."""

    name: str = option(help="recipe name, used in reports")
    output: str = option(help="directory for runs/, results.jsonl and recipe.json")
    tasks: list[str] = option(help="task names (or files) to run")
    methods: list[str] = field(default_factory=lambda: list(METHOD_NAMES), metadata={"help": "training methods"})
    fractions: list[float] = field(default_factory=lambda: [1.0], metadata={"help": "fractions of the training pool"})
    students: list[str] = field(default_factory=lambda: [DEFAULT_STUDENT], metadata={"help": "student models"})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "seeds (subsample, order, init)"})
    task_settings: dict = field(default_factory=dict, metadata={"help": "TaskConfig fields shared by every run"})
    train: dict = field(default_factory=dict, metadata={"help": "TrainConfig fields shared by every run"})
    task_train: dict = field(default_factory=dict, metadata={"help": "per task: TrainConfig fields that override "
                                                             "`train` for that task (e.g. its step budget)"})
    variants: dict = field(default_factory=dict, metadata={"help": (
        "named sets of TrainConfig fields, one more axis of the grid: {steps400: {max_steps: 400}, alpha0.8: "
        "{alpha: 0.8, methods: [dsbs]}} (methods: the methods it applies to, default all); reports compare a "
        "variant's methods with its own standard, else the plain one")})
    eval_batch_size: int = option(32, "inputs per batch in the test evaluation")
    test_limit: int | None = option(None, "evaluate on the first N test rows only (None: all)")
    priority: list[dict] = field(default_factory=list, metadata={"help": (
        "cells to run first, as partial cells ({method: [standard, dsbs], fraction: [1.0, 0.25]}); a cell runs in "
        "the order of the first rule it matches (unmatched last), seed by seed within a rule, so a sweep cut short "
        "has done what matters most")})
    keep_weights: bool = option(True, "keep each run's model/ and checkpoints/ after its test evaluation (false: "
                                "predictions, metrics and logs only)")

    def __post_init__(self):
        for rule in self.priority:
            if not isinstance(rule, dict) or not set(rule) <= set(AXES):
                raise ConfigError(f"a priority rule maps some of {', '.join(AXES)} to values, got {rule!r}")
        unknown = sorted(set(self.task_train) - set(self.tasks))
        if unknown:
            raise ConfigError(f"task_train names tasks not in the grid: {', '.join(unknown)}")

    def runs(self) -> list[dict]:
        """Every run of the grid as (task, method, fraction, student, seed), in priority order."""
        cells = [dict(zip(AXES, combo, strict=True)) for combo in
                 itertools.product(self.tasks, self.methods, self.fractions, self.students, self.seeds,
                                   list(self.variants) or [""])]
        cells = [c for c in cells if c["method"] in self.variants.get(c["variant"], {}).get("methods", self.methods)]
        return sorted(cells, key=lambda cell: (priority_rank(cell, self.priority), cell["seed"]))

    def settings(self, run: dict) -> dict:
        """The TrainConfig fields a cell sets: shared, then its task's, then its variant's."""
        variant = {k: v for k, v in self.variants.get(run.get("variant", ""), {}).items() if k != "methods"}
        return {**self.train, **self.task_train.get(run["task"], {}), **variant}

    def settings_of(self, run: dict) -> tuple[TaskConfig, TrainConfig]:
        """The configs of one run but its output directory (fails early on a misspelt setting)."""
        task_config = TaskConfig(**{**self.task_settings, "task": run["task"]})
        train_config = TrainConfig(**{**self.settings(run), "method": run["method"],
                                      "data_fraction": run["fraction"], "student": run["student"], "seed": run["seed"],
                                      "output": "", "resume": True})
        return task_config, train_config

    def configs(self, run: dict) -> tuple[TaskConfig, TrainConfig]:
        """The resolved configs of one run, its output directory keyed by its settings and data."""
        task_config, train_config = self.settings_of(run)
        key = self.key(run, task_config, train_config)
        return task_config, dataclasses.replace(train_config, output=str(Path(self.output) / "runs" / key))

    def key(self, run: dict, task_config: TaskConfig, train_config: TrainConfig) -> str:
        """A run's name and a digest of everything that defines its result: the same settings are the same run."""
        import hashlib

        from dsbs.train import run_settings

        settings = {**run_settings(task_config, train_config), "test_limit": self.test_limit}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        return f"{run_name(run)}-{digest[:10]}"


def priority_rank(cell: dict, rules: list[dict]) -> int:
    """Index of the first rule the cell matches (a rule's value may be one value or a list)."""
    for rank, rule in enumerate(rules):
        if all(cell[axis] in (wanted if isinstance(wanted, list) else [wanted]) for axis, wanted in rule.items()):
            return rank
    return len(rules)


def run_name(run: dict) -> str:
    student = re.sub(r"[^A-Za-z0-9.-]+", "_", Path(run["student"]).name)
    variant = f"-{run['variant']}" if run.get("variant") else ""
    return f"{Path(run['task']).stem}-{run['method']}-{student}-f{run['fraction']:g}-s{run['seed']}{variant}"


def load_recipe(path: str, output: str | None = None) -> Recipe:
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1 if mark else '?'}"
        raise DataError(f"{where}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: a recipe is a mapping of settings")
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise DataError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if output:
        raw["output"] = output
    try:
        recipe = Recipe(**raw)
        for run in recipe.runs():  # resolve every run's config now, not an hour into the sweep
            recipe.settings_of(run)
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: {err}") from None
    return recipe


def run_cell(recipe: Recipe, run: dict) -> dict:
    """Train and test one cell; its result line, also left in the run directory as result.json."""
    from dsbs.evaluate import evaluate
    from dsbs.train import train

    task_config, train_config = recipe.configs(run)
    run_dir = Path(train_config.output)
    started = time.perf_counter()
    summary = train(task_config, train_config)
    metrics = evaluate(str(run_dir / "model"), task_config, limit=recipe.test_limit,
                       batch_size=recipe.eval_batch_size, output=str(run_dir / "test"))
    result = {"run": run_dir.name, "recipe": recipe.name, **run, "test_accuracy": metrics["accuracy"],
              "test_n": metrics["n"], "test_parse_failures": metrics["parse_failures"],
              "train_examples": summary["train_examples"], "steps": summary["steps"], "best_step": summary["best_step"],
              "validation_accuracy": summary["best_validation_accuracy"],
              "protocol": {k: summary.get(k) for k in ("split_order", "kept_step", "validation_labels",
                                                       "validation_examples", "budget_rows")},
              "seconds": round(time.perf_counter() - started, 1),
              "train_seconds": summary.get("train_seconds_this_session"), "tokens": summary.get("tokens_this_session"),
              "target_tokens": summary.get("target_tokens_this_session"), "parameters": summary.get("parameters"),
              "embedding_parameters": summary.get("embedding_parameters"),
              "train_settings": recipe.settings(run), "task_settings": recipe.task_settings,
              "data_digest": data_digest(task_config)[:12],
              "test_limit": recipe.test_limit,
              "test_correct": metrics["correct_vector"], "teacher_test_correct": metrics["teacher_correct_vector"],
              "test_clusters": metrics["clusters"]}
    if not recipe.keep_weights:
        for heavy in ("model", "checkpoints"):
            shutil.rmtree(run_dir / heavy, ignore_errors=True)
    write_atomic(run_dir / RESULT_FILE, json.dumps(result))
    return result


def _worker(recipe: Recipe, slot: int, jobs: int, gpus: list[str], cells, events) -> None:
    """A job's process: take cells until told to stop, report each one's start, result or error."""
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    while (run := cells.get()) is not None:
        name = Path(recipe.configs(run)[1].output).name
        events.put(("start", slot, name))
        try:
            events.put(("result", slot, run_cell(recipe, run)))
        except Exception as err:  # noqa: BLE001 - one failed cell must not end the sweep
            events.put(("error", slot, f"{name}: {type(err).__name__}: {err}"))
    events.put(("exit", slot, None))


def visible_gpus() -> list[str]:
    """The GPU ids jobs are spread over (CUDA_VISIBLE_DEVICES if set), or [] without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [g.strip() for g in listed.split(",") if g.strip()] if listed else []
    return ids or [str(i) for i in range(torch.cuda.device_count())]


def run_parallel(recipe: Recipe, todo: list[dict], jobs: int, deadline: float | None, on_result) -> list[str]:
    """Run ``todo`` in ``jobs`` processes; stop them at ``deadline`` (their runs resume next time).

    Returns the errors of cells that failed.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # fresh processes: CUDA cannot be forked
    cells, events = context.Queue(), context.Queue()
    for run in todo:
        cells.put(run)
    jobs = min(jobs, len(todo))
    for _ in range(jobs):
        cells.put(None)
    gpus = visible_gpus()
    workers = [context.Process(target=_worker, args=(recipe, slot, jobs, gpus, cells, events), daemon=True)
               for slot in range(jobs)]
    for worker in workers:
        worker.start()
    running, errors, exited = {}, [], set()
    try:
        while len(exited) < jobs:
            if deadline is not None and time.time() >= deadline:
                print(f"deadline reached: stopping {len(running)} run(s) in progress; they resume on the next start")
                break
            try:
                kind, slot, payload = events.get(timeout=1.0)
            except queue.Empty:
                for slot, worker in enumerate(workers):  # a job killed from outside never reports again
                    if not worker.is_alive() and slot not in exited:
                        exited.add(slot)
                        if slot in running:
                            errors.append(f"{running.pop(slot)}: its process died (exit code {worker.exitcode})")
                continue
            if kind == "start":
                running[slot] = payload
                print(f"[job {slot}] {payload}", flush=True)
            elif kind == "result":
                running.pop(slot, None)
                on_result(payload)
            elif kind == "error":
                running.pop(slot, None)
                errors.append(payload)
                print(f"[job {slot}] failed: {payload}", file=sys.stderr, flush=True)
            else:
                exited.add(slot)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
        for worker in workers:
            worker.join(timeout=30)
    return errors


def run_experiment(recipe: Recipe, jobs: int = 1, deadline: float | None = None, on_result=None) -> list[dict]:
    """Train and evaluate every run not yet in results.jsonl; returns the new results.

    ``deadline`` (a time.time() value): start nothing after it and stop runs still going (they
    resume from their last checkpoint next time). ``on_result`` is called after each new line.
    """
    with exclusive(recipe.output, "experiment"):
        return sweep(recipe, jobs, deadline, on_result)


def sweep(recipe: Recipe, jobs: int, deadline: float | None, on_result) -> list[dict]:
    output = Path(recipe.output)
    write_atomic(output / "recipe.json", json.dumps(dataclasses.asdict(recipe), indent=2))
    results_path = output / "results.jsonl"
    done = {r["run"] for r in read_appended_jsonl(results_path)}
    runs = recipe.runs()
    new = []

    def record(result: dict) -> None:
        append_line(results_path, json.dumps(result))  # one line, appended once the run is complete
        done.add(result["run"])
        new.append(result)
        if on_result:
            on_result(result)

    keys = [Path(recipe.configs(run)[1].output).name for run in runs]  # name with digest, run by run
    mine = set(keys)  # other recipes may append to the same results file
    already, todo = len(done & mine), []
    for run, key in zip(runs, keys, strict=True):
        finished = Path(recipe.configs(run)[1].output) / RESULT_FILE  # evaluated, but the sweep died before appending
        if key in done:
            continue
        if finished.is_file():
            record(json.loads(finished.read_text()))
        else:
            todo.append(run)
    errors = []
    if jobs > 1 or deadline is not None:
        errors = run_parallel(recipe, todo, jobs, deadline, record)
    else:
        for run in todo:
            name = Path(recipe.configs(run)[1].output).name
            print(f"[{len(done & mine) + 1}/{len(runs)}] {name}", flush=True)
            try:
                record(run_cell(recipe, run))
            except Exception as err:  # noqa: BLE001 - as in parallel: the other cells go on, this one is named
                if isinstance(err, UserError):
                    print(f"{name}: {err}", file=sys.stderr)
                else:  # a bug: its traceback
                    traceback.print_exc()
                errors.append(f"{name}: {type(err).__name__}: {err}")
    print(f"{len(new)} run(s) done now, {already} were already done, {len(runs) - len(done & mine)} left; "
          f"results in {results_path}")
    if errors:
        raise SweepFailed(f"{len(errors)} run(s) failed:\n" + "\n".join(errors))
    return new
