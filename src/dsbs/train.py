"""`dsbs train`: fine-tune a student with one of the methods of dsbs.methods.

Reads top to bottom, as litgpt's recipes do: ``setup`` resolves the config, loads and splits the
data, builds the items the method trains on and the model, optimizer and schedule (restoring them
from the latest checkpoint on resume); ``fit`` is one loop over optimizer steps that logs,
``validate``s on the held-out split, keeps the best model and checkpoints, so that a killed run
resumes exactly where it stopped.
"""

import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from dsbs.batching import (
    IGNORE_INDEX,
    collate,
    collate_shared,
    cut_items,
    encode_item,
    encode_shared,
    items_for,
    longest_label,
    select_rationales,
    training_label,
)
from dsbs.checkpoint import gather, latest_checkpoint, load_training_state, save_model
from dsbs.configs import NOT_RESULT_SETTINGS, TrainConfig
from dsbs.errors import ConfigError, DataError, MissingDependency
from dsbs.files import exclusive, write_atomic
from dsbs.methods import LABEL_TASK, RATIONALE_TASK, TASK_NAMES, Method, get_method
from dsbs.tasks import TaskConfig, data_digest, get_task
from dsbs.tasks.common import Task, split_validation, subsample

__all__ = ["TrainConfig", "train"]


def select_rows(pool: list, config: TrainConfig, can_validate=lambda row: True) -> tuple[list, list]:
    """(training rows, validation rows) of a run.

    The paper's order (its run.py): cap the pool (one fixed draw, seed 0, for every seed), take the
    seeded fraction, then hold out validation from that subsample, so that a run at a small
    fraction selects on no more labelled rows than its budget holds. The ``pool`` order (dsbs before
    0.2) holds validation out of the whole pool first: every fraction then selects on the same rows.
    Validation is held out of the rows that ``can_validate`` (those with the run's label): the others
    would be lost to it (where every row has one, the split is split_validation's).
    """
    if config.split_order == "pool":
        train_rows, val_rows = hold_out(pool, config.val_fraction, can_validate)
        train_rows = subsample(cap_pool(train_rows, config.pool_size), config.data_fraction, config.seed)
    else:
        chosen = subsample(cap_pool(pool, config.pool_size), config.data_fraction, config.seed)
        train_rows, val_rows = hold_out(chosen, config.val_fraction, can_validate)
    return train_rows, val_rows


def hold_out(rows: list, fraction: float, can_validate) -> tuple[list, list]:
    """(train, validation): split_validation of the rows that ``can_validate``; every other row trains."""
    _, val_rows = split_validation([row for row in rows if can_validate(row)], fraction, seed=0)
    held = {id(row) for row in val_rows}
    return [row for row in rows if id(row) not in held], val_rows


def labelled_rows(rows: list, method: Method, label_source: str) -> int:
    """Rows with the label the run learns (gold, or the teacher's in the unlabeled setting)."""
    return sum(training_label(row, method, label_source) is not None for row in rows)


def cap_pool(rows: list, pool_size: int | None) -> list:
    return subsample(rows, pool_size / len(rows), seed=0) if pool_size and pool_size < len(rows) else rows


SMALL_VALIDATION = 100  # below it, --keep-model auto keeps the last step: the best of so few rows is mostly noise


def kept_step(keep_model: str, validation_rows: int) -> str:
    """Which step model/ holds: best or last; auto decides by the number of validation rows (none: the last)."""
    if not validation_rows:
        return "last"
    if keep_model != "auto":
        return keep_model
    return "best" if validation_rows >= SMALL_VALIDATION else "last"


RATIONALE_MIN_SHARE = 0.5  # below it, a method that learns from rationales stops (--allow-missing-rationales)


def training_groups(rows: list, method: Method, label_source: str) -> tuple[list, list[dict]]:
    """Each row's items, and a note for every row that lacks a part the method learns from: what, and
    whether the row is dropped or trains on the rest."""
    groups, notes = [], []
    source = label_source if method.labels == "chosen" else method.labels
    for row in rows:
        items = items_for(row, method, label_source)
        missing = []
        if training_label(row, method, label_source) is None:
            missing.append("gold label" if source == "gold" else "teacher label")
        if method.rationale != "none" and row.rationale is None:
            missing.append("rationale")
        if items:
            groups.append(items)
        if missing:
            notes.append({"where": row.where or row.id, "id": row.id, "missing": missing, "dropped": not items})
    return groups, notes


