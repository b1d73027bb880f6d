"""Pure transforms from examples to training items, token ids and padded batches.

Every method reduces to items of (task, prompt, target): the label task ``[label] x -> y`` and,
for ``dsbs``, the rationale task ``[rationale] x -> r``. The same prompt encoding serves training
and generation, so a trained student sees at inference exactly the tokens it was trained on.
"""

from dataclasses import dataclass

from dsbs.methods import LABEL_TASK, RATIONALE_TASK, Method, get_method
from dsbs.tasks.common import SINGLE_TASK_MARKER, Example

PREFIXES = {LABEL_TASK: "[label] ", RATIONALE_TASK: "[rationale] "}
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Item:
    task: int
    prompt: str
    target: str


def prompt_text(text: str, task: int = LABEL_TASK) -> str:
    return PREFIXES[task] + text


def training_label(example: Example, method: Method, label_source: str) -> str | None:
    """The label a method trains on: gold, the teacher's, or as --label-source chooses."""
    source = label_source if method.labels == "chosen" else method.labels
    return example.teacher_label if source == "teacher" else example.label


def items_for(example: Example, method: Method | str, label_source: str = "gold") -> list[Item]:
    """The items one example contributes; empty when the method has nothing to learn from it."""
    method = get_method(method) if isinstance(method, str) else method
    label = training_label(example, method, label_source)
    if method.rationale == "target":
        if label is None or example.rationale is None:
            return []
        return [Item(LABEL_TASK, prompt_text(example.input), example.rationale + SINGLE_TASK_MARKER + label)]
    items = [] if label is None else [Item(LABEL_TASK, prompt_text(example.input), label)]
    if method.rationale == "task" and example.rationale is not None:
        items.append(Item(RATIONALE_TASK, prompt_text(example.input, RATIONALE_TASK), example.rationale))
    return items


def parse_single_task_output(text: str) -> tuple[str, str]:
    """(rationale, label) of a single_task student's output; all of it is the label if no marker."""
    marker = SINGLE_TASK_MARKER.strip()
    pos = text.rfind(marker)
    rationale, label = (text[:pos], text[pos + len(marker):]) if pos != -1 else ("", text)
    return rationale.strip(), label.strip().rstrip(".").strip()


def encode_prompt(tokenizer, prompt: str, seq2seq: bool, max_tokens: int) -> list[int]:
    """Token ids of a prompt; a decoder-only prompt ends in a newline that separates the answer."""
    if seq2seq:
        return tokenizer(prompt, truncation=True, max_length=max_tokens)["input_ids"]
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"][: max_tokens - 1]
    return ids + tokenizer("\n", add_special_tokens=False)["input_ids"]


def encode_item(tokenizer, item: Item, seq2seq: bool, max_input: int, max_target: int) -> dict:
    """input_ids and labels for one item; decoder-only prompts are masked out of the loss."""
    prompt_ids = encode_prompt(tokenizer, item.prompt, seq2seq, max_input)
    if seq2seq:
        labels = tokenizer(text_target=item.target, truncation=True, max_length=max_target)["input_ids"]
        return {"input_ids": prompt_ids, "labels": labels, "task": item.task, "n_target": len(labels)}
    target_ids = tokenizer(item.target, add_special_tokens=False)["input_ids"][: max_target - 1]
    target_ids = target_ids + [tokenizer.eos_token_id]
    return {
        "input_ids": prompt_ids + target_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids,
        "task": item.task,
        "n_target": len(target_ids),  # tokens carrying loss, counted once here rather than every step
    }


def collate(features: list[dict], pad_id: int, seq2seq: bool) -> dict:
    """Right-padded tensors: input_ids, attention_mask and labels (-100 on padding)."""
    import torch

    width = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(features), width), dtype=torch.long)
    label_width = max(len(f["labels"]) for f in features) if seq2seq else width
    labels = torch.full((len(features), label_width), IGNORE_INDEX, dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[row, :n] = torch.tensor(f["input_ids"])
        attention_mask[row, :n] = 1
        labels[row, : len(f["labels"])] = torch.tensor(f["labels"])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
