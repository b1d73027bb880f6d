"""Pure transforms from examples to training items, token ids and padded batches.

Every method reduces to items of (task, input, target): the label task x -> y and, for ``dsbs``,
the rationale task x -> r. A task marker (``[label]``, ``[rationale]``) says which to answer, in
one of two prompt forms:

- ``suffix`` (the default): the marker after the input, ``x \\n [label] \\n -> y``. The input comes
  first, the same for both tasks, so dsbs reads it once: one sequence holds the input, then the
  label branch, then the rationale branch, neither branch seeing the other (``encode_shared``).
- ``prefix``: the paper's ``[label] x -> y`` (each task's input is different, so two passes).

The same prompt encoding serves training and generation, so a trained student sees at inference
exactly the tokens it was trained on.
"""

from dataclasses import dataclass, replace
from typing import Literal

from dsbs.methods import LABEL_TASK, RATIONALE_TASK, Method, get_method
from dsbs.tasks.common import SINGLE_TASK_MARKER, Example

PromptForm = Literal["suffix", "prefix"]
# the words that tell a student which task to answer: dsbs's, or those of the paper's code ("predict: x")
MARKER_SETS = {"dsbs": {LABEL_TASK: "[label]", RATIONALE_TASK: "[rationale]"},
               "paper": {LABEL_TASK: "predict:", RATIONALE_TASK: "explain:"}}
MarkerSet = Literal["dsbs", "paper"]
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Item:
    task: int
    prompt: str  # the input; the task marker is added by the prompt form when it is encoded
    target: str
    answer_last: bool = False  # single_task's target (rationale, marker, label): a cut spares its end


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
        return [Item(LABEL_TASK, example.input, example.rationale + SINGLE_TASK_MARKER + label, answer_last=True)]
    items = [] if label is None else [Item(LABEL_TASK, example.input, label)]
    if method.rationale == "task":
        targets = example.rationales if example.rationales is not None else [example.rationale]
        items += [Item(RATIONALE_TASK, example.input, r) for r in targets if r is not None]
    return items


def select_rationales(rows: list[Example], mode: str, labels_match) -> list[Example]:
    """The rows with the rationales a run learns from: ``all`` (the teacher's, whatever label it reached),
    ``agreeing`` (only where the teacher's label is the gold one), ``all-agreeing`` (every sample's rationale
    whose label is the gold one, each a target of its own). The label task keeps every row."""
    if mode == "all":
        return rows

    def agrees(label: str | None, row: Example) -> bool:
        return label is not None and row.label is not None and labels_match(label, row.label)

    if mode == "agreeing":
        return [row if agrees(row.teacher_label, row) else replace(row, rationale=None) for row in rows]
    chosen = []
    for row in rows:
        samples = row.samples or ((row.rationale, row.teacher_label),)
        kept = tuple(r for r, label in samples if r and agrees(label, row))
        chosen.append(replace(row, rationale=kept[0] if kept else None, rationales=kept))
    return chosen


def parse_single_task_output(text: str) -> tuple[str, str]:
    """(rationale, label) of a single_task student's output; all of it is the label if no marker."""
    marker = SINGLE_TASK_MARKER.strip()
    pos = text.rfind(marker)
    rationale, label = (text[:pos], text[pos + len(marker):]) if pos != -1 else ("", text)
    return rationale.strip(), label.strip().rstrip(".").strip()


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def input_ids(tokenizer, text: str, seq2seq: bool, max_tokens: int) -> list[int]:
    """The input's tokens; a decoder-only input ends in a newline that separates what follows."""
    if seq2seq:
        return tokenizer(text, truncation=True, max_length=max_tokens)["input_ids"]
    return tokenizer(text, add_special_tokens=True)["input_ids"][: max_tokens - 1] + _ids(tokenizer, "\n")


def marker_ids(tokenizer, task: int, seq2seq: bool, markers: MarkerSet = "dsbs") -> list[int]:
    """The task marker of the suffix form (decoder side), tokenized on its own."""
    return _ids(tokenizer, MARKER_SETS[markers][task]) + ([] if seq2seq else _ids(tokenizer, "\n"))


def encode_prompt(tokenizer, text: str, seq2seq: bool, max_tokens: int, task: int = LABEL_TASK,
                  form: PromptForm = "suffix", markers: MarkerSet = "dsbs") -> tuple[list[int], list[int]]:
    """(prompt ids, decoder prefix ids) for generating ``task``'s answer to ``text``.

    The decoder prefix is the suffix form's marker of a seq2seq student (generation starts after
    it); decoder-only students carry the marker at the end of the prompt itself.
    """
    if form == "prefix":
        return input_ids(tokenizer, f"{MARKER_SETS[markers][task]} {text}", seq2seq, max_tokens), []
    if seq2seq:
        return input_ids(tokenizer, text, True, max_tokens), marker_ids(tokenizer, task, True, markers)
    return input_ids(tokenizer, text, False, max_tokens) + marker_ids(tokenizer, task, False, markers), []


