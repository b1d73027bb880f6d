"""Recipes -> runs -> results -> report, on tiny students; every shipped recipe is validated."""

import json
import time
from pathlib import Path

import pytest

from dsbs.experiment import load_recipe, run_experiment, run_name
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
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "recipe.yaml"
    import yaml

    path.write_text(yaml.safe_dump(text))
    return path


def test_grid_runs_once_resumes_and_reports(tiny_causal, tmp_path, capsys):
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
    # another recipe sharing the output counts only its own runs
    capsys.readouterr()
    other = load_recipe(str(tiny_recipe(tmp_path / "other", tiny_causal, output=recipe.output, methods=["standard"],
                                        fractions=[1.0], seeds=[0, 2])))
    assert len(run_experiment(other)) == 1
    assert "[2/2] demo-standard" in capsys.readouterr().out
    out = report(str(results))
    assert "| dsbs |" in out["markdown"] and "(2 seeds)" in out["markdown"]
    assert "| dsbs | standard | 50.0% |" in out["markdown"] and "| dsbs | standard | 100.0% |" in out["markdown"]
    assert "Minimum resources" in out["markdown"] and "first 6 test rows" in out["markdown"]
    assert all(Path(p).stat().st_size > 1000 for p in out["plots"])
    assert all(len(r["test_correct"]) == 6 and set(r["test_correct"]) <= {"0", "1"} for r in first)
    assert round(sum(map(int, first[0]["test_correct"])) / 6, 6) == round(first[0]["test_accuracy"], 6)


def test_parallel_jobs_give_the_sequential_result_lines_and_keep_no_weights(tiny_causal, tmp_path):
    grid = dict(methods=["standard", "dsbs"], fractions=[1.0], seeds=[0, 1], keep_weights=False,
                priority=[{"method": "dsbs", "seed": 1}])
    sequential = load_recipe(str(tiny_recipe(tmp_path / "a", tiny_causal, **grid)))
    parallel = load_recipe(str(tiny_recipe(tmp_path / "b", tiny_causal, **grid)))
    assert [run_name(r) for r in parallel.runs()][0].startswith("demo-dsbs") and parallel.runs()[0]["seed"] == 1
    run_experiment(sequential)
    run_experiment(parallel, jobs=2)

    def settings(recipe):
        return {(r["run"], r["task"], r["method"], r["fraction"], r["seed"], r["test_n"], r["steps"],
                 json.dumps(r["train_settings"], sort_keys=True))
                for r in read_appended_jsonl(Path(recipe.output) / "results.jsonl")}

    assert settings(parallel) == settings(sequential) and len(settings(parallel)) == 4
    lines = (Path(parallel.output) / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines), "no torn or doubled line"
    for run_dir in (Path(parallel.output) / "runs").iterdir():
        assert (run_dir / "test" / "predictions.jsonl").is_file() and (run_dir / "result.json").is_file()
        assert not (run_dir / "model").exists() and not (run_dir / "checkpoints").exists()


def test_a_sweep_stopped_at_its_deadline_resumes(tiny_causal, tmp_path):
    recipe = load_recipe(str(tiny_recipe(tmp_path, tiny_causal, methods=["standard"], fractions=[1.0], seeds=[0, 1])))
    assert run_experiment(recipe, jobs=1, deadline=time.time()) == []  # nothing starts after the deadline
    assert not (Path(recipe.output) / "results.jsonl").exists()
    assert len(run_experiment(recipe, jobs=1, deadline=time.time() + 600)) == 2
    # a result the sweep did not append before dying is taken from its run directory, not run again
    results = Path(recipe.output) / "results.jsonl"
    results.write_text(results.read_text().splitlines()[0] + "\n")
    [recovered] = run_experiment(recipe)
    assert recovered["seed"] == 1 and len(read_appended_jsonl(results)) == 2


def test_report_reads_a_cut_results_file_without_changing_it(tmp_path):
    line = {"run": "r", "task": "demo", "student": "s", "method": "standard", "fraction": 1.0, "seed": 0,
            "test_accuracy": 0.5, "test_n": 2, "test_correct": "10"}
    results = tmp_path / "results.jsonl"
    text = json.dumps(line) + "\n" + '{"run": "cut'
    results.write_text(text)
    assert report(str(results))["runs"] == 1
    assert results.read_text() == text


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
    from dsbs.tasks import TaskConfig, get_task

    def has_pool(task: str) -> bool:  # the full release has splits these samples do not
        split = raw["train"].get("train_split") or get_task(TaskConfig(task=task)).train_split
        return (Path(DATA_DIR) / task / f"{task}_{split}.json").is_file()

    tasks = [t for t in raw["tasks"] if t in ("cqa", "svamp", "esnli") and has_pool(t)]
    assert tasks, "every shipped recipe runs on data this repository's tests have"
    train = {**raw["train"], "max_steps": 2, "batch_size": 2, "eval_limit": 2, "eval_interval": 0, "precision": "fp32",
             "keep_checkpoints": False}
    variants = {name: {**v, "max_steps": 2, "eval_interval": 0} for name, v in raw.get("variants", {}).items()}
    small = tiny_recipe(tmp_path, tiny_causal, tasks=tasks, methods=raw["methods"], fractions=[min(raw["fractions"])],
                        seeds=[0], task_settings={"data_dir": DATA_DIR}, train=train, test_limit=3,
                        variants=variants, task_train={t: {"max_steps": 2} for t in raw.get("task_train", {})})
    resolved = load_recipe(str(small))
    results = run_experiment(resolved)
    assert len(results) == len(resolved.runs()) >= len(tasks) * len(raw["methods"])
    assert all(r["test_n"] == 3 and len(r["test_correct"]) == 3 for r in results)