def check_training_rows(task: Task, method: Method, config: TrainConfig, rows: list, groups: list,
                        with_rationale: int) -> None:
    """Stop, with the counts and where each part comes from, when the rows cannot train what the method claims."""
    fields = task.fields()
    source = config.label_source if method.labels == "chosen" else method.labels
    label_part = "label" if source == "gold" else "teacher_label"
    if not groups:
        needs = ("gold labels" if source == "gold" else "teacher labels") + (
            " and rationales" if method.rationale == "target" else "")
        raise DataError(f"no training examples for method {config.method!r}: it learns {needs}, and none of the "
                        f"{len(rows)} training rows has what it needs ({label_part.replace('_', ' ')}: "
                        f"{fields[label_part]})")
    if not labelled_rows(rows, method, config.label_source):  # dsbs would learn rationales, never its answer
        other = " or train on the teacher's labels (--label-source teacher)" if method.labels == "chosen" else ""
        raise DataError(f"{config.method} learns the {label_part.replace('_', ' ')} as its answer, but none of its "
                        f"{len(rows)} training rows has one ({fields[label_part]}): name the label's field{other}")
    if method.rationale == "none" or config.allow_missing_rationales:
        return
    # a share of what can train, not of all rows (a row without the run's label does not count): dsbs's examples;
    # single_task drops a row without a rationale, so its share is of the rows with the run's label
    able = len(groups) if method.rationale == "task" else labelled_rows(rows, method, config.label_source)
    if with_rationale < RATIONALE_MIN_SHARE * able:
        anyway = (" or pass --allow-missing-rationales to train anyway"
                  + (" (examples without one learn the label alone)" if method.rationale == "task" else ""))
        if config.rationales != "all":
            advice = (f"--rationales {config.rationales} keeps a rationale only where the teacher's label is the gold "
                      "one: use --rationales all,")
        else:
            advice = ("Let a teacher write them (dsbs teach --task YOUR_TASK --output runs/teach, then dsbs train "
                      "--task runs/teach), name the right field,")
        raise DataError(f"{config.method} learns from rationales, but only {with_rationale} of its {able} "
                        f"training examples have one ({fields['rationale']}). {advice}{anyway}")


def label_budget(task: Task, method: Method, config: TrainConfig, groups: list, tokenizer) -> int:
    """Tokens an answer may take at inference: the task's, or more where the run taught longer labels (an own
    task's open answers), so that validation and inference can write what training taught."""
    if method.rationale == "target":  # single_task's label targets hold the rationale too
        return task.label_max_tokens
    return max(task.label_max_tokens, min(longest_label(groups, tokenizer) + 1, config.max_target_tokens))


def write_skipped(path: Path, notes: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(note) + "\n" for note in notes))


def report_notes(notes: list[dict], path: Path, shown: int = 5) -> None:
    """The first few rows that lack something, then a count; all of them are in ``path``."""
    for kind, rows in (("skipped", [n for n in notes if n["dropped"]]),
                       ("trained without their " + "/".join(sorted({m for n in notes if not n["dropped"]
                                                                   for m in n["missing"]})),
                        [n for n in notes if not n["dropped"]])):
        if not rows:
            continue
        print(f"{len(rows)} training row(s) {kind} (all listed in {path}):", file=sys.stderr)
        for note in rows[:shown]:
            print(f"  {note['where']}: no {' and no '.join(note['missing'])}", file=sys.stderr)
        if len(rows) > shown:
            print(f"  ... and {len(rows) - shown} more", file=sys.stderr)


def batch_indices(n: int, batch_size: int, seed: int, micro_step: int) -> list[int]:
    """Example indices of micro-batch ``micro_step``: each epoch a fresh seeded permutation.

    A pure function of the step, so a resumed run sees exactly the batches it would have seen.
    """
    indices = []
    position = micro_step * batch_size
    while len(indices) < batch_size:
        epoch, offset = divmod(position, n)
        order = list(range(n))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        take = order[offset : offset + batch_size - len(indices)]
        indices += take
        position += len(take)
    return indices


def lr_factor(step: int, warmup_steps: int, max_steps: int) -> float:
    """Linear warm-up, then linear decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (max_steps - step) / max(1, max_steps - warmup_steps))


def seq2seq_loss_sum(model, batch: dict):
    """Summed cross-entropy over the target tokens of a seq2seq batch of one task (divide by their
    count for the mean transformers' built-in loss gives)."""
    import torch.nn.functional as F

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   decoder_input_ids=batch["decoder_input_ids"]).logits
    mask = batch["labels"] != IGNORE_INDEX
    return F.cross_entropy(logits[mask].float(), batch["labels"][mask], reduction="sum")


