"""Inference engines: `dsbs export` writes a student for CTranslate2, llama.cpp or ONNX Runtime, and
the exported directory answers through the same predict / evaluate / serve paths (the engine is
read from its dsbs.json).

CTranslate2 runs decoder-only students (Llama-style: SmolLM2) and T5/BART-style seq2seq students
on CPU with int8, bfloat16 or float32 weights; llama.cpp runs Llama-style decoder-only students
from a GGUF file (float32, bfloat16, or int8 as Q8_0); ONNX Runtime runs any seq2seq student,
BERT2BERT (the MiniLM student) included, which CTranslate2 cannot convert. All take prompts encoded
exactly as for transformers (as token pieces or token ids), so a student sees the tokens it was
trained on.
"""

import json
import os
import shutil
import warnings
from pathlib import Path

from dsbs.checkpoint import META_FILE, model_card, read_meta
from dsbs.errors import ConfigError, MissingDependency
from dsbs.files import replace_dir, write_atomic

ENGINE_DIR = "ctranslate2"
GGUF_FILE = "model.gguf"
ONNX_FILES = ("encoder.onnx", "decoder.onnx", "decoder_step.onnx")
ENGINES = ("ctranslate2", "llama.cpp", "onnx")


def export(model_dir: str, output: str, engine: str = "ctranslate2", quantization: str = "float32") -> dict:
    """Convert the student in ``model_dir`` for ``engine`` into ``output`` (tokenizer, dsbs.json, card beside it)."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}: dsbs exports to {', '.join(ENGINES)}")
    from transformers import AutoTokenizer

    meta = read_meta(model_dir)
    target = Path(output)
    staging = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        WRITERS[engine](model_dir, staging, quantization)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(staging)
    exported = {**meta, "engine": {"name": engine, "quantization": quantization, "exported_from": str(model_dir)}}
    write_atomic(staging / META_FILE, json.dumps(exported, indent=2))
    write_atomic(staging / "README.md", model_card(exported) + export_note(exported))
    replace_dir(staging, target)
    return {"output": str(target), "engine": engine, "quantization": quantization}


def write_ctranslate2(model_dir: str, staging: Path, quantization: str) -> None:
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        raise MissingDependency("dsbs export needs CTranslate2: pip install 'dsbs[ctranslate2]'") from None
    try:
        TransformersConverter(str(model_dir)).convert(str(staging / ENGINE_DIR), quantization=quantization, force=True)
    except (ValueError, NotImplementedError) as err:
        raise ConfigError(f"CTranslate2 cannot convert {model_dir}: {err}") from None
    engine_config = staging / ENGINE_DIR / "config.json"
    settings = json.loads(engine_config.read_text())
    for token in ("bos_token", "unk_token"):  # CTranslate2 refuses a null special token; a tokenizer may lack one
        if settings.get(token, "") is None:
            settings[token] = settings["eos_token"]
    write_atomic(engine_config, json.dumps(settings, indent=2))


EXAMPLES = {
    "ctranslate2": ["import ctranslate2, transformers",
                    'generator = ctranslate2.Generator("DIR/ctranslate2", compute_type="default")',
                    'tokenizer = transformers.AutoTokenizer.from_pretrained("DIR")'],
    "llama.cpp": ["import llama_cpp", 'llm = llama_cpp.Llama("DIR/model.gguf")  # or: llama-server -m DIR/model.gguf',
                  "# prompts as dsbs encodes them (dsbs.json's prompt_form; suffix: input, newline, [label], newline)"],
    "onnx": ["import onnxruntime",
             'encoder = onnxruntime.InferenceSession("DIR/encoder.onnx")  # input_ids, attention_mask -> hidden states',
             'first = onnxruntime.InferenceSession("DIR/decoder.onnx")  # decoder_input_ids, encoder_hidden_states,',
             "#   attention_mask -> next token's logits, past, cross (start: decoder_start_token_id)",
             'step = onnxruntime.InferenceSession("DIR/decoder_step.onnx")  # one new token, ..., past, cross',
             "#   -> next token's logits, past"],
}


def export_note(meta: dict) -> str:
    engine = meta["engine"]
    return "\n".join([
        "## Exported for an inference engine", "",
        f"This directory holds the student converted for **{engine['name']}** with **{engine['quantization']}** "
        f"weights (`dsbs export`, from `{engine['exported_from']}`). Answer with `dsbs predict|evaluate|serve "
        "--model DIR`, or with the engine itself:", "", "```python", *EXAMPLES[engine["name"]], "```", ""])


def engine_of(model_dir: str | Path) -> str | None:
    """The engine an exported student is for, or None for a plain transformers student."""
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        return None
    return (json.loads(path.read_text()).get("engine") or {}).get("name")


class EngineStudent:
    """What dsbs.inference needs of an exported student besides its ``greedy`` search: its tokenizer,
    a config saying whether it is seq2seq, a device, and eval()."""

    def __init__(self, model_dir: str, seq2seq: bool):
        from transformers import AutoTokenizer

        self.seq2seq = seq2seq
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.config = type("Config", (), {"is_encoder_decoder": seq2seq})()
        self.device = "cpu"
        prepare_tokenizer(self.tokenizer, self)

    def eval(self):
        return self


class CT2Student(EngineStudent):
    """A CTranslate2 student: CTranslate2's batched greedy search."""

    def __init__(self, model_dir: str, threads: int = 0):
        try:
            import ctranslate2
        except ImportError:
            raise MissingDependency("this student was exported for CTranslate2: pip install 'dsbs[ctranslate2]'") \
                from None
        super().__init__(model_dir, bool(read_meta(model_dir).get("seq2seq")))
        kind = ctranslate2.Translator if self.seq2seq else ctranslate2.Generator
        # "default": compute in the type the weights were exported in ("auto" would pick the fastest the CPU
        # has, int8 even for a float32 export); one thread per core (CTranslate2's default of 4 oversubscribes)
        self.engine = kind(str(Path(model_dir) / ENGINE_DIR), device="cpu", compute_type="default",
                           intra_threads=threads or os.cpu_count() or 1)

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