def test_variants_are_one_more_axis_and_compare_with_their_own_standard(tiny_causal, tmp_path):
    recipe = load_recipe(str(tiny_recipe(tmp_path, tiny_causal, methods=["standard", "dsbs"], fractions=[1.0],
                                         seeds=[0], variants={"short": {"max_steps": 1}, "alpha9": {"alpha": 0.9}})))
    assert sorted(run_name(r) for r in recipe.runs())[0].endswith("-s0-alpha9")
    results = run_experiment(recipe)
    assert {(r["method"], r["variant"], r["steps"]) for r in results} == {
        ("standard", "short", 1), ("dsbs", "short", 1), ("standard", "alpha9", 2), ("dsbs", "alpha9", 2)}
    lever = next(r for r in results if r["variant"] == "alpha9" and r["method"] == "dsbs")
    assert lever["train_settings"]["alpha"] == 0.9
    markdown = report(recipe.output)["markdown"]
    assert "| dsbs [short] | standard [short] | 100.0% |" in markdown
    assert "| dsbs [alpha9] | standard [alpha9] | 100.0% |" in markdown
    assert "| dsbs [alpha9] | dsbs | 100.0% |" not in markdown  # no plain dsbs here to compare with
    plain = {**results[0], "variant": "", "method": "dsbs", "run": "plain"}
    from dsbs.report import group_results
    from dsbs.report import markdown as render

    assert "| dsbs [alpha9] | dsbs | 100.0% |" in render(group_results([*results, plain]))


def test_a_failing_cell_is_named_and_the_others_still_run(tiny_causal, tmp_path):
    """Before: one cell's error ended a sequential sweep with the bare error, naming no cell."""
    from dsbs.experiment import SweepFailed

    recipe = load_recipe(str(tiny_recipe(tmp_path, tiny_causal, methods=["standard"], fractions=[1.0], seeds=[0],
                                         variants={"nosplit": {"train_split": "nosuch"}, "": {}})))
    with pytest.raises(SweepFailed, match=r"1 run\(s\) failed:\ndemo-standard-.*-s0-nosplit-\w+: "):
        run_experiment(recipe)
    lines = read_appended_jsonl(Path(recipe.output) / "results.jsonl")
    assert [r["variant"] for r in lines] == [""]


def test_teacher_labelled_runs_are_compared_with_distillation():
    from dsbs.report import group_results, markdown

    def line(method, seed, correct, **settings):
        return {"run": f"{method}{seed}{settings}", "task": "demo", "student": "s", "method": method, "seed": seed,
                "fraction": 1.0, "variant": "unlabeled" if settings else "", "test_n": 4, "test_accuracy":
                correct.count("1") / 4, "test_correct": correct, "train_settings": settings}

    results = [line("distill", 0, "1000"), line("distill", 1, "1100"), line("dsbs", 0, "1110"), line("dsbs", 1, "1111"),
               line("dsbs", 0, "1111", label_source="teacher"), line("dsbs", 1, "1110", label_source="teacher")]
    text = markdown(group_results(results))
    assert "| dsbs [unlabeled] | distill | 100.0% | +50.0 [" in text
    assert "| dsbs | distill |" not in text  # gold labels: not the unlabeled comparison


def test_the_teacher_is_compared_with_every_seed():
    from dsbs.report import paired, teacher_lines

    lines = [{"seed": 0, "test_correct": "1111", "teacher_test_correct": "1000"},
             {"seed": 1, "test_correct": "1100", "teacher_test_correct": "1000"}]
    d = paired(lines, teacher_lines({"dsbs": {1.0: lines}}))
    assert d.seeds == 2 and d.diff == pytest.approx(100 * (0.75 - 0.25))


def test_budget_curve_joins_the_runs_that_differ_only_in_length(tmp_path):
    from dsbs.report import budget_curves, group_results

    def line(method, variant, seed, correct, steps, **settings):
        return {"run": f"{method}{variant}{seed}", "task": "demo", "student": "s", "method": method, "seed": seed,
                "fraction": 1.0, "variant": variant, "steps": steps, "test_n": 4,
                "test_accuracy": correct.count("1") / 4, "test_correct": correct,
                "train_settings": {"lr": 1e-4, "max_steps": steps, "eval_interval": steps // 4, **settings}}

    results = [line("standard", "", 0, "1000", 200), line("dsbs", "", 0, "1100", 200),
               line("standard", "long", 0, "1100", 400), line("dsbs", "long", 0, "1111", 400),
               line("dsbs", "alpha", 0, "0000", 200, alpha=0.8), line("dsbs", "long-alpha", 0, "0000", 800, alpha=0.8)]
    cells = group_results(results)[("demo", "s")]
    curves = budget_curves(cells, 1.0)
    assert {m: {s: lines[0]["variant"] for s, lines in c.items()} for m, c in curves.items()} == {
        "standard": {200: "", 400: "long"}, "dsbs": {200: "", 400: "long"}}
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    out = report(str(tmp_path / "results.jsonl"))
    assert "| 400 | 50.0 (1 seed) | 100.0 (1 seed) | +50.0 [" in out["markdown"]
    assert "| 800 |" not in out["markdown"]  # the 800-step run also changed alpha: not on the curve
    assert any(p.endswith("-budget-f1.png") and Path(p).is_file() for p in out["plots"])