def shared_loss_sums(model, batch: dict, seq2seq: bool, sharded: bool = False) -> dict:
    """Summed cross-entropy per task of a shared-pass batch (collate_shared): each input read once.

    A decoder-only student's prompt tokens carry no loss, so its output head (49k x 576 for
    SmolLM2, a fifth of the compute) runs only on the target positions; except when ``sharded``
    (FSDP gathers the embedding and head only inside the whole model's forward) or where the model's
    forward scales its logits (Gemma 2's soft-capping, Cohere's logit scale).
    """
    import torch
    import torch.nn.functional as F

    if seq2seq:  # the encoder once; each task's decoder against the same encoder states
        encoded = model.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        sums = {}
        for task, branch in batch["branches"].items():
            rows = branch["rows"]
            logits = model(encoder_outputs=(encoded.last_hidden_state[rows],),
                           attention_mask=batch["attention_mask"][rows],
                           decoder_input_ids=branch["decoder_input_ids"]).logits
            labels = branch["labels"]
            mask = labels != IGNORE_INDEX
            sums[task] = sums.get(task, 0) + F.cross_entropy(logits[mask].float(), labels[mask], reduction="sum")
        return sums
    mask = batch["attention_mask"]
    if getattr(model.config, "_attn_implementation", "sdpa") == "eager":  # eager attention adds the mask to scores
        mask = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(~mask, float("-inf"))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": mask, "position_ids": batch["position_ids"]}
    labels, tasks = batch["labels"][:, 1:], batch["label_tasks"][:, 1:]  # position t predicts token t + 1
    targets = labels != IGNORE_INDEX
    if sharded or any(getattr(model.config, name, None) for name in ("final_logit_softcapping", "logit_scale")):
        logits = model(**inputs).logits[:, :-1][targets]
    else:
        logits = model.get_output_embeddings()(model.base_model(**inputs).last_hidden_state[:, :-1][targets])
    per_token = F.cross_entropy(logits.float(), labels[targets], reduction="none")
    return {int(task): per_token[tasks[targets] == task].sum() for task in tasks[targets].unique()}


def add_lora(model, rank: int, alpha: float):
    """``model`` with trainable LoRA adapters on every linear layer and every other weight frozen.

    Returns the peft wrapper; its ``get_base_model()`` is the same transformers model with the
    adapters inside, so forward passes, the loss and generation need no other change.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise MissingDependency("--lora-rank needs the peft package: pip install 'dsbs[lora]'") from None
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear"))


def shard(model, world: int, device) -> None:
    """FSDP2: every transformer block, then the rest, keeps 1/world of its weights, gradients and
    optimizer state on each process and gathers a block's weights only while it runs."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if device.type == "cpu" and tuple(int(p) for p in torch.__version__.split(".")[:2]) < (2, 7):
        raise ConfigError(f"--fsdp on a CPU needs torch 2.7 or newer (this is {torch.__version__}); GPUs work from 2.6")
    mesh = init_device_mesh(device.type, (world,))
    blocks = set(model._no_split_modules or ())
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model._is_fsdp_managed_module = True  # as transformers' own FSDP2 marks it: generate() keeps processes in step


@dataclass
class Run:
    """Everything a training run holds, passed explicitly to the functions that use it."""

    config: TrainConfig
    task: Task
    method: Method
    output: Path
    accelerator: object
    model: object
    tokenizer: object
    lora: object
    optimizer: object
    scheduler: object
    features: list  # per example: its encoded items
    val_rows: list
    meta: dict  # dsbs.json of every saved student
    weights: dict  # task id -> weight of its mean token loss
    max_steps: int
    save_interval: int
    precision: str
    seq2seq: bool
    shared: bool  # each example is one shared-pass feature (encode_shared) instead of one per item
    keep_model: str  # best or last (--keep-model auto resolved)
    budget_rows: int  # labelled rows the run may read before its test: training plus validation
    step: int = 0
    best: dict = field(default_factory=lambda: {"accuracy": None, "step": None})
    clock: "PhaseClock | None" = None  # set in setup; times phases only under --phase-times

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def prepare_output(output: Path, resume: bool, accelerator) -> Path | None:
    """The checkpoint to resume from (None: start afresh); refuses to overwrite a run."""
    has_run = (output / "summary.json").is_file() or latest_checkpoint(output) is not None
    if has_run and not resume:
        raise DataError(f"{output} already holds a run: pass --resume to continue it, or choose another --output")
    accelerator.wait_for_everyone()  # every process has looked before the main one writes
    stranded = output / ".old-model"  # a kill inside replace_dir leaves the previous best here
    if accelerator.is_main_process and stranded.is_dir() and not (output / "model").exists():
        os.replace(stranded, output / "model")
    return latest_checkpoint(output) if resume else None


def build_student(config: TrainConfig, checkpoint: Path | None, accelerator):
    """(model, tokenizer, lora) on the run's device; sharded under --fsdp."""
    import torch

    from dsbs.models import load_student

    torch.manual_seed(config.seed)
    # A LoRA checkpoint holds merged weights; its adapters travel in training_state.pt instead.
    model, tokenizer = load_student(str(checkpoint) if checkpoint and not config.lora_rank else config.student)
    lora = add_lora(model, config.lora_rank, config.lora_alpha) if config.lora_rank else None
    if lora is not None:
        model = lora.get_base_model()
    model.to(accelerator.device)
    if config.fsdp:
        if accelerator.num_processes == 1:
            raise ConfigError("--fsdp shards over processes: start the run with accelerate launch or torchrun")
        shard(model, accelerator.num_processes, accelerator.device)
    return model, tokenizer, lora


