"""dsbs export: a student converted for CTranslate2 or llama.cpp answers like the transformers student,
through the same predict / evaluate paths."""

import importlib.util
import json

import pytest

from dsbs.tasks import demo
from tests.conftest import run_dsbs

needs_ct2 = pytest.mark.skipif(importlib.util.find_spec("ctranslate2") is None, reason="pip install -e '.[dev]'")
needs_gguf = pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="pip install -e '.[dev]'")
needs_onnx = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="pip install -e '.[dev]'")


def answers(model_dir: str, inputs: list[str], with_rationale: bool) -> list[dict]:
    from dsbs.checkpoint import read_meta
    from dsbs.inference import predict
    from dsbs.models import load_student

    model, tokenizer = load_student(model_dir, for_inference=True)
    return predict(model, tokenizer, read_meta(model_dir), inputs, with_rationale=with_rationale, batch_size=4)


@needs_ct2
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
    assert "Load with plain transformers" not in card  # no transformers weights in an export


@needs_ct2
def test_an_int8_export_is_served_by_evaluate_and_predict(trained_student, tmp_path):
    from dsbs.engines import export

    export(trained_student, str(tmp_path / "int8"), quantization="int8")
    inputs = [e.input for e in demo.load("test")[:12]]
    same = sum(a == b for a, b in zip(answers(str(tmp_path / "int8"), inputs, False),
                                      answers(trained_student, inputs, False), strict=True))
    # int8 weights may flip an answer whose logits are nearly tied, not most of them (11 of 12 when written)
    assert same >= 8, f"int8 agreement with transformers on 12 inputs: {same}/12"
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


@needs_gguf
def test_a_gguf_export_holds_the_students_weights_in_llama_cpps_layout(well_trained_students, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from dsbs.engines import engine_of, export
    from dsbs.errors import ConfigError

    student = well_trained_students["causal"]
    for quantization in ("float32", "int8"):
        export(student, str(tmp_path / quantization), engine="llama.cpp", quantization=quantization)
    card = (tmp_path / "int8" / "README.md").read_text()
    assert engine_of(tmp_path / "int8") == "llama.cpp" and "**llama.cpp** with **int8**" in card
    # transformers reads GGUF back, undoing llama.cpp's rotary row order: every weight comes back as it was
    ours = AutoModelForCausalLM.from_pretrained(student).state_dict()
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "float32"), gguf_file="model.gguf").state_dict()
    assert set(back) == set(ours) and all(torch.equal(back[name], ours[name]) for name in ours)
    sizes = {q: (tmp_path / q / "model.gguf").stat().st_size for q in ("float32", "int8")}
    assert sizes["int8"] < 0.4 * sizes["float32"]
    with pytest.raises(ConfigError, match="Llama-style decoder-only"):
        export(well_trained_students["seq2seq"], str(tmp_path / "t5"), engine="llama.cpp")
    assert not (tmp_path / "t5").exists()


def llama_cpp_runs(gguf: str) -> bool:
    """Whether llama.cpp completes a prompt here: some builds crash on some CPUs (a source build of
    llama-cpp-python 0.3.36 segfaults on a Xeon with AMX); the probe runs in its own process."""
    import subprocess
    import sys

    probe = f"from llama_cpp import Llama\nLlama(model_path={gguf!r}, n_ctx=64, verbose=False).eval([1, 2, 3])"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=300).returncode == 0


@needs_gguf
def test_a_gguf_export_gives_the_same_greedy_answers(well_trained_students, tmp_path):
    pytest.importorskip("llama_cpp", reason="pip install -e '.[llama]'")
    from dsbs.engines import export

    student = well_trained_students["causal"]
    export(student, str(tmp_path / "gguf"), engine="llama.cpp", quantization="float32")
    if not llama_cpp_runs(str(tmp_path / "gguf" / "model.gguf")):
        pytest.skip("llama.cpp cannot run a model on this machine")
    inputs = [e.input for e in demo.load("test")[:12]]
    assert answers(str(tmp_path / "gguf"), inputs, True) == answers(student, inputs, True)


@pytest.fixture(scope="module")
def onnx_exports(well_trained_bert2bert, well_trained_students, tmp_path_factory) -> dict:
    """{family: (transformers student, its float32 ONNX export)} for a tiny BERT2BERT and a tiny T5."""
    from dsbs.engines import export

    students = {"bert2bert": well_trained_bert2bert, "t5": well_trained_students["seq2seq"]}
    return {family: (student, export(student, str(tmp_path_factory.mktemp(family) / "onnx"), engine="onnx")["output"])
            for family, student in students.items()}


@needs_onnx
@pytest.mark.parametrize("family", ["bert2bert", "t5"])
def test_an_onnx_export_gives_the_same_greedy_answers(family, onnx_exports):
    from dsbs.engines import engine_of

    student, exported = onnx_exports[family]
    assert engine_of(exported) == "onnx"
    inputs = [e.input for e in demo.load("test")[:12]]
    answered = answers(exported, inputs, True)
    assert answered == answers(student, inputs, True)
    assert len({a["rationale"] for a in answered}) > 1  # answers that tell inputs apart, not one string for all


@needs_onnx
def test_an_onnx_export_chooses_labels_as_the_transformers_student_does(onnx_exports):
    from tests.test_inference import greedy_and_chosen

    student, exported = onnx_exports["bert2bert"]
    # the greedy answer, one that begins like it (read on to EOS), and one it would not write
    greedy, chosen = greedy_and_chosen(exported, lambda g: (f"{g} and 7", g, "zebra"))
    assert any(greedy) and chosen == greedy
    assert greedy_and_chosen(student, lambda g: (f"{g}0", "zebra")) == \
        greedy_and_chosen(exported, lambda g: (f"{g}0", "zebra"))


@needs_onnx
def test_an_int8_onnx_export_agrees_and_is_evaluated(well_trained_bert2bert, tmp_path):
    import onnx

    from dsbs.engines import export

    export(well_trained_bert2bert, str(tmp_path / "int8"), engine="onnx", quantization="int8")
    for graph in ("encoder.onnx", "decoder.onnx"):  # matrix products in int8
        assert "MatMulInteger" in {node.op_type for node in onnx.load(tmp_path / "int8" / graph).graph.node}
    inputs = [e.input for e in demo.load("test")[:12]]
    same = sum(a == b for a, b in zip(answers(str(tmp_path / "int8"), inputs, False),
                                      answers(well_trained_bert2bert, inputs, False), strict=True))
    assert same >= 8, f"int8 agreement with transformers on 12 inputs: {same}/12"  # 12 of 12 when written
    exported = str(tmp_path / "int8")
    metrics = json.loads(run_dsbs("evaluate", "--model", exported, "--task", "demo", "--limit", "4").stdout)
    assert metrics["n"] == 4
    assert "int8" in (tmp_path / "int8" / "README.md").read_text()


@needs_onnx
def test_an_onnx_export_refuses_a_decoder_only_student(trained_student, tmp_path):
    from dsbs.engines import export
    from dsbs.errors import ConfigError

    with pytest.raises(ConfigError, match="covers seq2seq students"):
        export(trained_student, str(tmp_path / "onnx"), engine="onnx")
    assert not (tmp_path / "onnx").exists()
