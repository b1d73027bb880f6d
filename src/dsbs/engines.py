"""Inference engines: `dsbs export` writes a student for CTranslate2, and the exported directory
answers through the same predict / evaluate / serve paths (the engine is read from its dsbs.json).

CTranslate2 runs decoder-only students (Llama-style: SmolLM2) and T5/BART-style seq2seq students
on CPU with int8, bfloat16 or float32 weights; its greedy search takes token pieces, so prompts are
encoded exactly as for transformers and converted to pieces.
"""

import json
import os
import shutil
from pathlib import Path

from dsbs.checkpoint import META_FILE, model_card, read_meta
from dsbs.errors import ConfigError, MissingDependency
from dsbs.files import replace_dir, write_atomic

ENGINE_DIR = "ctranslate2"


def export(model_dir: str, output: str, engine: str = "ctranslate2", quantization: str = "float32") -> dict:
    """Convert the student in ``model_dir`` for ``engine`` into ``output`` (tokenizer, dsbs.json, card beside it)."""
    if engine != "ctranslate2":
        raise ConfigError(f"unknown engine {engine!r}: ctranslate2 is the one dsbs exports to")
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        raise MissingDependency("dsbs export needs CTranslate2: pip install 'dsbs[ctranslate2]'") from None
    from transformers import AutoTokenizer

    meta = read_meta(model_dir)
    target = Path(output)
    staging = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        TransformersConverter(str(model_dir)).convert(str(staging / ENGINE_DIR), quantization=quantization, force=True)
    except (ValueError, NotImplementedError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise ConfigError(f"CTranslate2 cannot convert {model_dir}: {err}") from None
    engine_config = staging / ENGINE_DIR / "config.json"
    settings = json.loads(engine_config.read_text())
    for token in ("bos_token", "unk_token"):  # CTranslate2 refuses a null special token; a tokenizer may lack one
        if settings.get(token, "") is None:
            settings[token] = settings["eos_token"]
    write_atomic(engine_config, json.dumps(settings, indent=2))
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(staging)
    exported = {**meta, "engine": {"name": engine, "quantization": quantization, "exported_from": str(model_dir)}}
    write_atomic(staging / META_FILE, json.dumps(exported, indent=2))
    write_atomic(staging / "README.md", model_card(meta) + export_note(exported))
    replace_dir(staging, target)
    return {"output": str(target), "engine": engine, "quantization": quantization}


def export_note(meta: dict) -> str:
    engine = meta["engine"]
    return "\n".join([
        "## Exported for an inference engine", "",
        f"This directory holds the student converted for **{engine['name']}** with **{engine['quantization']}** "
        f"weights (`dsbs export`, from `{engine['exported_from']}`). Answer with `dsbs predict|evaluate|serve "
        "--model DIR`, or with the engine itself:", "", "```python",
        "import ctranslate2, transformers",
        'generator = ctranslate2.Generator("DIR/ctranslate2", compute_type="default")',
        'tokenizer = transformers.AutoTokenizer.from_pretrained("DIR")', "```", ""])


def engine_of(model_dir: str | Path) -> str | None:
    """The engine an exported student is for, or None for a plain transformers student."""
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        return None
    return (json.loads(path.read_text()).get("engine") or {}).get("name")


class CT2Student:
    """A CTranslate2 student with what dsbs.inference needs: config, device and greedy search."""

    def __init__(self, model_dir: str, threads: int = 0):
        try:
            import ctranslate2
        except ImportError:
            raise MissingDependency("this student was exported for CTranslate2: pip install 'dsbs[ctranslate2]'") \
                from None
        from transformers import AutoTokenizer

        from dsbs.models import prepare_tokenizer

        meta = read_meta(model_dir)
        self.seq2seq = bool(meta.get("seq2seq"))
        kind = ctranslate2.Translator if self.seq2seq else ctranslate2.Generator
        # "default": compute in the type the weights were exported in ("auto" would pick the fastest the CPU
        # has, int8 even for a float32 export); one thread per core (CTranslate2's default of 4 oversubscribes)
        self.engine = kind(str(Path(model_dir) / ENGINE_DIR), device="cpu", compute_type="default",
                           intra_threads=threads or os.cpu_count() or 1)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.config = type("Config", (), {"is_encoder_decoder": self.seq2seq})()
        self.device = "cpu"
        prepare_tokenizer(self.tokenizer, self)

    def eval(self):
        return self

    def greedy(self, prompts: list[list[int]], decoder_prefix: list[int], max_new_tokens: int) -> list[list[int]]:
        """Token ids generated after each prompt (and after ``decoder_prefix`` for seq2seq), EOS excluded."""
        pieces = [self.tokenizer.convert_ids_to_tokens(p) for p in prompts]
        eos = self.tokenizer.eos_token
        if self.seq2seq:
            prefix = self.tokenizer.convert_ids_to_tokens(decoder_prefix) if decoder_prefix else None
            results = self.engine.translate_batch(pieces, target_prefix=[prefix] * len(pieces) if prefix else None,
                                                  beam_size=1, max_decoding_length=max_new_tokens + len(decoder_prefix),
                                                  end_token=eos)
            out = [r.hypotheses[0][len(decoder_prefix):] for r in results]
        else:
            results = self.engine.generate_batch(pieces, max_length=max_new_tokens, sampling_topk=1, beam_size=1,
                                                 end_token=eos, include_prompt_in_result=False)
            out = [r.sequences[0] for r in results]
        return [self.tokenizer.convert_tokens_to_ids(tokens) for tokens in out]