def restore(run: Run, checkpoint: Path) -> None:
    """Optimizer, schedule, RNG, step and best of ``checkpoint`` (its weights are already loaded)."""
    state = load_training_state(checkpoint)
    if state.get("fsdp", False) != run.config.fsdp:
        raise DataError(f"{checkpoint} was made {'with' if state.get('fsdp') else 'without'} --fsdp; resume it "
                        "the same way")
    if run.lora is not None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(run.lora, state["adapters"])
    if run.config.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(run.model, run.optimizer, state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
    else:
        run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    restore_rng(state)
    run.step, run.best = state["step"], state["best"]
    if state["max_steps"] != run.max_steps:
        print(f"warning: checkpoint was made for {state['max_steps']} steps, this run has {run.max_steps}",
              file=sys.stderr)


def setup(task_config: TaskConfig, config: TrainConfig, accelerator) -> Run:
    """Data, items, student, optimizer and schedule of a run, restored from its last checkpoint."""
    import torch

    from dsbs.hardware import resolve_precision
    from dsbs.models import is_seq2seq

    output = Path(config.output)
    checkpoint = prepare_output(output, config.resume, accelerator)
    # Data: the pool, a fixed validation split for model selection, then the seeded fraction.
    task, method = get_task(task_config), get_method(config.method)
    pool = task.load(config.train_split or task.train_split)
    train_rows, held_out = select_rows(
        pool, config, lambda row: training_label(row, method, config.label_source) is not None)
    # the held-out rows past --eval-limit stay out of training too, so that the limit does not change what trains
    val_rows = held_out[: config.eval_limit] if config.eval_limit else held_out
    train_rows = select_rationales(train_rows, config.rationales, task.labels_match)
    groups, notes = training_groups(train_rows, method, config.label_source)
    rationale_examples = len(groups) - sum(not n["dropped"] and "rationale" in n["missing"] for n in notes)
    check_training_rows(task, method, config, train_rows, groups, rationale_examples)
    model, tokenizer, lora = build_student(config, checkpoint, accelerator)
    seq2seq = is_seq2seq(model.config)
    # under FSDP a seq2seq shared pass could run a task's decoder on some processes and not others
    shared = (method.rationale == "task" and config.prompt_form == "suffix" and config.shared_pass
              and not (config.fsdp and seq2seq))
    features = encode_features(groups, tokenizer, seq2seq, config, shared,
                               getattr(model.config, "decoder_start_token_id", None))
    cut = cut_items(groups, tokenizer, seq2seq, config.max_input_tokens, config.max_target_tokens, config.prompt_form,
                    config.markers)
    examples_per_step = config.batch_size * config.grad_accum * accelerator.num_processes
    max_steps = math.ceil(config.epochs * len(groups) / examples_per_step) if config.epochs else config.max_steps
    # fused AdamW: one kernel over all parameters, 6x faster than the per-tensor loop on our CPU
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    schedule = partial(lr_factor, warmup_steps=config.warmup_steps, max_steps=max_steps)
    meta = {"method": config.method, "task": task.name, "task_config": task.config, "student": config.student,
            "alpha": config.alpha, "rationale_weight": config.rationale_weight,
            "label_source": config.label_source if method.labels == "chosen" else method.labels,  # what it learnt
            "label_max_tokens": label_budget(task, method, config, groups, tokenizer),
            "max_input_tokens": config.max_input_tokens,
            "max_target_tokens": config.max_target_tokens, "seq2seq": seq2seq, "train_examples": len(groups),
            "rationale_examples": rationale_examples if method.rationale != "none" else None,
            "skipped_rows": sum(n["dropped"] for n in notes), "lora_rank": config.lora_rank,
            "prompt_form": config.prompt_form, "markers": config.markers, "rationale_selection": config.rationales,
            "rationales": task.origin if method.rationale != "none" else "not used", "cut_items": cut}
    run = Run(config=config, task=task, method=method, output=output, accelerator=accelerator, model=model,
              tokenizer=tokenizer, lora=lora, optimizer=optimizer,
              scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), features=features,
              val_rows=val_rows, meta=meta, weights=method.loss_weights(config.alpha, config.rationale_weight),
              max_steps=max_steps,
              save_interval=config.save_interval or config.eval_interval or max(1, max_steps // 10),
              precision=resolve_precision(config.precision, accelerator.device.type), seq2seq=seq2seq, shared=shared,
              keep_model=kept_step(config.keep_model, len(val_rows)),
              budget_rows=labelled_rows(train_rows, method, config.label_source) + len(val_rows),
              clock=PhaseClock(accelerator.device.type, on=config.phase_times))
    if checkpoint:
        restore(run, checkpoint)
    if run.main:
        output.mkdir(parents=True, exist_ok=True)
        resolved = {"task": asdict(task_config), "task_read_as": task.config, "train": asdict(config),
                    "settings": run_settings(task_config, config),
                    "max_steps": max_steps, "precision": run.precision, "device": accelerator.device.type,
                    "processes": run.world, "train_examples": len(groups),
                    "rationale_examples": meta["rationale_examples"], "skipped_examples": len(train_rows) - len(groups),
                    "validation_examples": len(val_rows), "held_out_unused": len(held_out) - len(val_rows),
                    "cut_items": cut,
                    "pool_examples": len(pool), "student_is_seq2seq": seq2seq, "shared_pass": shared}
        write_skipped(output / "skipped.jsonl", notes)
        write_atomic(output / "train_config.json", json.dumps(resolved, indent=2))
    if run.main:  # progress on stderr: stdout carries the summary
        print(f"training {config.method} on {task.name}: {len(groups)} examples "
              + (f"({rationale_examples} with a rationale) " if method.rationale != "none" else "")
              + f"of {len(train_rows)} rows, {len(val_rows)} validation"
              + (f" (--eval-limit leaves {len(held_out) - len(val_rows)} held-out rows unused)"
                 if len(held_out) > len(val_rows) else "") + f", {max_steps} steps, "
              f"{run.precision} on {accelerator.device.type}" + (f" x {run.world} processes" if run.world > 1 else "")
              + (f", resumed at step {run.step}" if checkpoint else ""), file=sys.stderr)
        report_notes(notes, output / "skipped.jsonl")
        if cut:
            print("longer than --max-input-tokens / --max-target-tokens, so cut: " + ", ".join(
                f"{n} {kind.replace('_', ' ')}" for kind, n in cut.items()) + (
                " (single_task keeps its label and cuts the rationale)" if method.rationale == "target" else ""),
                file=sys.stderr)
        if config.keep_model == "auto" and run.keep_model == "last" and val_rows:
            print(f"keeping the last step: {len(val_rows)} validation rows are fewer than {SMALL_VALIDATION}, too few "
                  "to pick a best step by (--keep-model best to pick anyway)", file=sys.stderr)
    return run


def encode_features(groups: list, tokenizer, seq2seq: bool, config: TrainConfig, shared: bool,
                    decoder_start: int | None) -> list[list[dict]]:
    """Per example, its encoded items: one shared-pass feature, or one feature per item."""
    limits = (config.max_input_tokens, config.max_target_tokens)
    if shared:
        return [[encode_shared(tokenizer, g, seq2seq, *limits, decoder_start=decoder_start, markers=config.markers)]
                for g in groups]
    return [[encode_item(tokenizer, item, seq2seq, *limits, form=config.prompt_form, decoder_start=decoder_start,
                         markers=config.markers)
             for item in g] for g in groups]


def step_batches(run: Run) -> list[list[int]]:
    """The example indices of this step's micro-batches, across all processes."""
    config = run.config
    first = run.step * config.grad_accum
    return [batch_indices(len(run.features), config.batch_size * run.world, config.seed, first + m)
            for m in range(config.grad_accum)]


def passes(run: Run, rows: list[int]) -> list[tuple[list[dict], float]]:
    """This process's forward passes over a micro-batch: (features, share of the loss they carry).

    Decoder-only, or a shared pass: one pass over all of its examples, packed several to a row.
    Otherwise (seq2seq) one pass per task, each padded to its own longest item. Under FSDP a
    process with no item of a task still runs a zero-weighted pass on one, because FSDP's weight
    gathers are collective: every process must run every pass.
    """
    mine = [f for i in rows[run.accelerator.process_index :: run.world] for f in run.features[i]]
    if run.shared or not run.seq2seq:  # decoder-only items of every task pack into one pass
        return [(mine, 1.0)]
    result = []
    for task_id in run.weights:
        part = [f for f in mine if task_id in f["tasks"]]
        if part:
            result.append((part, 1.0))
        elif run.config.fsdp:
            result.append(([f for i in rows for f in run.features[i] if task_id in f["tasks"]][:1], 0.0))
    return [(part, share) for part, share in result if part]


def forward(run: Run, part: list[dict]) -> tuple[dict, int]:
    """({task: summed target-token loss}, tokens processed) of one pass."""
    pad = run.tokenizer.pad_token_id
    if run.shared or not run.seq2seq:
        batch = collate_shared(part, pad, run.seq2seq, pack=run.config.pack)
        tokens = batch.pop("real_tokens", None)
        if tokens is None:  # seq2seq: the encoder's tokens and every decoder's
            tokens = int(batch["attention_mask"].sum()) + sum(n for f in part for n in f["tasks"].values())
        batch = to_device(batch, run.accelerator.device)
        run.clock.lap("collate")
        return shared_loss_sums(run.model, batch, run.seq2seq, sharded=run.config.fsdp), tokens
    batch = to_device(collate(part, pad, run.seq2seq), run.accelerator.device)
    run.clock.lap("collate")
    tokens = int(batch["attention_mask"].sum()) + (sum(f["tasks"][f["task"]] for f in part) if run.seq2seq else 0)
    return {part[0]["task"]: seq2seq_loss_sum(run.model, batch)}, tokens


def to_device(batch, device):
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch.to(device) if hasattr(batch, "to") else batch


def sum_gradients(run: Run) -> None:
    """Data parallelism: sum the processes' gradients once per step, in one flat all-reduce."""
    import torch

    parameters = [p for p in run.model.parameters() if p.requires_grad]
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = run.accelerator.reduce(torch.cat([p.grad.reshape(-1) for p in parameters]), reduction="sum")
    offset = 0
    for p in parameters:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def train_step(run: Run) -> tuple[list[float], int, float]:
    """One optimizer step: ([label loss, rationale loss, tokens processed], target tokens, lr).

    Each task's loss is its mean over all target tokens of the step, across micro-batches and
    processes; every process knows the whole step's batches, so it divides by that count. One
    forward pass per task, each padded to its own longest item: short labels are not padded to
    rationale length (40% more tokens/s on SVAMP than one mixed pass).
    """
    import torch

    micro_batches = step_batches(run)
    counts = {task_id: sum(f["tasks"].get(task_id, 0) for rows in micro_batches for i in rows for f in run.features[i])
              for task_id in run.weights}
    sums = torch.zeros(3)  # label, rationale, tokens processed: this process's share
    autocast = torch.autocast(device_type=run.accelerator.device.type, dtype=torch.bfloat16,
                              enabled=run.precision == "bf16")
    for rows in micro_batches:
        for part, share in passes(run, rows):
            with autocast:
                losses, tokens = forward(run, part)
            run.clock.lap("forward")
            # each process's loss is its share of the step's mean; FSDP averages gradients, so undo that
            scale = share * (run.world if run.config.fsdp else 1)
            total = sum(run.weights[t] * loss / counts[t] for t, loss in losses.items() if counts.get(t))
            if torch.is_tensor(total):
                (scale * total).backward()
            run.clock.lap("backward")
            for t, loss in losses.items():
                sums[t] += share * loss.item() / counts[t]
            sums[2] += share * tokens
    if run.world > 1 and not run.config.fsdp:
        sum_gradients(run)
    if run.world > 1:
        sums = run.accelerator.reduce(sums.to(run.accelerator.device), reduction="sum").cpu()
    torch.nn.utils.clip_grad_norm_([p for p in run.model.parameters() if p.requires_grad], 1.0)
    lr = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.clock.lap("optimizer")
    return sums.tolist(), sum(counts.values()), lr


def validation_accuracy(model, tokenizer, meta, task, rows, labels: list[str], batch_size) -> float:
    """Accuracy on ``rows`` against ``labels``: the labels the method learns (teacher labels in the unlabeled
    setting, so that no gold label is read before the test)."""
    from dsbs.inference import predict

    predictions = predict(model, tokenizer, meta, [e.input for e in rows], batch_size=batch_size)
    return sum(task.labels_match(p["label"], g) for p, g in zip(predictions, labels, strict=True)) / len(rows)


def validate(run: Run, log) -> None:
    """Accuracy on the validation rows; the best model so far (or the last step's) is saved as model/."""
    # A sharded model generates only with every process taking part (transformers keeps them in step).
    if not run.val_rows or not (run.main or run.config.fsdp):
        return
    if run.config.fsdp:  # seq2seq generate() calls the encoder directly, outside the hook that gathers shared weights
        run.model.unshard()
    labels = [training_label(e, run.method, run.config.label_source) for e in run.val_rows]
    accuracy = validation_accuracy(run.model, run.tokenizer, run.meta, run.task, run.val_rows, labels,
                                   run.config.eval_batch_size)
    run.model.train()
    if run.keep_model == "last":
        improved = run.step == run.max_steps
    else:
        improved = run.best["accuracy"] is None or accuracy > run.best["accuracy"]
    if improved:
        run.best.update(accuracy=accuracy, step=run.step)
        weights, _ = gather(run.model, run.optimizer, run.config.fsdp)
        if run.main:
            save_model(run.model, run.tokenizer, {**run.meta, "validation_accuracy": accuracy, "step": run.step},
                       run.output / "model", lora=run.lora, weights=weights)
    if run.main:
        log({"step": run.step, "val_accuracy": accuracy, "best": improved})


def rng_state() -> dict:
    """The random generators a resumed run must continue: the CPU's, and on a GPU CUDA's (dropout there draws
    from CUDA's generators)."""
    import torch

    state = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None:
        if torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        else:
            print("warning: this checkpoint was made on a GPU; resumed without one, its dropout draws differ from "
                  "an uninterrupted run's", file=sys.stderr)


def save_checkpoint(run: Run) -> None:
    """Weights, optimizer, schedule, RNG and step as checkpoints/step-N; the previous one goes."""

    weights, optimizer_state = gather(run.model, run.optimizer, run.config.fsdp, with_optimizer=True)
    if run.main:
        target = run.output / "checkpoints" / f"step-{run.step:06d}"
        state = {"optimizer": optimizer_state, "scheduler": run.scheduler.state_dict(), "fsdp": run.config.fsdp,
                 "step": run.step, "best": run.best, "max_steps": run.max_steps, **rng_state()}
        if run.lora is not None:
            from peft import get_peft_model_state_dict

            state["adapters"] = get_peft_model_state_dict(run.lora)
        save_model(run.model, run.tokenizer, run.meta, target, training_state=state, lora=run.lora, weights=weights)
        for old in (run.output / "checkpoints").glob("step-*"):
            if old != target:
                shutil.rmtree(old)
    run.accelerator.wait_for_everyone()


class PhaseClock:
    """Seconds of each phase of the steps since the last log line (--phase-times; off, it does nothing).

    On a GPU it waits for the device at each lap, so that kernels are charged to the phase that
    queued them rather than to the next one that waits.
    """

    PHASES = ("collate", "forward", "backward", "optimizer")

    def __init__(self, device_type: str, on: bool):
        import torch

        self.on = on
        self.sync = torch.cuda.synchronize if device_type == "cuda" else None
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        self.last = time.perf_counter()

    def start(self) -> None:
        if not self.on:
            return
        if self.sync:
            self.sync()
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        if not self.on:
            return
        if self.sync:
            self.sync()
        now = time.perf_counter()
        self.seconds[phase] += now - self.last
        self.last = now

    def take(self, steps: int) -> dict:
        """Per-step means as log fields (collate_s, forward_s, ...), then a new window; nothing when off."""
        if not self.on:
            return {}
        record = {f"{phase}_s": seconds / steps for phase, seconds in self.seconds.items()}
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        return record


class Meter:
    """Sums for the log line every N steps, and totals of the session for throughput and MFU."""

    def __init__(self, weights: dict):
        self.weights = weights
        self.window = dict.fromkeys(("label", "rationale", "tokens", "seconds", "steps"), 0.0)
        self.total = dict.fromkeys(("tokens", "target_tokens", "seconds"), 0.0)

    def add(self, losses: list[float], target_tokens: int, seconds: float) -> None:
        for key, value in (("label", losses[LABEL_TASK]), ("rationale", losses[RATIONALE_TASK]), ("tokens", losses[2]),
                           ("seconds", seconds), ("steps", 1)):
            self.window[key] += value
        self.total["tokens"] += losses[2]
        self.total["target_tokens"] += target_tokens
        self.total["seconds"] += seconds

    def line(self, step: int, lr: float) -> dict:
        """The averages since the last line (fewer steps than the interval after a resume), then a new window."""
        w, n = self.window, self.window["steps"]
        mean = {TASK_NAMES[t]: w[TASK_NAMES[t]] / n for t in (LABEL_TASK, RATIONALE_TASK)}
        record = {"step": step, "loss": sum(weight * mean[TASK_NAMES[t]] for t, weight in self.weights.items()),
                  "label_loss": mean["label"], "rationale_loss": mean["rationale"], "lr": lr,
                  "tokens": int(w["tokens"]), "tokens_per_s": w["tokens"] / w["seconds"]}
        self.window = dict.fromkeys(self.window, 0.0)
        return record


def make_logger(path: Path, main: bool, tracker=None):
    """log(record): one JSON line in log.jsonl, a readable console line and the tracker (main process only)."""
    from tqdm.auto import tqdm

    def log(record: dict) -> None:
        if not main:
            return
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if tracker is not None:
            tracker.log({k: v for k, v in record.items() if k != "step"}, record["step"])
        tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))

    return log


