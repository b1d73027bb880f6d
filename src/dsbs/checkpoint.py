"""Saving and loading students and checkpoints (nanochat's checkpoint_manager, litgpt's saved configs).

A student directory is a plain transformers model with its tokenizer, ``dsbs.json`` (how it was
trained and how to prompt it) and a model card. A checkpoint is a student directory plus
``training_state.pt`` (optimizer, schedule, RNG, step), loaded with ``weights_only=True``: a file
planted in a run directory is refused, not executed. Every directory appears whole or not at all.
"""

import json
import shutil
from pathlib import Path

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


def model_card(meta: dict) -> str:
    """README.md for a saved student: what it is, how it was trained, how to load it."""
    loader = "AutoModelForSeq2SeqLM" if meta.get("seq2seq") else "AutoModelForCausalLM"
    form = meta.get("prompt_form", "prefix")
    if form == "prefix":
        prompt = '"[label] " + text' + ("" if meta.get("seq2seq") else ' + "\\n"')
    else:
        prompt = "text" if meta.get("seq2seq") else 'text + "\\n[label]\\n"'
    start = ("  # the decoder starts with the marker: decoder_input_ids = [decoder_start] + tokens of '[label]'"
             if meta.get("seq2seq") and form == "suffix" else "")
    accuracy = meta.get("validation_accuracy")
    trained = f"LoRA adapters of rank {meta['lora_rank']}, merged into the weights" if meta.get("lora_rank") else "all"
    method = get_method(meta["method"])
    if method.rationale != "task":
        mix = "n/a"
    elif meta.get("rationale_weight") is not None:
        mix = f"label + {meta['rationale_weight']} x rationale"
    else:
        mix = f"{meta['alpha']} x label + {1 - meta['alpha']:g} x rationale"
    labels = {"gold": "gold", "teacher": "teacher", "chosen": meta["label_source"]}[method.labels]
    generate = f"model.generate(**inputs, max_new_tokens={meta['label_max_tokens']})[0]"
    lines = [
        f"# dsbs student: {meta['task']} ({meta['method']})", "",
        f"Trained with dsbs (distilling step-by-step), method *{meta['method']}*, from `{meta['student']}`.", "",
        "| | |", "|---|---|",
        f"| base model | `{meta['student']}` |", f"| task | {meta['task']} |", f"| method | {meta['method']} |",
        f"| loss | {mix} |", f"| labels | {labels} |", f"| rationales | {meta.get('rationales', 'n/a')} |",
        f"| trained weights | {trained} |",
        f"| prompt form | {form} (the task marker {'after' if form == 'suffix' else 'before'} the input) |",
        f"| training examples | {meta.get('train_examples')} |", f"| optimizer steps | {meta.get('step')} |",
        f"| validation accuracy | {'n/a' if accuracy is None else f'{accuracy:.4f}'} |", "",
    ]
    if meta.get("engine"):  # an export holds the engine's files, not transformers weights: its note says how to load
        return "\n".join(lines)
    lines += [
        "## Load with plain transformers", "", "```python",
        f"from transformers import {loader}, AutoTokenizer",
        f'model = {loader}.from_pretrained("path/to/this/dir")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/dir")',
        f"inputs = tokenizer({prompt}, return_tensors='pt'){start}",
        f"label = tokenizer.decode({generate}, skip_special_tokens=True)",
        "```", "",
        "Or `dsbs predict --model DIR --input in.jsonl --output out.jsonl`, or `dsbs serve --model DIR`.", "",
    ]
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
    (copy.deepcopy(lora).merge_and_unload() if lora is not None else model).save_pretrained(staging, state_dict=weights)
    tokenizer.save_pretrained(staging)
    (staging / META_FILE).write_text(json.dumps(meta, indent=2))
    (staging / "README.md").write_text(model_card(meta))
    if training_state is not None:
        import torch

        torch.save(training_state, staging / STATE_FILE)
    replace_dir(staging, target)


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