def target_ids(tokenizer, target: str, seq2seq: bool, max_tokens: int, answer_last: bool = False) -> list[int]:
    """The target's tokens and EOS, nothing else: a tokenizer's own special tokens around a target (BERT's
    [CLS] ... [SEP]) would make every label begin with the same token. A single-task target (``answer_last``)
    too long for ``max_tokens`` loses the end of its rationale, not its label."""
    ids = _ids(tokenizer, target)
    if len(ids) >= max_tokens and answer_last:
        rationale, _, label = target.rpartition(SINGLE_TASK_MARKER)
        tail = _ids(tokenizer, SINGLE_TASK_MARKER + label)
        ids = _ids(tokenizer, rationale)[: max(0, max_tokens - 1 - len(tail))] + tail
    return ids[: max_tokens - 1] + [tokenizer.eos_token_id]


def token_lengths(tokenizer, texts: list[str], special: bool, chunk: int = 1024):
    """Each text's length in tokens, a chunk at a time (one call over a large pool would hold all its encodings)."""
    for start in range(0, len(texts), chunk):
        yield from map(len, tokenizer(texts[start : start + chunk], add_special_tokens=special)["input_ids"])


def longest_label(groups: list[list[Item]], tokenizer) -> int:
    """The longest label target in tokens (0 without one)."""
    labels = [item.target for group in groups for item in group if item.task == LABEL_TASK]
    return max(token_lengths(tokenizer, labels, False), default=0)


def cut_items(groups: list[list[Item]], tokenizer, seq2seq: bool, max_input: int, max_target: int,
              form: PromptForm = "suffix", markers: MarkerSet = "dsbs") -> dict[str, int]:
    """How many examples' inputs, and how many label and rationale targets, are longer than the limits (so cut)."""
    def prompt(item: Item) -> str:  # what encode_prompt tokenizes
        return f"{MARKER_SETS[markers][item.task]} {item.prompt}" if form == "prefix" else item.prompt

    items = [(number, item) for number, group in enumerate(groups) for item in group]
    room = max_input - (0 if seq2seq else 1)
    lengths = token_lengths(tokenizer, [prompt(item) for _, item in items], True)
    cut_inputs = {number for (number, _), n in zip(items, lengths, strict=True) if n > room}
    counts = {"inputs": len(cut_inputs), "label_targets": 0, "rationale_targets": 0}
    for (_, item), n in zip(items, token_lengths(tokenizer, [i.target for _, i in items], False), strict=True):
        counts[f"{'label' if item.task == LABEL_TASK else 'rationale'}_targets"] += n >= max_target
    return {key: n for key, n in counts.items() if n}


def encode_item(tokenizer, item: Item, seq2seq: bool, max_input: int, max_target: int, form: PromptForm = "suffix",
                decoder_start: int | None = None, markers: MarkerSet = "dsbs") -> dict:
    """One item: input_ids and labels (and a seq2seq student's decoder inputs); only target tokens carry loss.

    ``tasks`` maps the item's task to its loss-bearing tokens, counted once here rather than every step.
    """
    prompt, decoder_prefix = encode_prompt(tokenizer, item.prompt, seq2seq, max_input, item.task, form, markers)
    target = target_ids(tokenizer, item.target, seq2seq, max_target, item.answer_last)
    if seq2seq:
        labels = [IGNORE_INDEX] * len(decoder_prefix) + target
        decoder = [decoder_start] + (decoder_prefix + target)[:-1]
        return {"input_ids": prompt, "decoder_input_ids": decoder, "labels": labels, "task": item.task,
                "tasks": {item.task: len(target)}}
    n = len(prompt) + len(target)
    return {"input_ids": prompt + target, "labels": [IGNORE_INDEX] * len(prompt) + target, "task": item.task,
            "tasks": {item.task: len(target)}, "position_ids": list(range(n)), "segments": [0] * n,
            "label_tasks": [-1] * len(prompt) + [item.task] * len(target)}


def encode_shared(tokenizer, items: list[Item], seq2seq: bool, max_input: int, max_target: int,
                  decoder_start: int | None = None, markers: MarkerSet = "dsbs") -> dict:
    """All of one example's items (suffix form) in one sequence that reads the input once.

    Decoder-only: input, then each task's branch (marker, target), every branch's positions
    continuing from the input's end and ``segments`` telling the attention mask that a branch sees
    the input and itself only. Seq2seq: the input once for the encoder, one decoder sequence per task.
    """
    shared = input_ids(tokenizer, items[0].prompt, seq2seq, max_input)
    tasks = {}
    if seq2seq:
        branches = []
        for item in items:
            marker = marker_ids(tokenizer, item.task, True, markers)
            target = target_ids(tokenizer, item.target, True, max_target)
            branches.append({"task": item.task, "decoder_input_ids": [decoder_start] + (marker + target)[:-1],
                             "labels": [IGNORE_INDEX] * len(marker) + target})
            tasks[item.task] = tasks.get(item.task, 0) + len(target)  # several rationale targets add up
        return {"input_ids": shared, "branches": branches, "tasks": tasks}
    ids, labels = list(shared), [IGNORE_INDEX] * len(shared)
    positions, segments, label_tasks = list(range(len(shared))), [0] * len(shared), [-1] * len(shared)
    for number, item in enumerate(items, start=1):
        marker = marker_ids(tokenizer, item.task, False, markers)
        target = target_ids(tokenizer, item.target, False, max_target)
        branch = marker + target
        ids += branch
        labels += [IGNORE_INDEX] * len(marker) + target
        label_tasks += [-1] * len(marker) + [item.task] * len(target)
        positions += range(len(shared), len(shared) + len(branch))
        segments += [number] * len(branch)
        tasks[item.task] = tasks.get(item.task, 0) + len(target)
    return {"input_ids": ids, "labels": labels, "label_tasks": label_tasks, "position_ids": positions,
            "segments": segments, "tasks": tasks}


