"""Tiny students built from configs, with a byte-level BPE tokenizer trained here in milliseconds."""

import os
from pathlib import Path

import pytest

from dsbs.tasks import demo

DATA_DIR = os.environ.get("DSBS_DATA_DIR")
needs_data = pytest.mark.skipif(not DATA_DIR, reason="set DSBS_DATA_DIR to the paper's data (../shared/datasets)")


def _tokenizer(seq2seq: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [t for e in demo.load("train") for t in (e.input, e.label,
                                                     e.rationale)] + ["[label] [rationale] So the answer is"]
    tok.train_from_iterator(texts, trainer)
    if seq2seq:  # T5-style: the encoder input and the target both end in </s>
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>",
                                                                                              tok.token_to_id("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_tiny_student(path: Path, seq2seq: bool, bert2bert: bool = False) -> Path:
    """A tiny Llama, or a tiny T5 (``seq2seq``), or a tiny BERT2BERT like the MiniLM student (``bert2bert``)."""
    import torch
    from transformers import (
        BertConfig,
        EncoderDecoderConfig,
        EncoderDecoderModel,
        LlamaConfig,
        LlamaForCausalLM,
        T5Config,
        T5ForConditionalGeneration,
    )

    torch.manual_seed(0)
    tokenizer = _tokenizer(seq2seq)
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if bert2bert:
        sizes = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
        config = EncoderDecoderConfig.from_encoder_decoder_configs(
            BertConfig(**sizes), BertConfig(**sizes, is_decoder=True, add_cross_attention=True))
        model = EncoderDecoderModel(config=config)
        for settings in (model.config, model.generation_config):
            settings.decoder_start_token_id = tokenizer.pad_token_id
            settings.pad_token_id, settings.eos_token_id = ids["pad_token_id"], ids["eos_token_id"]
    elif seq2seq:
        config = T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=8, num_layers=2, num_decoder_layers=2,
                          num_heads=4, decoder_start_token_id=tokenizer.pad_token_id,
                          dropout_rate=0.0, **ids)  # no dropout: runs on 1 and 2 processes stay comparable
        model = T5ForConditionalGeneration(config)
    else:
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             bos_token_id=tokenizer.eos_token_id, **ids)
        model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_causal(tmp_path_factory) -> str:
    return str(build_tiny_student(tmp_path_factory.mktemp("tiny-causal"), seq2seq=False))


@pytest.fixture(scope="session")
def tiny_seq2seq(tmp_path_factory) -> str:
    return str(build_tiny_student(tmp_path_factory.mktemp("tiny-t5"), seq2seq=True))


@pytest.fixture(scope="session")
def trained_student(tiny_causal, tmp_path_factory) -> str:
    """A tiny causal student after 3 dsbs steps on the demo task: the model/ directory `dsbs train` saves."""
    from dsbs.configs import TrainConfig
    from dsbs.tasks import TaskConfig
    from dsbs.train import train

    output = tmp_path_factory.mktemp("trained")
    train(TaskConfig(task="demo"), TrainConfig(student=tiny_causal, output=str(output), max_steps=3, batch_size=4,
                                               eval_limit=4, precision="fp32", max_input_tokens=64,
                                               max_target_tokens=32))
    return str(output / "model")


def well_trained(student: str, out) -> str:
    """A tiny student trained long enough that its greedy choices are not near-ties of random logits."""
    from dsbs.configs import TrainConfig
    from dsbs.tasks import TaskConfig
    from dsbs.train import train

    train(TaskConfig(task="demo"), TrainConfig(student=student, output=str(out), max_steps=60, batch_size=8, lr=5e-3,
                                               eval_limit=4, precision="fp32", max_input_tokens=64,
                                               max_target_tokens=32, keep_checkpoints=False))
    return str(out / "model")


@pytest.fixture(scope="session")
def well_trained_students(tiny_causal, tiny_seq2seq, tmp_path_factory) -> dict:
    return {"causal": well_trained(tiny_causal, tmp_path_factory.mktemp("causal")),
            "seq2seq": well_trained(tiny_seq2seq, tmp_path_factory.mktemp("t5"))}


@pytest.fixture(scope="session")
def well_trained_bert2bert(tmp_path_factory) -> str:
    student = build_tiny_student(tmp_path_factory.mktemp("tiny-bert2bert"), seq2seq=True, bert2bert=True)
    return well_trained(str(student), tmp_path_factory.mktemp("bert2bert"))


@pytest.fixture(params=["causal", "seq2seq"])
def tiny_student(request, tiny_causal, tiny_seq2seq) -> str:
    return tiny_causal if request.param == "causal" else tiny_seq2seq


def run_dsbs(*args: str, check: bool = True, **kwargs):
    """`python -m dsbs ARGS` in a fresh process: the CLI as a user runs it (stdout and stderr captured)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "dsbs", *args], capture_output=True, text=True, **kwargs)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result