def fit(run: Run) -> dict:
    """The training loop: step, log, validate, checkpoint, until max_steps."""
    from tqdm.auto import tqdm

    config, log_path = run.config, run.output / "log.jsonl"
    if run.main and log_path.exists():  # drop lines logged after the checkpoint we resume from
        kept = [line for line in log_path.read_text().splitlines() if line and json.loads(line)["step"] <= run.step]
        write_atomic(log_path, "".join(line + "\n" for line in kept))
    tracker = None
    if run.main:
        from dsbs.tracking import open_tracker

        resolved = json.loads((run.output / "train_config.json").read_text())
        tracker = open_tracker(config.report_to, run.output, config.tracker_project, resolved, first_step=run.step + 1)
    log, meter, started = make_logger(log_path, run.main, tracker), Meter(run.weights), time.perf_counter()
    run.model.train()
    bar = tqdm(total=run.max_steps, initial=run.step, desc="train", unit="step", disable=not run.main)
    while run.step < run.max_steps:
        run.clock.start()
        step_started = time.perf_counter()
        losses, target_tokens, lr = train_step(run)
        run.step += 1
        meter.add(losses, target_tokens, time.perf_counter() - step_started)
        bar.update(1)
        last = run.step == run.max_steps
        if run.step % config.log_interval == 0 or last:
            steps = meter.window["steps"]
            log(meter.line(run.step, lr) | run.clock.take(steps))
        if (config.eval_interval and run.step % config.eval_interval == 0) or last:
            validate(run, log)
        # the last step's checkpoint only where it is kept: model/ and summary.json end the run
        if (run.step % run.save_interval == 0 and not last) or (last and config.keep_checkpoints):
            save_checkpoint(run)
    bar.close()
    if tracker is not None:
        tracker.finish()
    return finish(run, meter, time.perf_counter() - started)