GGUF_TYPES = {"float32": "F32", "bfloat16": "BF16", "int8": "Q8_0"}


def write_gguf(model_dir: str, staging: Path, quantization: str) -> None:
    """A Llama-style student as one GGUF file for llama.cpp: its hyperparameters, its BPE vocabulary
    and merges, and its weights (norms stay float32; q and k rows reordered for llama.cpp's rotary
    layout, as llama.cpp's own converter does)."""
    try:
        import gguf
    except ImportError:
        raise MissingDependency("a llama.cpp export writes GGUF: pip install 'dsbs[smollm2]' (or gguf)") from None
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if quantization not in GGUF_TYPES:
        raise ConfigError(f"a llama.cpp export takes --quantization {', '.join(GGUF_TYPES)}, not {quantization}")
    config = AutoConfig.from_pretrained(model_dir)
    rope = getattr(config, "rope_parameters", None) or {"rope_theta": getattr(config, "rope_theta", 10000.0)}
    if config.model_type != "llama" or rope.get("rope_type", "default") != "default":
        raise ConfigError(f"a llama.cpp export covers Llama-style decoder-only students with plain rotary positions "
                          f"(SmolLM2, Llama 2): {model_dir} is {config.model_type}")
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer = gguf.GGUFWriter(str(staging / GGUF_FILE), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    add_vocabulary(writer, AutoTokenizer.from_pretrained(model_dir), config.vocab_size)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    kind = getattr(gguf.GGMLQuantizationType, GGUF_TYPES[quantization])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reads the output head from the embedding when there is none
        data = tensor.numpy()
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            data = rotary_rows(data, heads if "q_proj" in name else kv_heads)
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if data.ndim == 1 or kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(target, data)
        else:
            writer.add_tensor(target, gguf.quants.quantize(data, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def rotary_rows(weight, heads: int):
    """q/k projection rows from transformers' rotate-half order to llama.cpp's interleaved pairs."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2) \
        .reshape(weight.shape)


def add_vocabulary(writer, tokenizer, vocab_size: int) -> None:
    """A byte-level BPE tokenizer's tokens, types and merges (llama.cpp's "gpt2" model). dsbs feeds
    llama.cpp token ids it encoded itself, so llama.cpp's own pre-tokenizer never runs on a prompt."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if spec["type"] != "BPE":
        raise ConfigError(f"a llama.cpp export needs a BPE tokenizer, this one is {spec['type']}")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for token, i in tokenizer.get_vocab().items():
        tokens[i], types[i] = token, gguf.TokenType.NORMAL
    for i, added in tokenizer.added_tokens_decoder.items():
        types[i] = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["merges"]])
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_add_bos_token(False)


