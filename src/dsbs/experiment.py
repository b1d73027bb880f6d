"""`dsbs experiment RECIPE.yaml`: a grid of training runs, each evaluated once on the test split.

The grid is tasks x methods x data fractions x students x seeds with shared settings. Every run
has its own directory; a finished run is skipped, an interrupted one resumes from its last
checkpoint, and each result is appended once to ``results.jsonl`` with every setting that
defines it. Model selection uses the validation split inside `dsbs train`; the test split is
touched only by the single evaluation at the end of each run.
"""

import dataclasses
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from dsbs.tasks import TaskConfig
from dsbs.tasks.common import DataError, read_appended_jsonl
from dsbs.train import TrainConfig


@dataclass
class Recipe:
    """A sweep: the grid's axes and the settings every run shares."""

    name: str = field(metadata={"help": "recipe name, used in reports"})
    output: str = field(metadata={"help": "directory for runs/, results.jsonl and recipe.json"})
    tasks: list[str] = field(metadata={"help": "task names (or files) to run"})
    methods: list[str] = field(default_factory=lambda: ["standard", "distill", "dsbs", "single_task"], metadata={"help": "training methods"})
    fractions: list[float] = field(default_factory=lambda: [1.0], metadata={"help": "fractions of the training pool"})
    students: list[str] = field(default_factory=lambda: ["smollm2-135m"], metadata={"help": "student models"})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "seeds (subsample, order, init)"})
    task_settings: dict = field(default_factory=dict, metadata={"help": "TaskConfig fields shared by every run (e.g. data_dir)"})
    train: dict = field(default_factory=dict, metadata={"help": "TrainConfig fields shared by every run"})
    eval_batch_size: int = field(default=32, metadata={"help": "inputs per batch in the test evaluation"})
    test_limit: int | None = field(default=None, metadata={"help": "evaluate on the first N test rows only (None: all)"})

    def runs(self) -> list[dict]:
        """Every run of the grid as (task, method, fraction, student, seed)."""
        keys = ("task", "method", "fraction", "student", "seed")
        return [dict(zip(keys, combo)) for combo in itertools.product(self.tasks, self.methods, self.fractions, self.students, self.seeds)]

    def configs(self, run: dict) -> tuple[TaskConfig, TrainConfig]:
        """The resolved configs of one run (fails early on a misspelt setting)."""
        task_config = TaskConfig(**{**self.task_settings, "task": run["task"]})
        train_config = TrainConfig(**{**self.train, "method": run["method"], "data_fraction": run["fraction"],
                                      "student": run["student"], "seed": run["seed"],
                                      "output": str(Path(self.output) / "runs" / run_name(run)), "resume": True})
        return task_config, train_config


def run_name(run: dict) -> str:
    student = re.sub(r"[^A-Za-z0-9.-]+", "_", Path(run["student"]).name)
    return f"{Path(run['task']).stem}-{run['method']}-{student}-f{run['fraction']:g}-s{run['seed']}"


def load_recipe(path: str, output: str | None = None) -> Recipe:
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise DataError(f"{path}:{mark.line + 1 if mark else '?'}: invalid YAML ({getattr(err, 'problem', err)})") from None
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
            recipe.configs(run)
    except TypeError as err:
        raise DataError(f"{path}: {err}") from None
    except ValueError as err:
        raise DataError(f"{path}: {err}") from None
    return recipe


def run_experiment(recipe: Recipe) -> list[dict]:
    """Train and evaluate every run not yet in results.jsonl; returns the new results."""
    from dsbs.evaluate import evaluate
    from dsbs.train import train

    output = Path(recipe.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "recipe.json").write_text(json.dumps(dataclasses.asdict(recipe), indent=2))
    results_path = output / "results.jsonl"
    done = {r["run"] for r in read_appended_jsonl(results_path)}
    runs = recipe.runs()
    new = []
    for number, run in enumerate(runs, start=1):
        name = run_name(run)
        if name in done:
            continue
        print(f"[{number}/{len(runs)}] {name}")
        task_config, train_config = recipe.configs(run)
        started = time.perf_counter()
        summary = train(task_config, train_config)
        metrics = evaluate(str(Path(train_config.output) / "model"), task_config, limit=recipe.test_limit,
                           batch_size=recipe.eval_batch_size, output=str(Path(train_config.output) / "test"))
        result = {"run": name, "recipe": recipe.name, **run, "test_accuracy": metrics["accuracy"], "test_n": metrics["n"],
                  "test_parse_failures": metrics["parse_failures"], "train_examples": summary["train_examples"],
                  "steps": summary["steps"], "best_step": summary["best_step"],
                  "validation_accuracy": summary["best_validation_accuracy"],
                  "seconds": round(time.perf_counter() - started, 1), "train_settings": recipe.train}
        with open(results_path, "a") as f:  # one line, appended once the run is complete
            f.write(json.dumps(result) + "\n")
        new.append(result)
    print(f"{len(runs) - len(done)} run(s) done now, {len(done)} skipped; results in {results_path}")
    return new
