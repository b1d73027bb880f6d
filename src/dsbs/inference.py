"""Batched greedy generation shared by validation, evaluation and prediction."""

from dsbs.batching import LABEL_TASK, RATIONALE_TASK, PromptForm, encode_prompt, parse_single_task_output
from dsbs.methods import get_method
from dsbs.models import is_seq2seq


def generate(model, tokenizer, texts: list[str], *, max_new_tokens: int, max_input_tokens: int,
             task: int = LABEL_TASK, form: PromptForm = "prefix", batch_size: int = 16,
             progress: bool = False) -> list[str]:
    """Greedy answers of ``task`` to ``texts`` in prompt ``form``, batched by similar length, in input order."""
    import torch
    from tqdm.auto import tqdm

    seq2seq = is_seq2seq(model.config)
    encoded = [encode_prompt(tokenizer, t, seq2seq, max_input_tokens, task, form) for t in texts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    outputs: list[str] = [""] * len(texts)
    model.eval()
    bar = tqdm(total=len(texts), desc="generate", unit="input", disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        if hasattr(model, "greedy"):  # an inference engine (dsbs.engines)
            ids = model.greedy([encoded[i][0] for i in rows], encoded[rows[0]][1], max_new_tokens)
            for i, text in zip(rows, tokenizer.batch_decode(ids, skip_special_tokens=True), strict=True):
                outputs[i] = text.strip()
            bar.update(len(rows))
            continue
        batch = tokenizer.pad({"input_ids": [encoded[i][0] for i in rows]}, return_tensors="pt").to(model.device)
        prefix = encoded[rows[0]][1]  # a seq2seq student's decoder starts with the task marker (suffix form)
        if prefix:
            start_id = model.generation_config.decoder_start_token_id
            batch["decoder_input_ids"] = torch.tensor([[start_id] + prefix] * len(rows), device=model.device)
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        if not seq2seq:  # a decoder-only model returns the prompt too
            out = out[:, batch["input_ids"].shape[1] :]
        elif prefix:
            out = out[:, 1 + len(prefix) :]
        for i, text in zip(rows, tokenizer.batch_decode(out, skip_special_tokens=True), strict=True):
            outputs[i] = text.strip()
        bar.update(len(rows))
    bar.close()
    return outputs


def predict(model, tokenizer, meta: dict, inputs: list[str], *, with_rationale: bool = False,
            batch_size: int = 16, progress: bool = False) -> list[dict]:
    """{"label": ...} per input (and "rationale" when asked), the way the student was trained.

    A single_task student writes its rationale before its label, so it always generates both;
    every other student answers the label task alone unless a rationale is asked for. A student
    whose dsbs.json names no prompt form was trained in the prefix form.
    """
    limits = {"max_input_tokens": meta["max_input_tokens"], "batch_size": batch_size, "progress": progress,
              "form": meta.get("prompt_form", "prefix")}
    if get_method(meta["method"]).answers_with_rationale:
        texts = generate(model, tokenizer, inputs, max_new_tokens=meta["max_target_tokens"] + meta["label_max_tokens"],
                         **limits)
        results = []
        for text in texts:
            rationale, label = parse_single_task_output(text)
            results.append({"label": label, "rationale": rationale} if with_rationale else {"label": label})
        return results
    labels = generate(model, tokenizer, inputs, max_new_tokens=meta["label_max_tokens"], **limits)
    results = [{"label": label} for label in labels]
    if with_rationale:
        rationales = generate(model, tokenizer, inputs, task=RATIONALE_TASK, max_new_tokens=meta["max_target_tokens"],
                              **limits)
        for result, rationale in zip(results, rationales, strict=True):
            result["rationale"] = rationale
    return results