class LlamaCppStudent(EngineStudent):
    """A llama.cpp student (GGUF, decoder-only): greedy search one prompt at a time."""

    def __init__(self, model_dir: str, threads: int = 0):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise MissingDependency("this student was exported for llama.cpp: pip install 'dsbs[llama]'") from None
        super().__init__(model_dir, seq2seq=False)
        meta = read_meta(model_dir)
        context = meta["max_input_tokens"] + max(meta["max_target_tokens"], meta["label_max_tokens"]) + 16
        self.llm = Llama(model_path=str(Path(model_dir) / GGUF_FILE), n_ctx=context, n_batch=context,
                         n_threads=threads or os.cpu_count() or 1, verbose=False)

    def greedy(self, prompts: list[list[int]], decoder_prefix: list[int], max_new_tokens: int) -> list[list[int]]:
        """Token ids generated after each prompt, EOS excluded (one prompt at a time: llama.cpp's Python API)."""
        results = []
        for prompt in prompts:
            ids: list[int] = []
            if max_new_tokens > 0:
                for token in self.llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
                    if token == self.tokenizer.eos_token_id:
                        break
                    ids.append(token)
                    if len(ids) == max_new_tokens:
                        break
            results.append(ids)
        return results


ONNX_TYPES = ("float32", "int8")


def write_onnx(model_dir: str, staging: Path, quantization: str) -> None:
    """A seq2seq student as three ONNX graphs (PyTorch's exporter, exact to fp32 rounding): the encoder;
    the decoder's first pass over the tokens it starts from, giving the next token's logits and the
    attention keys and values of this pass (self) and of the encoder's states (cross); and a decoder
    step that reads one new token against those caches. int8 quantises the matrix weights after export
    (ONNX Runtime's dynamic quantisation, scales per output channel)."""
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError:
        raise MissingDependency("an ONNX export needs ONNX Runtime: pip install 'dsbs[onnx]'") from None
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    if quantization not in ONNX_TYPES:
        raise ConfigError(f"an ONNX export takes --quantization {', '.join(ONNX_TYPES)}, not {quantization}")
    if not getattr(AutoConfig.from_pretrained(model_dir), "is_encoder_decoder", False):
        raise ConfigError(f"an ONNX export covers seq2seq students (MiniLM, T5, BART): {model_dir} is decoder-only; "
                          "export it with --format ctranslate2 or llama.cpp")
    # eager attention: its masking traces to plain tensor ops for every architecture
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    model.generation_config.save_pretrained(staging)  # the decoder's start token
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0]])  # example inputs to trace with; every size stays dynamic
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    encoder, first, step = graph_modules(model)
    with torch.no_grad():
        states = encoder(ids, mask)
        _, past, cross = first(ids[:, :3], states, mask)
    decoder = ["decoder_input_ids", "encoder_hidden_states", "attention_mask"]
    axes = {"input_ids": {0: "batch", 1: "source"}, "attention_mask": {0: "batch", 1: "source"},
            "encoder_hidden_states": {0: "batch", 1: "source"}, "decoder_input_ids": {0: "batch", 1: "new"},
            "past": {2: "batch", 4: "written"}, "cross": {2: "batch", 4: "source"}}
    graphs = {"encoder.onnx": (encoder, (ids, mask), ["input_ids", "attention_mask"]),
              "decoder.onnx": (first, (ids[:, :3], states, mask), decoder),
              "decoder_step.onnx": (step, (ids[:, :1], states, mask, past, cross), decoder + ["past", "cross"])}
    for name, (module, args, inputs) in graphs.items():
        with warnings.catch_warnings():  # inputs sharing a dimension keep the first one's name: intended
            warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape")
            program = torch.onnx.export(module, args, input_names=inputs, dynamic_shapes=[axes[i] for i in inputs],
                                        dynamo=True, verbose=False)
        program.save(str(staging / name), external_data=False)
        if quantization == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # per output channel: on the MiniLM SVAMP student 0.805 of the answers stayed the same, 0.655 per tensor
            quantize_dynamic(staging / name, staging / name, weight_type=QuantType.QInt8, per_channel=True)


def graph_modules(model):
    """The graphs of an ONNX export as modules over ``model``: encoder, decoder's first pass, decoder step.

    The caches travel between the decoder graphs as two tensors (layers, key|value, batch, heads, length,
    head size), rebuilt into transformers' cache inside the graph."""
    import torch
    from transformers import DynamicCache, EncoderDecoderCache
    from transformers.modeling_outputs import BaseModelOutput

    # EncoderDecoderModel hands decoder_* arguments to its decoder: BERT's head then projects the last position only
    keep_last = {"decoder_logits_to_keep": 1} if model.config.model_type == "encoder-decoder" else {}

    def stacked(cache):
        return torch.stack([torch.stack([layer.keys, layer.values]) for layer in cache.layers])

    def rebuilt(tensor):
        cache = DynamicCache()
        for layer in range(tensor.shape[0]):
            cache.update(tensor[layer, 0], tensor[layer, 1], layer)
        return cache

    def decode(decoder_input_ids, encoder_hidden_states, attention_mask, cache):
        return model(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden_states),
                     attention_mask=attention_mask, decoder_input_ids=decoder_input_ids, past_key_values=cache,
                     use_cache=True, **keep_last)

    class Encoder(torch.nn.Module):
        def __init__(self):  # the model as a submodule, so that its weights become the graph's initializers
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    class First(Encoder):
        def forward(self, decoder_input_ids, encoder_hidden_states, attention_mask):
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            out = decode(decoder_input_ids, encoder_hidden_states, attention_mask, cache)
            caches = out.past_key_values
            return out.logits[:, -1], stacked(caches.self_attention_cache), stacked(caches.cross_attention_cache)

    class Step(Encoder):
        def forward(self, decoder_input_ids, encoder_hidden_states, attention_mask, past, cross):
            cache = EncoderDecoderCache(rebuilt(past), rebuilt(cross))
            cache.is_updated = dict.fromkeys(range(cross.shape[0]), True)  # the cross keys and values are given
            out = decode(decoder_input_ids, encoder_hidden_states, attention_mask, cache)
            return out.logits[:, -1], stacked(out.past_key_values.self_attention_cache)

    return Encoder(), First(), Step()