def finish(run: Run, meter: Meter, seconds: float) -> dict:
    """model/ (the last weights when nothing was validated), summary.json; the summary."""
    last_weights = gather(run.model, run.optimizer, run.config.fsdp)[0] if run.best["accuracy"] is None else None
    summary = {"steps": run.step, "max_steps": run.max_steps, "best_validation_accuracy": run.best["accuracy"],
               "best_step": run.best["step"], "train_examples": len(run.features),
               "rationale_examples": run.meta["rationale_examples"], "rationale_selection": run.config.rationales,
               "validation_examples": len(run.val_rows), "budget_rows": run.budget_rows,
               "kept_step": run.keep_model, "split_order": run.config.split_order,
               "validation_labels": run.method.labels if run.method.labels != "chosen" else run.config.label_source,
               "processes": run.world,
               "seconds_this_session": round(seconds, 1),
               "train_seconds_this_session": round(meter.total["seconds"], 2),
               "tokens_this_session": int(meter.total["tokens"]),
               "target_tokens_this_session": int(meter.total["target_tokens"]),
               "parameters": sum(p.numel() for p in run.model.parameters()),
               "embedding_parameters": run.model.get_input_embeddings().weight.numel()}
    if not run.main:
        return summary
    if run.best["accuracy"] is None:  # no validation rows: the last weights are the model
        save_model(run.model, run.tokenizer, {**run.meta, "step": run.step}, run.output / "model", lora=run.lora,
                   weights=last_weights)
    write_atomic(run.output / "summary.json", json.dumps(summary, indent=2))  # first: the run is finished now
    if not run.config.keep_checkpoints:
        shutil.rmtree(run.output / "checkpoints", ignore_errors=True)
    return summary


