"""Batched greedy generation shared by validation, evaluation and prediction, and choosing a label
from a task's label set instead of generating it."""

from dsbs.batching import (
    LABEL_TASK,
    RATIONALE_TASK,
    MarkerSet,
    PromptForm,
    encode_prompt,
    parse_single_task_output,
    target_ids,
)
from dsbs.errors import UserError
from dsbs.methods import get_method
from dsbs.models import is_seq2seq


def generate(model, tokenizer, texts: list[str], *, max_new_tokens: int, max_input_tokens: int,
             task: int = LABEL_TASK, form: PromptForm = "suffix", markers: MarkerSet = "dsbs", batch_size: int = 16,
             progress: bool = False) -> list[str]:
    """Greedy answers of ``task`` to ``texts`` in prompt ``form``, batched by similar length, in input order."""
    import torch
    from tqdm.auto import tqdm

    seq2seq = is_seq2seq(model.config)
    encoded = [encode_prompt(tokenizer, t, seq2seq, max_input_tokens, task, form, markers) for t in texts]
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


def choose(model, tokenizer, texts: list[str], choices: list[tuple[str, ...]], *, max_input_tokens: int,
           max_target_tokens: int, form: PromptForm = "suffix", markers: MarkerSet = "dsbs",
           batch_size: int = 16) -> list[str]:
    """For each text, the one of its ``choices`` that greedy decoding restricted to them would write.

    The first token decides among choices that begin differently, so one forward pass over each
    prompt (batched) answers most inputs; an input whose best first token begins several choices
    reads on, one token at a time, among those alone. Every choice ends in EOS, so a choice that
    begins another is told apart from it.
    """
    seq2seq = is_seq2seq(model.config)
    encoded = [encode_prompt(tokenizer, t, seq2seq, max_input_tokens, LABEL_TASK, form, markers) for t in texts]
    options = [{tuple(target_ids(tokenizer, c, seq2seq, max_target_tokens)): c for c in row} for row in choices]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i][0]))
    outputs: list[str] = [""] * len(texts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        logits = next_token_logits(model, tokenizer, [encoded[i] for i in rows], [[] for _ in rows])
        for row, i in enumerate(rows):
            outputs[i] = options[i][read_choice(model, tokenizer, encoded[i], list(options[i]), logits[row])]
    return outputs


def read_choice(model, tokenizer, prompt: tuple[list[int], list[int]], sequences: list[tuple[int, ...]],
                logits) -> tuple[int, ...]:
    """The sequence greedy decoding picks among ``sequences``, given the logits of its first token."""
    written: list[int] = []
    while True:
        step = len(written)
        best = max({seq[step] for seq in sequences}, key=lambda token: float(logits[token]))
        written.append(best)
        sequences = [seq for seq in sequences if seq[step] == best]
        if len(sequences) == 1:
            return sequences[0]
        logits = next_token_logits(model, tokenizer, [prompt], [written])[0]


def next_token_logits(model, tokenizer, prompts: list[tuple[list[int], list[int]]], written: list[list[int]]):
    """Logits of the token after each (prompt ids, decoder prefix ids) and the tokens already written."""
    import torch

    if hasattr(model, "next_token_logits"):  # an engine that gives logits (dsbs.engines.OnnxStudent)
        return model.next_token_logits(prompts, written)
    device = model.device
    with torch.inference_mode():
        if is_seq2seq(model.config):
            batch = tokenizer.pad({"input_ids": [p for p, _ in prompts]}, return_tensors="pt").to(device)
            start_id = model.generation_config.decoder_start_token_id
            decoder = [[start_id] + prefix + w for (_, prefix), w in zip(prompts, written, strict=True)]
            return model(**batch, decoder_input_ids=torch.tensor(decoder, device=device)).logits[:, -1].float()
        batch = tokenizer.pad({"input_ids": [p + w for (p, _), w in zip(prompts, written, strict=True)]},
                              return_tensors="pt").to(device)
        positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # left padding, as generate() counts
        return model(**batch, position_ids=positions, logits_to_keep=1).logits[:, -1].float()


def same_answer(task, a: str, b: str) -> bool:
    """Two students gave the same answer: identical text (even one the task's metric cannot parse), or labels
    the metric counts as equal."""
    return a == b or task.labels_match(a, b)


def label_choices(task, texts: list[str]) -> list[tuple[str, ...]]:
    """Each text's allowed labels under ``task`` (its fixed label set, or a multiple-choice input's options)."""
    if task.label_choices is None:
        raise UserError(f"task {task.name} has open answers, no label set to choose from: leave out --choices")
    return [task.label_choices(text) for text in texts]


def refuse_single_task(meta: dict) -> None:
    if get_method(meta["method"]).answers_with_rationale:
        raise UserError(f"a {meta['method']} student writes its rationale before its label: it has no label "
                        "to choose on its own (leave out --choices)")


def choice_task(meta: dict):
    """The task whose label set a student chooses from: the one its dsbs.json records."""
    from dsbs.tasks import TaskConfig, get_task, student_task_config

    refuse_single_task(meta)
    task = get_task(student_task_config(meta, TaskConfig()))
    if task.label_choices is None:
        raise UserError(f"task {meta['task']} has open answers, no label set to choose from: leave out --choices (an "
                        "own task gets a label set with --label-set a,b,c when it is trained)")
    return task


def predict(model, tokenizer, meta: dict, inputs: list[str], *, with_rationale: bool = False,
            batch_size: int = 16, progress: bool = False, choices: list[tuple[str, ...]] | None = None) -> list[dict]:
    """{"label": ...} per input (and "rationale" when asked), the way the student was trained.

    A single_task student writes its rationale before its label, so it always generates both;
    every other student answers the label task alone unless a rationale is asked for, generating
    its label or, given ``choices``, choosing it (``choose``). A student whose dsbs.json names no
    prompt form was trained in the prefix form.
    """
    if choices is not None:
        refuse_single_task(meta)
    limits = {"max_input_tokens": meta["max_input_tokens"], "batch_size": batch_size, "progress": progress,
              "form": meta.get("prompt_form", "prefix"), "markers": meta.get("markers", "dsbs")}
    if get_method(meta["method"]).answers_with_rationale:
        texts = generate(model, tokenizer, inputs, max_new_tokens=meta["max_target_tokens"] + meta["label_max_tokens"],
                         **limits)
        results = []
        for text in texts:
            rationale, label = parse_single_task_output(text)
            results.append({"label": label, "rationale": rationale} if with_rationale else {"label": label})
        return results
    if choices is None:
        labels = generate(model, tokenizer, inputs, max_new_tokens=meta["label_max_tokens"], **limits)
    elif hasattr(model, "greedy") and not hasattr(model, "next_token_logits"):
        raise UserError("--choices reads the student's logits: it needs a transformers student or an ONNX export, "
                        "not this export")
    else:
        labels = choose(model, tokenizer, inputs, choices, max_input_tokens=meta["max_input_tokens"],
                        max_target_tokens=meta["max_target_tokens"], form=limits["form"], markers=limits["markers"],
                        batch_size=batch_size)
    results = [{"label": label} for label in labels]
    if with_rationale:
        rationales = generate(model, tokenizer, inputs, task=RATIONALE_TASK, max_new_tokens=meta["max_target_tokens"],
                              **limits)
        for result, rationale in zip(results, rationales, strict=True):
            result["rationale"] = rationale
    return results
