"""dsbs export: a student converted for CTranslate2 answers like the transformers student, through the
same predict / evaluate paths."""

import json

import pytest

from dsbs.tasks import demo
from tests.conftest import run_dsbs

pytest.importorskip("ctranslate2")


def answers(model_dir: str, inputs: list[str], with_rationale: bool) -> list[dict]:
    from dsbs.checkpoint import read_meta
    from dsbs.inference import predict
    from dsbs.models import load_student

    model, tokenizer = load_student(model_dir, for_inference=True)
    return predict(model, tokenizer, read_meta(model_dir), inputs, with_rationale=with_rationale, batch_size=4)


@pytest.mark.parametrize("family", ["causal", "seq2seq"])
def test_a_float32_export_gives_the_same_greedy_answers(family, well_trained_students, tmp_path):
    from dsbs.engines import engine_of, export

    student = well_trained_students[family]
    export(student, str(tmp_path / "ct2"), quantization="float32")
    assert engine_of(tmp_path / "ct2") == "ctranslate2" and engine_of(student) is None
    inputs = [e.input for e in demo.load("test")[:12]]
    assert answers(str(tmp_path / "ct2"), inputs, True) == answers(student, inputs, True)
    card = (tmp_path / "ct2" / "README.md").read_text()
    assert "Exported for an inference engine" in card and "float32" in card


def test_an_int8_export_is_served_by_evaluate_and_predict(trained_student, tmp_path):
    from dsbs.engines import export

    export(trained_student, str(tmp_path / "int8"), quantization="int8")
    inputs = [e.input for e in demo.load("test")[:12]]
    same = sum(a == b for a, b in zip(answers(str(tmp_path / "int8"), inputs, False),
                                      answers(trained_student, inputs, False), strict=True))
    print(f"int8 agreement with transformers on 12 inputs: {same}/12")  # a 2-layer toy: no threshold to hold
    exported = str(tmp_path / "int8")
    metrics = json.loads(run_dsbs("evaluate", "--model", exported, "--task", "demo", "--limit", "4").stdout)
    assert metrics["n"] == 4 and metrics["method"] == "dsbs"
    source = tmp_path / "in.jsonl"
    source.write_text('{"input": "2 boxes of 5?"}\n')
    run_dsbs("predict", "--model", exported, "--input", str(source), "--output", str(tmp_path / "o.jsonl"))
    assert json.loads((tmp_path / "o.jsonl").read_text())["line"] == 1
    refused = run_dsbs("train", "--task", "demo", "--student", exported, "--output", str(tmp_path / "r"), check=False)
    assert refused.returncode == 2 and "it answers, it does not train" in refused.stderr
    bf16 = run_dsbs("evaluate", "--model", exported, "--task", "demo", "--precision", "bf16", check=False)
    assert bf16.returncode == 2 and "computes in the type it was exported in" in bf16.stderr