def run_settings(task_config: TaskConfig, config: TrainConfig) -> dict:
    """What defines a run's result: its task, the training settings that change it, and its data's contents."""
    return {"task": asdict(task_config), "data": data_digest(task_config),
            "train": {k: v for k, v in asdict(config).items() if k not in NOT_RESULT_SETTINGS}}


def check_same_run(output: Path, settings: dict) -> None:
    """--resume continues a run only with the settings it was started with; each difference is named."""
    path = output / "train_config.json"
    if not path.is_file():
        return
    before = json.loads(path.read_text()).get("settings")
    if before is None:
        print(f"warning: {output} was trained by an older dsbs that did not record its settings; they cannot be "
              "compared with these", file=sys.stderr)
        return
    differing = [f"{part}.{key}: {before[part].get(key, 'not recorded')!r} in the run, {value!r} now"
                 for part in ("task", "train") for key, value in settings[part].items()
                 if before[part].get(key, "not recorded") != value]
    if before["data"] != settings["data"]:
        differing.append("data: the task's files changed since the run started")
    if differing:
        raise ConfigError(f"--resume: {output} holds a run with other settings:\n  " + "\n  ".join(differing)
                          + "\nresume it with its own settings, or train into another --output")


def train(task_config: TaskConfig, config: TrainConfig) -> dict:
    """Train a student and return the run summary (also written to ``summary.json``)."""
    import torch
    from accelerate import Accelerator

    output = Path(config.output)
    if config.resume:
        check_same_run(output, run_settings(task_config, config))  # before the finished-run shortcut
    if config.resume and (output / "summary.json").is_file():
        print(f"{output} already holds a finished run; nothing to do", file=sys.stderr)
        return json.loads((output / "summary.json").read_text())
    # Under `accelerate launch` (or torchrun) each process trains on its share of every batch;
    # alone, this is a plain single-process run.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    # one writer per run directory; under a launcher the main process holds the lock for all
    with exclusive(output, "train") if accelerator.is_main_process else nullcontext():
        return fit(setup(task_config, config, accelerator))
