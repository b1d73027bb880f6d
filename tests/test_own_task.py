"""A user's own task end to end: a CSV with its own column names, a teacher, a student that remembers its task.

Each test here is one trap a new user fell into: the teach output ignored, dsbs trained without
rationales under its own name, misspelled fields, a student that forgets its task, teaching rows
without rationales, a run ten times the size of its model, a model card whose snippet did not run.
"""

import csv
import json
import re
from pathlib import Path

import pytest

from dsbs.configs import TeachConfig, TrainConfig
from dsbs.errors import ConfigError, DataError
from dsbs.tasks import TaskConfig, get_task
from dsbs.teach import teach
from dsbs.train import train
from tests.conftest import DATA_DIR
from tests.fake_openai import FakeOpenAI

EXAMPLES = Path(__file__).parent.parent / "examples" / "reviews"
SOURCE = {"input_field": "text", "label_field": "sentiment", "label_set": "positive,negative"}


def gold_labels() -> dict[str, str]:
    rows = []
    for name in ("train.csv", "test.csv"):
        with open(EXAMPLES / name, newline="") as f:
            rows += list(csv.DictReader(f))
    return {row["text"]: row["sentiment"] for row in rows}


def sentiment_teacher(item: str, attempt: int) -> str:
    """A fake teacher: explains a given label, else answers the review's gold label (wrong on 'Far too loud')."""
    given = re.search(r"\(The correct answer: (\w+)\.\)", item)
    text = item.removeprefix("Q: ").split("\n")[0]
    label = given.group(1) if given else gold_labels().get(text, "positive")
    if text.startswith("Far too loud"):
        label = "positive"
    return f"The review says how the buyer felt about it. So the answer is {label}."


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def tiny_train(student: str, output, **settings) -> TrainConfig:
    return TrainConfig(**{"student": student, "output": str(output), "max_steps": 2, "batch_size": 4,
                          "eval_limit": 4, "precision": "fp32", "max_input_tokens": 64, "max_target_tokens": 32,
                          **settings})


@pytest.fixture(scope="module")
def taught(tmp_path_factory) -> Path:
    """The example reviews taught by a fake OpenAI-compatible teacher: a teach output directory."""
    out = tmp_path_factory.mktemp("teach")
    with FakeOpenAI(answer=sentiment_teacher) as server:
        teach(TaskConfig(task=str(EXAMPLES / "train.csv"), **SOURCE),
              TeachConfig(backend="openai", base_url=server.url, model="fake", exemplars=4, output=str(out)))
    return out


