"""evaluate and predict on a briefly trained tiny student."""

import json

import pytest

from dsbs.evaluate import evaluate
from dsbs.tasks import TaskConfig, demo
from tests.conftest import run_dsbs


@pytest.fixture
def trained(trained_student) -> str:
    return trained_student


def test_evaluate_writes_predictions_and_metrics(trained, tmp_path):
    metrics = evaluate(trained, TaskConfig(task="demo"), split="test", limit=6, output=str(tmp_path),
                       with_rationale=True)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 6 and {"input", "gold", "label", "rationale", "correct", "parsed"} <= set(records[0])
    rescored = [demo.task().labels_match(r["label"], r["gold"]) for r in records]
    assert [r["correct"] for r in records] == rescored and [r["gold"] for r in records] == [
        e.label for e in demo.load("test")[:6]]
    assert saved["n"] == 6 and saved["correct"] == sum(rescored) and saved["accuracy"] == sum(rescored) / 6
    assert saved["correct_vector"] == "".join("1" if ok else "0" for ok in rescored)
    assert saved["parse_failures"] == sum(not r["parsed"] for r in records) and metrics["n"] == 6


def run_cli(*args):
    return run_dsbs(*args, check=False)


def test_predict_streams_jsonl_and_reports_bad_lines(trained, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"input": "Ava has 3 apples. How many?"}\n{"input": [7]}\n\n{"input": "2 boxes of 5?"}\n')
    out = tmp_path / "out.jsonl"
    failed = run_cli("predict", "--model", trained, "--input", str(source), "--output", str(out))
    assert failed.returncode == 2
    assert f"{source}:2: field 'input' should be text, got list" in failed.stderr and "Traceback" not in failed.stderr
    ok = run_cli("predict", "--model", trained, "--input", str(source), "--output", str(out), "--skip-bad-lines")
    assert ok.returncode == 0, ok.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 4] and all(isinstance(r["label"], str) for r in rows)
    assert "skipped" in ok.stdout and ":2:" in ok.stdout


def test_predict_refuses_to_write_over_its_input(trained, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"input": "2 boxes of 5?"}\n')
    link = tmp_path / "link.jsonl"
    link.symlink_to(source)
    for output in (source, link):
        failed = run_cli("predict", "--model", trained, "--input", str(source), "--output", str(output))
        assert failed.returncode == 2 and "is the input file" in failed.stderr
    assert source.read_text() == '{"input": "2 boxes of 5?"}\n'


def test_predict_resume_answers_only_the_missing_lines(trained, tmp_path):
    from dsbs.predict import predict_file

    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"input": f"{i} boxes of 3?"}) + "\n" for i in range(5)))
    out = tmp_path / "out.jsonl"
    assert predict_file(trained, str(source), str(out))["predicted"] == 5
    complete = out.read_text().splitlines()
    out.write_text("\n".join(complete[:2]) + "\n" + complete[2][:15])  # killed while writing line 3
    summary = predict_file(trained, str(source), str(out), resume=True)
    assert summary["predicted"] == 3 and summary["already_done"] == 2
    assert [json.loads(line)["line"] for line in out.read_text().splitlines()] == [1, 2, 3, 4, 5]


def test_a_student_without_a_prompt_form_is_prompted_in_the_prefix_form(trained_student, tmp_path, monkeypatch):
    import shutil

    from dsbs import inference
    from dsbs.checkpoint import read_meta
    from dsbs.models import load_student

    old = tmp_path / "old-student"
    shutil.copytree(trained_student, old)
    meta = read_meta(old)
    assert meta.pop("prompt_form") == "suffix"
    (old / "dsbs.json").write_text(json.dumps(meta))  # as students trained before the suffix form
    forms = []
    encode = inference.encode_prompt
    monkeypatch.setattr(inference, "encode_prompt", lambda *a, **k: forms.append(a[5]) or encode(*a, **k))
    model, tokenizer = load_student(str(old))
    inference.predict(model, tokenizer, read_meta(old), ["2 boxes of 3?"])
    inference.predict(model, tokenizer, read_meta(trained_student), ["2 boxes of 3?"])
    assert forms == ["prefix", "suffix"]


