"""Recipes -> runs -> results -> report, on tiny students; every shipped recipe is validated."""

from pathlib import Path

import pytest

from dsbs.experiment import load_recipe, run_experiment
from dsbs.report import report
from dsbs.tasks.common import DataError, read_appended_jsonl
from tests.conftest import DATA_DIR, needs_data

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def tiny_recipe(tmp_path, student, **overrides) -> Path:
    text = {"name": "tiny", "output": str(tmp_path / "out"), "tasks": ["demo"], "methods": ["standard", "dsbs"],
            "fractions": [0.5, 1.0], "students": [student], "seeds": [0, 1], "test_limit": 6,
            "train": {"max_steps": 2, "batch_size": 2, "eval_limit": 2, "precision": "fp32", "lr": 1e-3,
                      "max_input_tokens": 64, "max_target_tokens": 32, "keep_checkpoints": False}}
    text.update(overrides)
    path = tmp_path / "recipe.yaml"
    import yaml

    path.write_text(yaml.safe_dump(text))
    return path


def test_grid_runs_once_resumes_and_reports(tiny_causal, tmp_path):
    recipe = load_recipe(str(tiny_recipe(tmp_path, tiny_causal)))
    first = run_experiment(recipe)
    assert len(first) == 8 and {r["method"] for r in first} == {"standard", "dsbs"}
    assert all(r["test_n"] == 6 and r["steps"] == 2 for r in first)
    run_dir = Path(recipe.output) / "runs" / first[0]["run"]
    assert (run_dir / "test" / "metrics.json").is_file() and (run_dir / "train_config.json").is_file()
    # a kill mid-append leaves a cut line; the rerun drops it and redoes nothing that finished
    results = Path(recipe.output) / "results.jsonl"
    results.write_text(results.read_text() + '{"run": "cut sh')
    assert run_experiment(recipe) == []
    assert len(read_appended_jsonl(results)) == 8
    out = report(str(results))
    assert "| dsbs |" in out["markdown"] and "(n=2)" in out["markdown"] and "±" in out["markdown"]
    assert all(Path(p).stat().st_size > 1000 for p in out["plots"])


def test_bad_recipe_is_reported(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\noutput: y\ntasks: [demo]\nlearning_rate: 3\n")
    with pytest.raises(DataError, match="unknown setting.*learning_rate"):
        load_recipe(str(path))
    path.write_text("name: x\noutput: y\ntasks: [demo]\ntrain: {method_typo: 1}\n")
    with pytest.raises(DataError, match="method_typo"):
        load_recipe(str(path))
    path.write_text("name: x\n  output: [\n")
    with pytest.raises(DataError, match=r"bad.yaml:\d+: invalid YAML"):
        load_recipe(str(path))


@needs_data
@pytest.mark.parametrize("recipe_path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipe_resolves_and_runs_two_steps(recipe_path, tiny_causal, tmp_path):
    recipe = load_recipe(str(recipe_path))
    assert recipe.runs()
    # a two-step version on a tiny student, on the tasks whose data is here
    import yaml

    raw = yaml.safe_load(recipe_path.read_text())
    tasks = [t for t in raw["tasks"] if t in ("cqa", "svamp")]
    train = {**raw["train"], "max_steps": 2, "batch_size": 2, "eval_limit": 2, "eval_interval": 0, "precision": "fp32",
             "keep_checkpoints": False}
    small = tiny_recipe(tmp_path, tiny_causal, tasks=tasks, methods=raw["methods"], fractions=[min(raw["fractions"])],
                        seeds=[0], task_settings={"data_dir": DATA_DIR}, train=train, test_limit=3)
    results = run_experiment(load_recipe(str(small)))
    assert len(results) == len(tasks) * len(raw["methods"])
    assert all(0 <= r["test_accuracy"] <= 1 for r in results)