def test_a_teach_output_is_a_task_named_after_the_task_with_one_field_naming(taught, tiny_causal, tmp_path):
    """Before: `--data-dir runs/teach` with a file task trained on the CSV's own rationales; outputs were
    train_train.jsonl with `label` in the JSONL and `gold_label` in the parquet."""
    summary = json.loads((taught / "teach_summary.json").read_text())
    assert summary["task"] == "reviews"  # the folder's name: the file is named like a split
    rows = [json.loads(line) for line in (taught / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and set(rows[0]) == {"id", "input", "label", "rationale", "teacher_label"}
    assert rows[0]["label"] == "positive" and rows[0]["rationale"].startswith("The review says")
    pyarrow = pytest.importorskip("pyarrow.parquet")
    columns = pyarrow.read_table(taught / "data" / "train-00000-of-00001.parquet").column_names
    assert set(rows[0]) <= set(columns) and "gold_label" not in columns
    assert "# Teacher rationales for reviews (train split)" in (taught / "README.md").read_text()
    assert (taught / "llm" / "train_teacher.jsonl").is_file()

    run = tmp_path / "run"
    train(TaskConfig(task=str(taught)), tiny_train(tiny_causal, run, method="dsbs"))
    settings = json.loads((run / "train_config.json").read_text())
    assert settings["rationale_examples"] == settings["train_examples"] == 36  # the teacher's, 4 held out
    meta = json.loads((run / "model" / "dsbs.json").read_text())
    assert meta["task"] == "reviews" and meta["task_config"]["input_field"] == "text"
    assert meta["task_config"]["label_set"] == "positive,negative" and meta["rationales"].startswith("the teacher's")

    with pytest.raises(ConfigError, match=f"--task {re.escape(str(taught))}"):
        get_task(TaskConfig(task=str(EXAMPLES / "train.csv"), data_dir=str(taught), **SOURCE))


def test_the_test_file_is_read_in_the_format_of_the_file_the_teacher_read(taught, tiny_causal, tmp_path):
    """Before: one set of field flags served --task and --test-file, so a teach output and the user's own
    test file could not be read together."""
    task = get_task(TaskConfig(task=str(taught), test_file=str(EXAMPLES / "test.csv")))
    train_rows, test_rows = task.load("train"), task.load("test")
    assert train_rows[0].rationale and test_rows[0].input.startswith("Gorgeous") and test_rows[0].label == "positive"
    renamed = write_csv(tmp_path / "other.csv", ["review", "stars"], [["Lovely.", "positive"]])
    [row] = get_task(TaskConfig(task=str(taught), test_file=str(renamed), input_field="review",
                                label_field="stars")).load("test")
    assert (row.input, row.label) == ("Lovely.", "positive")


def test_without_pyarrow_the_card_is_still_written_and_points_at_the_jsonl(tmp_path, monkeypatch):
    """Before: no pyarrow, no card: the teach output lost its description (CI's oldest-releases run)."""
    import yaml

    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)  # `import pyarrow` raises ImportError
    with FakeOpenAI(answer=sentiment_teacher) as server:
        teach(TaskConfig(task=str(EXAMPLES / "train.csv"), **SOURCE),
              TeachConfig(backend="openai", base_url=server.url, model="fake", exemplars=4, limit=8,
                          output=str(tmp_path)))
    assert not (tmp_path / "data").exists()
    card = (tmp_path / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    data_file = meta["configs"][0]["data_files"][0]["path"]
    assert data_file == "llm/train_teacher.jsonl" and "pyarrow was not installed" in card
    assert len((tmp_path / data_file).read_text().splitlines()) == 8
    assert str(tmp_path / "README.md") in json.loads((tmp_path / "teach_summary.json").read_text())["files"]
    if DATA_DIR is None:
        return
    with FakeOpenAI(answer=lambda item, attempt: "Half of 84 is 42. The answer is (84 / 2).") as server:
        teach(TaskConfig(task="svamp", data_dir=DATA_DIR), TeachConfig(
            backend="openai", base_url=server.url, model="fake", limit=2, output=str(tmp_path / "svamp")))
    card = (tmp_path / "svamp" / "README.md").read_text()
    data_file = yaml.safe_load(card.split("---")[1])["configs"][0]["data_files"][0]["path"]
    assert data_file == "svamp/llm/train_teacher.jsonl" and (tmp_path / "svamp" / data_file).is_file()


def test_teacher_writes_exemplars_for_rows_without_rationales_and_is_scored_on_the_others(taught):
    """Before: rows without rationales stopped with `pass --prompt-file`; teacher accuracy counted its exemplars."""
    prompt = json.loads((taught / "prompt.json").read_text())
    assert len(prompt["exemplars"]) == 4 and not prompt["exemplars"][0]["input"].startswith("(")
    labels = [e["answer"].rsplit(" ", 1)[1] for e in prompt["exemplars"]]
    assert sorted(labels) == ["negative.", "negative.", "positive.", "positive."]  # both labels shown
    summary = json.loads((taught / "teach_summary.json").read_text())
    assert summary["prompt"].startswith("exemplars written by the teacher for 4 labelled rows")
    assert summary["exemplar_rows_not_scored"] == 4 and summary["teacher_accuracy_rows"] == 36
    # what was sent includes the 8 requests that wrote exemplars (before: only the rows' 40)
    assert summary["this_run"]["exemplar_requests"] == 8 and summary["requests_made"] == 48
    assert summary["teacher_accuracy"] == round(35 / 36, 4)  # 'Far too loud' is not an exemplar and is wrong
    card = (taught / "README.md").read_text()
    assert "exemplars written by the teacher" in card and "4 rows that are exemplars" in card


def test_a_dry_run_prices_the_exemplar_requests_live_whatever_the_route(tmp_path):
    """Before: the batch cost halved the exemplar-writing requests too, though they go live before any batch."""
    from dsbs.errors import ConfigError

    with pytest.raises(ConfigError, match="both prices"):
        TeachConfig(price_in=0.15)
    dry = teach(TaskConfig(task=str(EXAMPLES / "train.csv"), **SOURCE),
                TeachConfig(backend="openai", model="fake", exemplars=4, dry_run=True, price_in=1.0, price_out=1.0,
                            output=str(tmp_path / "teach")))
    assert dry["exemplar_requests"] == 8 and dry["requests"] == 48
    assert dry["cost_live"] / 2 < dry["cost_batch"] < dry["cost_live"] * (0.5 + 0.5 * 8 / 48) * 1.2


def test_zero_shot_sends_no_exemplars(tmp_path):
    with FakeOpenAI(answer=sentiment_teacher) as server:
        summary = teach(TaskConfig(task=str(EXAMPLES / "train.csv"), **SOURCE),
                        TeachConfig(backend="openai", base_url=server.url, model="fake", zero_shot=True, limit=3,
                                    output=str(tmp_path)))
        assert sum(server.requests.values()) == 3  # no exemplar-writing requests
    prompt = json.loads((tmp_path / "prompt.json").read_text())
    assert prompt["exemplars"] == [] and "positive, negative" in prompt["instruction"]
    assert summary["exemplar_rows_not_scored"] == 0 and summary["teacher_accuracy"] == 1.0


def test_misspelled_fields_name_the_flag_and_the_columns(tmp_path):
    """Before: a misspelled --label-field said only 'it needs labels'; --rationale-field trained dsbs with no
    rationale loss; a missing input field named neither the flag nor the columns."""
    data = write_csv(tmp_path / "mine.csv", ["text", "sentiment", "why"], [["good", "positive", "it is good"]])
    for flag, setting in (("--label-field", {"label_field": "sentment"}),
                          ("--rationale-field", {"rationale_field": "reason"}),
                          ("--teacher-label-field", {"teacher_label_field": "teacher"})):
        with pytest.raises(DataError, match=f"given by {flag}; the fields are: text, sentiment, why"):
            get_task(TaskConfig(task=str(data), input_field="text", **setting)).load("train")
    with pytest.raises(DataError, match=r"mine.csv:2: missing field 'input' \(--input-field\); the row's fields are: "
                                        "text, sentiment, why"):
        get_task(TaskConfig(task=str(data))).load("train")


def rows_with_rationales(tmp_path, n_rows: int, n_rationales: int, empty_label_at: int | None = None) -> Path:
    rows = [[f"review number {i}", "negative" if i == empty_label_at else ("positive" if i % 2 else "negative"),
             f"because of reason {i}" if i < n_rationales else ""] for i in range(n_rows)]
    if empty_label_at is not None:
        rows[empty_label_at][1] = ""
    return write_csv(tmp_path / "rows.csv", ["text", "sentiment", "why"], rows)


def test_dsbs_without_enough_rationales_stops_with_the_counts(tmp_path, tiny_causal):
    """Before: dsbs on rows without rationales trained label-only while its card claimed a rationale loss."""
    data = rows_with_rationales(tmp_path, 20, 3)
    task = TaskConfig(task=str(data), input_field="text", label_field="sentiment", rationale_field="why")
    with pytest.raises(DataError, match=r"only 3 of its 18 training examples have one \(field 'why' \(--rationale-fie.*"
                                        r"--allow-missing-rationales"):
        train(task, tiny_train(tiny_causal, tmp_path / "refused", method="dsbs"))
    with pytest.raises(DataError, match=r"single_task learns from rationales, but only 3 of its 18 training"):
        train(task, tiny_train(tiny_causal, tmp_path / "refused", method="single_task"))
    train(task, tiny_train(tiny_causal, tmp_path / "run", method="dsbs", allow_missing_rationales=True))
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert "| loss | 0.5 x label + 0.5 x rationale |" in card and "3 of 18 training examples have one" in card
    none = rows_with_rationales(tmp_path, 20, 0)
    train(TaskConfig(task=str(none), input_field="text", label_field="sentiment"),
          tiny_train(tiny_causal, tmp_path / "none", method="dsbs", allow_missing_rationales=True))
    card = (tmp_path / "none" / "model" / "README.md").read_text()
    assert "| loss | label only: no training example had a rationale |" in card


def test_partly_labelled_rows_validate_and_count_only_where_labelled(tmp_path, tiny_causal):
    """Before: with half the rows unlabelled, --rationales agreeing stopped ("8 of 18 rows have one") though
    every example it trains has one; validation was drawn from all rows and lost its unlabelled ones; the
    budget counted unlabelled rows as labelled ones."""
    rows = [[f"ticket {i}", ("high" if i % 2 else "low") if i < 10 else "", f"because {i} says so",
             "high" if i % 2 else "low"] for i in range(20)]
    data = write_csv(tmp_path / "tickets.csv", ["text", "priority", "why", "teacher"], rows)
    task = TaskConfig(task=str(data), input_field="text", label_field="priority", rationale_field="why",
                      teacher_label_field="teacher")
    summary = train(task, tiny_train(tiny_causal, tmp_path / "run", method="dsbs", rationales="agreeing"))
    assert summary["validation_examples"] == 1 and summary["budget_rows"] == 10  # 9 train + 1 validation
    assert summary["train_examples"] == summary["rationale_examples"] == 9


def test_skipped_rows_are_reported_with_their_lines_and_written_down(tmp_path, tiny_causal, capfd):
    """Before: a CSV row with an empty label was skipped with a count only."""
    data = rows_with_rationales(tmp_path, 20, 20, empty_label_at=5)
    train(TaskConfig(task=str(data), input_field="text", label_field="sentiment", rationale_field="why"),
          tiny_train(tiny_causal, tmp_path / "run", method="standard"))
    err = capfd.readouterr().err
    assert "1 training row(s) skipped" in err and "rows.csv:7: no gold label" in err
    [note] = [json.loads(line) for line in (tmp_path / "run" / "skipped.jsonl").read_text().splitlines()]
    assert note["where"].endswith("rows.csv:7") and note["missing"] == ["gold label"] and note["dropped"]
    missing = write_csv(tmp_path / "nolabel.csv", ["text"], [["a"], ["b"], ["c"]])
    with pytest.raises(DataError, match=r"it learns gold labels, and none of the 3 training rows has what it needs "
                                        r"\(label: field 'label' \(--label-field; the fields are: text\)"):
        train(TaskConfig(task=str(missing), input_field="text"), tiny_train(tiny_causal, tmp_path / "x",
                                                                               method="standard"))


def test_a_student_remembers_its_task(taught, tiny_causal, tmp_path):
    """Before: evaluate needed --task and every field flag again; predict and serve --choices refused an own task."""
    from dsbs.evaluate import evaluate
    from dsbs.predict import predict_file

    run = tmp_path / "run"
    train(TaskConfig(task=str(taught)), tiny_train(tiny_causal, run, method="dsbs"))
    metrics = evaluate(str(run / "model"), TaskConfig(test_file=str(EXAMPLES / "test.csv")), output=str(tmp_path / "e"))
    assert metrics["n"] == 12 and metrics["task"] == "reviews"
    assert metrics["task_config"]["label_field"] == "sentiment"  # what it was read with is recorded
    out = tmp_path / "answers.jsonl"
    summary = predict_file(str(run / "model"), str(EXAMPLES / "test.csv"), str(out), choices=True)
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["predicted"] == 12 and summary["input"] == "field 'text'"
    assert {a["label"] for a in answers} <= {"positive", "negative"}
    assert answers[0]["input"] == "Gorgeous colour and it fits perfectly."


def test_serve_chooses_from_the_recorded_label_set(taught, tiny_causal, tmp_path):
    pytest.importorskip("fastapi")
    from dsbs.configs import ServeConfig
    from tests.test_serve import post, running

    train(TaskConfig(task=str(taught)), tiny_train(tiny_causal, tmp_path / "run", method="standard"))
    with running(ServeConfig(model=str(tmp_path / "run" / "model"), choices=True)) as url:
        status, body = post(url + "/predict", {"inputs": ["Lovely and sturdy.", "Broke at once."]})
    assert status == 200 and {p["label"] for p in body["predictions"]} <= {"positive", "negative"}


def test_only_the_model_stays_after_a_run_and_no_shard_bars(tmp_path, tiny_causal, capfd):
    """Before: a 20-step run left a checkpoint (1 GB optimizer state, 538 MB weights) beside model/, and
    transformers' "Writing model shards" bar printed at every checkpoint."""
    from dsbs.train import latest_checkpoint

    run = tmp_path / "run"
    train(TaskConfig(task="demo"), tiny_train(tiny_causal, run, max_steps=4, save_interval=2))
    assert (run / "model" / "dsbs.json").is_file() and not (run / "checkpoints").exists()
    assert "Writing model shards" not in capfd.readouterr().err
    kept = tmp_path / "kept"
    train(TaskConfig(task="demo"), tiny_train(tiny_causal, kept, max_steps=4, save_interval=2, keep_checkpoints=True))
    assert latest_checkpoint(kept).name == "step-000004"


def test_the_cards_loading_snippet_runs_and_answers_as_dsbs_does(tmp_path, tiny_causal, tiny_seq2seq):
    """Before: the snippet decoded the prompt with the answer and never built its `text`."""
    from dsbs.checkpoint import read_meta
    from dsbs.inference import predict
    from dsbs.models import load_student

    for name, student in (("causal", tiny_causal), ("seq2seq", tiny_seq2seq)):
        for form in ("suffix", "prefix"):
            run = tmp_path / f"{name}-{form}"
            train(TaskConfig(task="demo"), tiny_train(student, run, method="standard", prompt_form=form,
                                                      lr=5e-3, max_steps=20))
            card = (run / "model" / "README.md").read_text()
            code = card.split("```python\n")[1].split("```")[0].replace("path/to/this/dir", str(run / "model"))
            scope: dict = {}
            exec(code, scope)  # noqa: S102 - the card's own snippet, as a user would paste it
            model, tokenizer = load_student(str(run / "model"), for_inference=True)
            [expected] = predict(model, tokenizer, read_meta(run / "model"), [scope["text"]])
            assert scope["label"] == expected["label"] and scope["text"] not in scope["label"]


def test_every_sample_is_kept_and_agreeing_rationales_train(tmp_path, tiny_causal):
    """Several answers per row (teach --samples k) all reach the data; --rationales chooses among them."""
    def varied(item: str, attempt: int) -> str:
        label = "negative" if attempt == 2 else sentiment_teacher(item, attempt).rsplit(" ", 1)[1].rstrip(".")
        return f"Reason number {attempt}. So the answer is {label}."

    with FakeOpenAI(answer=varied) as server:
        teach(TaskConfig(task=str(EXAMPLES / "train.csv"), **SOURCE),
              TeachConfig(backend="openai", base_url=server.url, model="fake", exemplars=2, samples=3,
                          temperature=0.7, limit=8, output=str(tmp_path / "teach")))
    rows = get_task(TaskConfig(task=str(tmp_path / "teach"))).load("train")
    assert all(len(row.samples) == 3 for row in rows)
    assert {label for row in rows for _, label in row.samples} == {"positive", "negative"}
    run = tmp_path / "run"
    train(TaskConfig(task=str(tmp_path / "teach")), tiny_train(tiny_causal, run, rationales="all-agreeing",
                                                               eval_limit=1))
    meta = json.loads((run / "model" / "dsbs.json").read_text())
    assert meta["rationale_selection"] == "all-agreeing" and "only those whose label" in (
        run / "model" / "README.md").read_text()
    with pytest.raises(ConfigError, match="unlabeled setting has no gold labels"):
        tiny_train(tiny_causal, tmp_path / "x", rationales="agreeing", label_source="teacher")
    with pytest.raises(ConfigError, match="standard learns none"):  # before: accepted and silently ignored
        tiny_train(tiny_causal, tmp_path / "x", rationales="all-agreeing", method="standard")


def test_a_run_whose_rows_have_no_label_stops_instead_of_learning_rationales_alone(tmp_path, tiny_causal):
    """Before: dsbs on a file whose label column has another name trained the rationale task only (label loss
    logged as 0) and its card said 0.5 x label + 0.5 x rationale."""
    data = write_csv(tmp_path / "rows.csv", ["text", "sentiment", "rationale"],
                     [[f"review {i}", "positive", f"because {i}"] for i in range(8)])
    with pytest.raises(DataError, match=r"dsbs learns the label as its answer, but none of its 8 training rows has "
                                        r"one \(field 'label' .*train on the teacher's labels \(--label-source"):
        train(TaskConfig(task=str(data), input_field="text"), tiny_train(tiny_causal, tmp_path / "run"))


@pytest.mark.parametrize("settings, message", [
    ({"method": "standard", "label_source": "teacher"}, "that is --method distill"),
    ({"method": "single_task", "rationales": "all-agreeing"}, "use --rationales agreeing"),
    ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
])
def test_settings_a_method_would_ignore_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**settings)


def test_what_a_run_cut_and_left_unused_is_counted(tmp_path, tiny_causal, capfd):
    """Before: inputs and targets were cut without a count (tests/test_batching.py checks the counts), and
    --eval-limit's unused held-out rows were counted nowhere."""
    rows = [[f"review {i} " + "long " * (60 if i < 8 else 0), "positive" if i % 2 else "negative",
             ("reason " * 40) if i < 12 else "short reason"] for i in range(40)]
    data = write_csv(tmp_path / "rows.csv", ["text", "label", "rationale"], rows)
    run = tmp_path / "run"
    train(TaskConfig(task=str(data), input_field="text"),
          tiny_train(tiny_causal, run, val_fraction=0.25, eval_limit=4))
    resolved = json.loads((run / "train_config.json").read_text())
    assert resolved["validation_examples"] == 4 and resolved["held_out_unused"] == 6
    assert resolved["cut_items"]["rationale_targets"] >= 1 and resolved["cut_items"]["inputs"] >= 1
    assert "label_targets" not in resolved["cut_items"]
    err = capfd.readouterr().err
    assert "so cut:" in err and "rationale targets" in err and "held-out rows unused" in err


def test_a_student_may_answer_as_long_as_the_labels_it_learnt(tmp_path, tiny_causal):
    """Before: an own task's answers were cut at 32 tokens in validation and inference, whatever training taught,
    so a longer label could never be answered."""
    rows = [[f"question {i}", " ".join(f"w{i}x{j}" for j in range(30)), "a reason"] for i in range(12)]
    data = write_csv(tmp_path / "long.csv", ["text", "label", "rationale"], rows)
    train(TaskConfig(task=str(data), input_field="text"), tiny_train(tiny_causal, tmp_path / "run",
                                                                      max_target_tokens=96))
    meta = json.loads((tmp_path / "run" / "model" / "dsbs.json").read_text())
    assert 32 < meta["label_max_tokens"] <= 96