def test_bf16_inference_loads_bf16_weights_and_says_so(trained):
    import torch

    from dsbs.models import load_student

    model, _ = load_student(trained, for_inference=True, precision="bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ok = run_cli("evaluate", "--model", trained, "--task", "demo", "--limit", "4", "--precision", "bf16")
    assert ok.returncode == 0, ok.stderr
    metrics = json.loads(ok.stdout)
    assert metrics["precision"] == "bf16" and metrics["n"] == 4


@pytest.mark.parametrize("family", ["causal", "seq2seq"])
def test_bf16_mixed_keeps_the_residual_stream_in_fp32_and_the_answers(well_trained_students, family):
    import torch

    from dsbs.checkpoint import read_meta
    from dsbs.inference import predict
    from dsbs.models import load_student

    student = well_trained_students[family]
    models = {p: load_student(student, for_inference=True, precision=p) for p in ("fp32", "bf16", "bf16-mixed")}
    mixed, tokenizer = models["bf16-mixed"]
    linears = [m for m in mixed.modules() if isinstance(m, torch.nn.Linear)]
    assert {m.weight.dtype for m in linears if m is not mixed.get_output_embeddings()} == {torch.bfloat16}
    assert mixed.get_output_embeddings().weight.dtype == mixed.get_input_embeddings().weight.dtype == torch.float32
    batch = tokenizer(["3 bags of 4 apples, then 2 more: how many?"], return_tensors="pt")
    if family == "seq2seq":
        batch["decoder_input_ids"] = torch.tensor([[mixed.config.decoder_start_token_id]])
    with torch.inference_mode():
        logits = {p: m(**batch).logits for p, (m, _) in models.items()}
    assert logits["bf16-mixed"].dtype == torch.float32 and logits["bf16"].dtype == torch.bfloat16
    error = {p: (logits[p].float() - logits["fp32"]).abs().max().item() for p in ("bf16", "bf16-mixed")}
    assert 0 < error["bf16-mixed"] < error["bf16"], error
    inputs = [e.input for e in demo.load("test")[:8]]
    answers = {p: predict(m, tok, read_meta(student), inputs) for p, (m, tok) in models.items() if p != "bf16"}
    assert answers["bf16-mixed"] == answers["fp32"]


def test_rows_without_a_gold_label_are_left_out_of_the_score_and_none_at_all_stops(trained, tmp_path, capsys):
    """Before: a test row without a gold label counted as wrong, so a test file whose label column had another
    name scored 0.0 without a word (and a row with only a teacher label was scored against it)."""
    from dsbs.errors import DataError

    own = tmp_path / "own.jsonl"
    own.write_text('{"input": "1 box of 2?", "label": "2"}\n')
    test = tmp_path / "test.jsonl"
    test.write_text('{"input": "2 boxes of 5?", "label": "10"}\n{"input": "3 boxes of 1?", "teacher_label": "3"}\n'
                    '{"input": "1 box of 4?", "label": "4"}\n')
    metrics = evaluate(trained, TaskConfig(task=str(own), test_file=str(test)), split="test")
    assert metrics["n"] == 2 and metrics["left_out_unlabelled"] == 1 and len(metrics["correct_vector"]) == 2
    assert f"1 of 3 rows have no gold label and are left out of the score (the first: {test}:2)" in (
        capsys.readouterr().err)
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text('{"input": "2 boxes of 5?", "answer": "10"}\n')
    with pytest.raises(DataError, match=r"no row has a gold label to score against \(the label: field 'label' "
                                        r"\(--label-field; the fields are: input, answer\)"):
        evaluate(trained, TaskConfig(task=str(own), test_file=str(renamed)), split="test")


def test_predict_keeps_each_rows_id_and_resumes_only_into_the_same_input(trained, tmp_path):
    """Before: a CSV row with a quoted line break was numbered by its last line, rows' ids were dropped, and
    --resume with another input file skipped its first lines as done."""
    from dsbs.errors import DataError
    from dsbs.predict import predict_file

    source = tmp_path / "in.csv"
    source.write_text('id,input\nr1,"2 boxes\nof 5?"\nr2,3 boxes of 1?\n')
    out = tmp_path / "out.jsonl"
    predict_file(trained, str(source), str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["line"], r["id"], r["input"]) for r in rows] == [(2, "r1", "2 boxes\nof 5?"), (4, "r2", "3 boxes of 1?")]
    other = tmp_path / "other.csv"
    other.write_text('id,input\nr1,"2 boxes\nof 5?"\nr2,7 boxes of 7?\nr3,1 box of 1?\n')
    with pytest.raises(DataError, match="line 4 was answered for another input"):
        predict_file(trained, str(other), str(out), resume=True)
    broken = tmp_path / "broken.csv"
    broken.write_bytes(b"input\n2 boxes of 5?\n" + b"caf\xe9 boxes\n" * 3)
    with pytest.raises(DataError, match=r"broken.csv:3: not valid UTF-8"):
        predict_file(trained, str(broken), str(tmp_path / "b.jsonl"), skip_bad_lines=True)