class OnnxStudent(EngineStudent):
    """An ONNX Runtime seq2seq student: the encoder once per batch, the decoder's first pass, then greedy
    steps of one token over the rows still writing, against the cached keys and values."""

    def __init__(self, model_dir: str, threads: int = 0):
        try:
            import onnxruntime
        except ImportError:
            raise MissingDependency("this student was exported for ONNX Runtime: pip install 'dsbs[onnx]'") from None
        from transformers import GenerationConfig

        super().__init__(model_dir, seq2seq=True)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        self.encoder, self.decoder, self.step = (
            onnxruntime.InferenceSession(str(Path(model_dir) / name), options, providers=["CPUExecutionProvider"])
            for name in ONNX_FILES)
        self.start_id = GenerationConfig.from_pretrained(model_dir).decoder_start_token_id

    def encode(self, prompts: list[list[int]]):
        """(encoder states, attention mask) of right-padded prompts."""
        import numpy as np

        width = max(map(len, prompts))
        ids = np.array([p + [self.tokenizer.pad_token_id] * (width - len(p)) for p in prompts], dtype=np.int64)
        mask = np.array([[1] * len(p) + [0] * (width - len(p)) for p in prompts], dtype=np.int64)
        return self.encoder.run(None, {"input_ids": ids, "attention_mask": mask})[0], mask

    def first_pass(self, decoder_ids, states, mask):
        """(next-token logits, self cache, cross cache) after the decoder reads ``decoder_ids``."""
        import numpy as np

        return self.decoder.run(None, {"decoder_input_ids": np.asarray(decoder_ids, dtype=np.int64),
                                       "encoder_hidden_states": states, "attention_mask": mask})

    def next_token_logits(self, prompts: list[tuple[list[int], list[int]]], written: list[list[int]]):
        """Logits of the token after each (prompt ids, decoder prefix ids) and the tokens already written, as
        dsbs.inference.next_token_logits gives them for a transformers student (so --choices works here too)."""
        import torch

        states, mask = self.encode([p for p, _ in prompts])
        decoder = [[self.start_id] + prefix + w for (_, prefix), w in zip(prompts, written, strict=True)]
        return torch.from_numpy(self.first_pass(decoder, states, mask)[0])

    def greedy(self, prompts: list[list[int]], decoder_prefix: list[int], max_new_tokens: int) -> list[list[int]]:
        """Token ids generated after each prompt and ``decoder_prefix``, EOS excluded."""
        import numpy as np

        states, mask = self.encode(prompts)
        logits, past, cross = self.first_pass([[self.start_id] + decoder_prefix] * len(prompts), states, mask)
        results: list[list[int]] = [[] for _ in prompts]
        active = np.arange(len(prompts))  # rows that have not written EOS yet
        for step in range(max_new_tokens):
            tokens = logits.argmax(-1)
            going = tokens != self.tokenizer.eos_token_id
            for row, token in zip(active[going], tokens[going], strict=True):
                results[row].append(int(token))
            active, states, mask = active[going], states[going], mask[going]
            if not len(active) or step == max_new_tokens - 1:
                break
            logits, past = self.step.run(None, {"decoder_input_ids": tokens[going, None].astype(np.int64),
                                                "encoder_hidden_states": states, "attention_mask": mask,
                                                "past": past[:, :, going], "cross": cross[:, :, going]})
            cross = cross[:, :, going]
        return results


WRITERS = {"ctranslate2": write_ctranslate2, "llama.cpp": write_gguf, "onnx": write_onnx}


def prepare_tokenizer(tokenizer, model) -> None:
    """Padding needs a pad token; decoder-only generation needs padding on the left."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(model.config, "is_encoder_decoder", False):
        tokenizer.padding_side = "left"
