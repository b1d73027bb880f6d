"""Loss parity: our target-only loss (summed, over the token count) equals transformers' built-in loss on
the same batch (fp32)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from dsbs.batching import LABEL_TASK, RATIONALE_TASK, collate, encode_item, items_for
from dsbs.models import is_seq2seq, prepare_tokenizer
from dsbs.tasks import demo
from dsbs.train import target_loss_sum


@pytest.mark.parametrize("task_id", [LABEL_TASK, RATIONALE_TASK])
def test_target_loss_matches_the_reference_loss(tiny_student, task_id):
    tokenizer = AutoTokenizer.from_pretrained(tiny_student)
    loader = AutoModelForSeq2SeqLM if "t5" in open(f"{tiny_student}/config.json").read() else AutoModelForCausalLM
    model = loader.from_pretrained(tiny_student).eval()
    prepare_tokenizer(tokenizer, model)
    seq2seq = is_seq2seq(model.config)
    features = [encode_item(tokenizer, item, seq2seq, 64, 48)
                for e in demo.load("train")[:6] for item in items_for(e, "dsbs") if item.task == task_id]
    batch = collate(features, tokenizer.pad_token_id, seq2seq)
    with torch.no_grad():
        ours = target_loss_sum(model, batch, seq2seq) / sum(f["n_target"] for f in features)
        reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"]).loss
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