def _pad(rows: list[list[int]], value: int, width: int | None = None):
    import torch

    width = width or max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def collate(features: list[dict], pad_id: int, seq2seq: bool) -> dict:
    """Right-padded tensors of single-task items: input_ids, attention_mask, labels (-100 on padding)
    and, for seq2seq, decoder_input_ids."""
    batch = {"input_ids": _pad([f["input_ids"] for f in features], pad_id),
             "attention_mask": _pad([[1] * len(f["input_ids"]) for f in features], 0)}
    if seq2seq:
        batch["decoder_input_ids"] = _pad([f["decoder_input_ids"] for f in features], pad_id)
        batch["labels"] = _pad([f["labels"] for f in features], IGNORE_INDEX)
    else:
        batch["labels"] = _pad([f["labels"] for f in features], IGNORE_INDEX, batch["input_ids"].shape[1])
    return batch


def collate_shared(features: list[dict], pad_id: int, seq2seq: bool, pack: bool = True) -> dict:
    """Tensors of shared-pass features (encode_shared, or a decoder-only encode_item).

    Decoder-only: examples are packed several to a row (``pack_rows``) under a boolean attention
    mask (rows, 1, L, L) in which a position sees earlier positions of its own example's input and
    of its own branch, with positions restarting per example; padding sees only itself, so no
    softmax row is empty. Seq2seq: the encoder batch once, and one decoder batch per task.
    """
    import torch

    if seq2seq:
        batch = {"input_ids": _pad([f["input_ids"] for f in features], pad_id),
                 "attention_mask": _pad([[1] * len(f["input_ids"]) for f in features], 0), "branches": {}}
        for task in sorted({b["task"] for f in features for b in f["branches"]}):
            mine = [b for f in features for b in f["branches"] if b["task"] == task]
            rows = [i for i, f in enumerate(features) for b in f["branches"] if b["task"] == task]
            batch["branches"][task] = {"rows": torch.tensor(rows),
                                       "decoder_input_ids": _pad([b["decoder_input_ids"] for b in mine], pad_id),
                                       "labels": _pad([b["labels"] for b in mine], IGNORE_INDEX)}
        return batch
    rows = pack_rows([len(f["input_ids"]) for f in features]) if pack else [[i] for i in range(len(features))]
    joined = [{key: [v for i in row for v in features[i][key]] for key in
               ("input_ids", "labels", "label_tasks", "position_ids", "segments")} for row in rows]
    for row, packed in zip(rows, joined, strict=True):  # which example each position belongs to
        packed["example"] = [k for k, i in enumerate(row) for _ in features[i]["input_ids"]]
    width = max(len(p["input_ids"]) for p in joined)
    segments = _pad([p["segments"] for p in joined], -1, width)
    examples = _pad([p["example"] for p in joined], -1, width)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same_example = examples[:, :, None] == examples[:, None, :]
    visible = (segments[:, :, None] == segments[:, None, :]) | (segments[:, None, :] == 0)
    real = segments != -1
    mask = causal & same_example & visible & real[:, None, :] & real[:, :, None]
    mask |= torch.eye(width, dtype=torch.bool)  # padding attends to itself: no empty softmax row
    return {"input_ids": _pad([p["input_ids"] for p in joined], pad_id, width), "attention_mask": mask[:, None],
            "position_ids": _pad([p["position_ids"] for p in joined], 0, width),
            "labels": _pad([p["labels"] for p in joined], IGNORE_INDEX, width),
            "label_tasks": _pad([p["label_tasks"] for p in joined], -1, width), "real_tokens": int(real.sum())}


def pack_rows(lengths: list[int], capacity_factor: float = 2.0) -> list[list[int]]:
    """Indices grouped into as many rows as hold them at ``capacity_factor`` x the longest length,
    balanced (longest first, each to the shortest row) so that rows end up nearly equal: on our
    batches of 8, about 5% padding left against 22-29% with one example per row, for a little more
    attention (a row attends over its whole width, masked)."""
    import math

    count = max(1, math.ceil(sum(lengths) / (capacity_factor * max(lengths))))
    rows, totals = [[] for _ in range(count)], [0] * count
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        shortest = min(range(count), key=totals.__getitem__)
        rows[shortest].append(i)
        totals[shortest] += lengths[i]
    return [row for row in rows if row]
