"""Saving and loading students and checkpoints (nanochat's checkpoint_manager, litgpt's saved configs).

A student directory is a plain transformers model with its tokenizer, ``dsbs.json`` (how it was
trained and how to prompt it) and a model card. A checkpoint is a student directory plus
``training_state.pt`` (optimizer, schedule, RNG, step), loaded with ``weights_only=True``: a file
planted in a run directory is refused, not executed. Every directory appears whole or not at all.
"""

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

from dsbs.batching import LABEL_TASK, MARKER_SETS
from dsbs.errors import DataError, UserError
from dsbs.files import replace_dir
from dsbs.methods import get_method

META_FILE = "dsbs.json"  # beside a saved student: how it was trained and how to prompt it
STATE_FILE = "training_state.pt"


def read_meta(model_dir: str | Path) -> dict:
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        raise UserError(f"{model_dir} is not a dsbs student directory (no {META_FILE}); train one with `dsbs train`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None


def latest_checkpoint(output: Path) -> Path | None:
    found = sorted((output / "checkpoints").glob(f"step-*/{STATE_FILE}"),
                   key=lambda p: int(p.parent.name.split("-")[1]))
    return found[-1].parent if found else None


def loading_snippet(meta: dict) -> list[str]:
    """Python that answers one input with plain transformers, exactly as dsbs prompts the student."""
    seq2seq, form = meta.get("seq2seq"), meta.get("prompt_form", "prefix")
    marker = MARKER_SETS[meta.get("markers", "dsbs")][LABEL_TASK]
    loader = "AutoModelForSeq2SeqLM" if seq2seq else "AutoModelForCausalLM"
    lines = ["import torch", f"from transformers import {loader}, AutoTokenizer", "",
             f'model = {loader}.from_pretrained("path/to/this/dir").eval()',
             'tokenizer = AutoTokenizer.from_pretrained("path/to/this/dir")',
             'text = "Your input, written the way the training inputs were."',
             "", "def tokens(s):  # dsbs tokenizes the input and each marker on its own",
             '    return tokenizer(s, add_special_tokens=False)["input_ids"]', ""]
    if seq2seq:
        prompt = f'tokenizer("{marker} " + text)["input_ids"]' if form == "prefix" else 'tokenizer(text)["input_ids"]'
        start = "[model.generation_config.decoder_start_token_id]"
        start += f' + tokens("{marker}")' if form == "suffix" else ""
        lines += [f"ids = torch.tensor([{prompt}])", f"start = torch.tensor([{start}])",
                  f"out = model.generate(ids, decoder_input_ids=start, max_new_tokens={meta['label_max_tokens']}, "
                  "do_sample=False)", "new = out[0, start.shape[1]:]"]
    else:
        prompt = (f'tokenizer("{marker} " + text)["input_ids"] + tokens("\\n")' if form == "prefix" else
                  f'tokenizer(text)["input_ids"] + tokens("\\n") + tokens("{marker}") + tokens("\\n")')
        lines += [f"ids = torch.tensor([{prompt}])",
                  f"out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens="
                  f"{meta['label_max_tokens']}, do_sample=False)", "new = out[0, ids.shape[1]:]  # the answer alone"]
    return lines + ["label = tokenizer.decode(new, skip_special_tokens=True).strip()", "print(label)"]


def trained_loss(meta: dict) -> str:
    """The loss the run really applied: a rationale task without rationale examples adds nothing."""
    method = get_method(meta["method"])
    if method.rationale == "target":
        return "one target: rationale, then label"
    if method.rationale != "task":
        return "label only"
    if meta.get("rationale_examples") == 0:
        return "label only: no training example had a rationale"
    if meta.get("rationale_weight") is not None:
        return f"label + {meta['rationale_weight']} x rationale"
    return f"{meta['alpha']} x label + {1 - meta['alpha']:g} x rationale"


def model_card(meta: dict) -> str:
    """README.md for a saved student: what it is, how it was trained, how to load it."""
    form = meta.get("prompt_form", "prefix")
    accuracy = meta.get("validation_accuracy")
    trained = f"LoRA adapters of rank {meta['lora_rank']}, merged into the weights" if meta.get("lora_rank") else "all"
    method = get_method(meta["method"])
    labels = {"gold": "gold", "teacher": "teacher", "chosen": meta["label_source"]}[method.labels]
    rationales = meta.get("rationales", "n/a")
    if meta.get("rationale_examples") is not None:
        rationales += f"; {meta['rationale_examples']} of {meta.get('train_examples')} training examples have one"
    if meta.get("rationale_selection", "all") != "all":
        rationales += f" (--rationales {meta['rationale_selection']}: only those whose label is the gold one)"
    label_set = (meta.get("task_config") or {}).get("label_set")
    lines = [
        f"# dsbs student: {meta['task']} ({meta['method']})", "",
        f"Trained with dsbs (distilling step-by-step), method *{meta['method']}*, from `{meta['student']}`.", "",
        "| | |", "|---|---|",
        f"| base model | `{meta['student']}` |", f"| task | {meta['task']} |", f"| method | {meta['method']} |",
        f"| loss | {trained_loss(meta)} |", f"| labels | {labels} |", f"| rationales | {rationales} |",
        f"| trained weights | {trained} |",
        f"| prompt form | {form} (the task marker {'after' if form == 'suffix' else 'before'} the input) |",
        f"| training examples | {meta.get('train_examples')} |",
        f"| training rows skipped | {meta.get('skipped_rows', 0)} (listed in the run's skipped.jsonl) |",
        f"| optimizer steps | {meta.get('step')} |",
        f"| validation accuracy | {'n/a' if accuracy is None else f'{accuracy:.4f}'} |",
    ] + ([f"| label set | {label_set} |"] if label_set else []) + [""]
    if meta.get("engine"):  # an export holds the engine's files, not transformers weights: its note says how to load
        return "\n".join(lines)
    lines += ["## Load with plain transformers", "", "```python", *loading_snippet(meta), "```", "",
              "Or `dsbs predict --model DIR --input in.jsonl --output out.jsonl`, or `dsbs serve --model DIR` (POST "
              "/predict takes texts as they are, or rows): both make a row's text from the task's fields and read "
              "its label set from `dsbs.json`.", ""]
    return "\n".join(lines)


def save_model(model, tokenizer, meta: dict, target: Path, training_state: dict | None = None, lora=None,
               weights: dict | None = None) -> None:
    """Weights, tokenizer, dsbs.json, model card (and a checkpoint's training state), in place at once.

    A LoRA run saves the adapters merged into a copy of the model: a plain transformers model.
    ``weights``: the full state dict of a sharded (FSDP) model, gathered beforehand.
    """
    import copy

    staging = target.with_name(f".tmp-{target.name}")
    if staging.exists():
        shutil.rmtree(staging)
    with quiet_progress_bars():  # transformers' "Writing model shards" bar would cut through the training bar
        (copy.deepcopy(lora).merge_and_unload() if lora is not None else model).save_pretrained(staging,
                                                                                               state_dict=weights)
    tokenizer.save_pretrained(staging)
    (staging / META_FILE).write_text(json.dumps(meta, indent=2))
    (staging / "README.md").write_text(model_card(meta))
    if training_state is not None:
        import torch

        torch.save(training_state, staging / STATE_FILE)
    replace_dir(staging, target)


@contextmanager
def quiet_progress_bars():
    """transformers' own progress bars off for a while (they are process-wide), as they were after."""
    from transformers.utils import logging

    was_on = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            logging.enable_progress_bar()


def load_training_state(checkpoint: Path) -> dict:
    """The training state of a checkpoint, read without running any code it might contain."""
    import pickle

    import torch

    path = checkpoint / STATE_FILE
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as err:
        raise DataError(f"{path}: refused: it holds more than tensors and plain values, so loading it could run "
                        f"code ({str(err).splitlines()[0]}). Delete the checkpoint if you did not make it.") from None


def gather(model, optimizer, sharded: bool, with_optimizer: bool = False) -> tuple[dict | None, dict | None]:
    """(weights, optimizer state) whole on the main process; under FSDP every process must call it.

    Unsharded, the weights are the model's own (None) and the optimizer's state is its state_dict.
    """
    if not sharded:
        return None, optimizer.state_dict() if with_optimizer else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    # A tied weight (T5's shared embedding) comes back as separate copies; one tensor again lets
    # save_pretrained store it once.
    names_of = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(parameter), []).append(name)
    for first, *aliases in names_of.values():
        for alias in aliases:
            if first in weights and alias in weights:
                weights[alias] = weights[first]
    return weights, get_optimizer_state_dict(model, optimizer, options=options) if with_optimizer else None
