"""Loss parity (fp32): our target-only loss equals transformers' built-in loss on the same batch, and
dsbs's shared pass gives the same per-task loss sums and gradients as separate passes."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from dsbs.batching import LABEL_TASK, RATIONALE_TASK, collate, collate_shared, encode_item, encode_shared, items_for
from dsbs.models import is_seq2seq, prepare_tokenizer
from dsbs.tasks import demo
from dsbs.train import seq2seq_loss_sum, shared_loss_sums


def load(path: str):
    tokenizer = AutoTokenizer.from_pretrained(path)
    loader = AutoModelForSeq2SeqLM if "t5" in open(f"{path}/config.json").read() else AutoModelForCausalLM
    model = loader.from_pretrained(path).eval()
    prepare_tokenizer(tokenizer, model)
    return model, tokenizer, is_seq2seq(model.config)


@pytest.mark.parametrize("form", ["prefix", "suffix"])
@pytest.mark.parametrize("task_id", [LABEL_TASK, RATIONALE_TASK])
def test_target_loss_matches_the_reference_loss(tiny_student, task_id, form):
    model, tokenizer, seq2seq = load(tiny_student)
    start = model.config.decoder_start_token_id if seq2seq else None
    features = [encode_item(tokenizer, item, seq2seq, 64, 48, form=form, decoder_start=start)
                for e in demo.load("train")[:6] for item in items_for(e, "dsbs") if item.task == task_id]
    with torch.no_grad():
        if seq2seq:
            ours = seq2seq_loss_sum(model, collate(features, tokenizer.pad_token_id, True))
        else:
            ours = shared_loss_sums(model, collate_shared(features, tokenizer.pad_token_id, False), False)[task_id]
        reference = reference_loss_sum(model, features, tokenizer.pad_token_id, seq2seq)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def reference_loss_sum(model, features: list[dict], pad: int, seq2seq: bool):
    """transformers' own loss of one task's items, padded as separate items, times their target tokens."""
    batch = collate(features, pad, seq2seq)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs, labels=batch["labels"]).loss * sum(n for f in features for n in f["tasks"].values())


def gradients(model) -> dict:
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def test_shared_pass_equals_separate_passes(tiny_student):
    model, tokenizer, seq2seq = load(tiny_student)
    start = model.config.decoder_start_token_id if seq2seq else None
    groups = [items_for(e, "dsbs") for e in demo.load("train")[:6]]
    weights = {LABEL_TASK: 0.3, RATIONALE_TASK: 0.7}

    separate = {}
    for task in weights:
        part = [encode_item(tokenizer, item, seq2seq, 64, 48, form="suffix", decoder_start=start)
                for g in groups for item in g if item.task == task]
        separate[task] = reference_loss_sum(model, part, tokenizer.pad_token_id, seq2seq)
    sum(weights[t] * loss for t, loss in separate.items()).backward()
    expected = gradients(model)

    shared_features = [encode_shared(tokenizer, g, seq2seq, 64, 48, decoder_start=start) for g in groups]
    shared = shared_loss_sums(model, collate_shared(shared_features, tokenizer.pad_token_id, seq2seq), seq2seq)
    sum(weights[t] * loss for t, loss in shared.items()).backward()
    got = gradients(model)

    for task in weights:
        torch.testing.assert_close(shared[task], separate[task], rtol=1e-5, atol=1e-5)
    assert set(got) == set(expected) and len(got) > 10
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_packing_rows_changes_no_loss_and_no_gradient(tiny_causal):
    from dsbs.batching import pack_rows

    model, tokenizer, _ = load(tiny_causal)
    examples = demo.load("train")[:8]
    features = [encode_shared(tokenizer, items_for(e, "dsbs"), False, 64, 48) for e in examples[:4]]
    features += [encode_item(tokenizer, items_for(e, "standard")[0], False, 64, 48, form="suffix")
                 for e in examples[4:]]
    results = []
    for pack in (False, True):
        batch = collate_shared(features, tokenizer.pad_token_id, False, pack=pack)
        losses = shared_loss_sums(model, batch, False)
        sum(losses.values()).backward()
        results.append((batch["input_ids"].shape, losses, gradients(model)))
    (unpacked_shape, unpacked, unpacked_grads), (packed_shape, packed, packed_grads) = results
    assert packed_shape[0] < unpacked_shape[0] == 8, "several examples share a row"
    for task in unpacked:
        torch.testing.assert_close(packed[task], unpacked[task], rtol=1e-5, atol=1e-5)
    for name in unpacked_grads:
        torch.testing.assert_close(packed_grads[name], unpacked_grads[name], rtol=1e-5, atol=1e-6, msg=name)
    assert sorted(i for row in pack_rows([5, 9, 3, 9, 1], 2.0) for i in row) == [0, 1, 2, 3, 4]
    assert all(sum([5, 9, 3, 9, 1][i] for i in row) <= 18 for row in pack_rows([5, 9, 3, 9, 1], 2.0))


def test_a_soft_capped_head_gets_the_models_own_loss(tiny_causal):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    _, tokenizer, _ = load(tiny_causal)
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, final_logit_softcapping=0.5, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)).eval()
    features = [encode_item(tokenizer, items_for(e, "standard")[0], False, 64, 48, form="suffix")
                for e in demo.load("train")[:4]]
    with torch.no_grad():
        ours = shared_loss_sums(model, collate_shared(features, tokenizer.pad_token_id, False), False)[LABEL_TASK]
        reference = reference_loss_sum(model, features, tokenizer.pad_token_id, False)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-4)
