"""How long a recipe's grid takes on a GPU, from FLOPs: no GPU is needed to size it.

Encodes each task's training items for the recipe's student exactly as `dsbs train` does, counts
the FLOPs of one optimizer step per method (dsbs.hardware.training_flops: the shared pass's
input read once, attention included, the output head only on target positions) and divides by an assumed share of
the card's bf16 peak. Also counts the test evaluation's generation (2 FLOPs per parameter per
token). Prints one line per cell kind and the grid's total.

    python benchmarks/size_gpu_grid.py recipes/gpu-smollm2.yaml --data-dir ../shared/datasets
"""

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--peak-tflops", type=float, default=800.0, help="the card's dense bf16 peak")
    parser.add_argument("--mfu", type=float, default=0.12, help="assumed share of the peak in eager mode")
    parser.add_argument("--sample", type=int, default=1000, help="examples per task to average over")
    args = parser.parse_args()

    from dsbs.batching import items_for
    from dsbs.experiment import load_recipe
    from dsbs.hardware import training_flops
    from dsbs.methods import get_method
    from dsbs.models import is_seq2seq, load_student
    from dsbs.tasks import get_task
    from dsbs.train import encode_features, select_rows

    recipe = load_recipe(args.recipe)
    rate = args.peak_tflops * 1e12 * args.mfu
    model, tokenizer = load_student(recipe.students[0])
    seq2seq = is_seq2seq(model.config)
    params = sum(p.numel() for p in model.parameters())
    total_seconds, cells = 0.0, 0
    print(f"{'task':>6} {'method':>9} {'steps':>6} {'tok/ex':>7} {'GFLOP/ex':>9} {'s/cell':>7} {'test s':>7}")
    for task_name in recipe.tasks:
        run = {"task": task_name, "method": "dsbs", "fraction": 1.0, "student": recipe.students[0], "seed": 0}
        task_config, train_config = recipe.configs({**run, "task": task_name})
        if args.data_dir:
            task_config.data_dir = args.data_dir
        task = get_task(task_config)
        pool = task.load(train_config.train_split or task.train_split)
        rows = select_rows(pool, train_config)[0][: args.sample]
        test_rows = task.load(task.test_split)[: recipe.test_limit or None]
        prompt_tokens = statistics.fmean(len(tokenizer(e.input)["input_ids"]) for e in test_rows[:500])
        test_tokens = prompt_tokens + task.label_max_tokens
        test_seconds = 2 * params * test_tokens * len(test_rows) / rate
        for method in recipe.methods:
            _, config = recipe.configs({**run, "method": method})
            groups = [g for g in (items_for(e, method, config.label_source) for e in rows) if g]
            shared = get_method(method).rationale == "task" and config.prompt_form == "suffix" and config.shared_pass
            encoded = encode_features(groups, tokenizer, seq2seq, config, shared, None)
            flops = statistics.fmean(training_flops(model.config, g) for g in encoded)
            tokens = statistics.fmean(sum(len(i["input_ids"]) for i in g) for g in encoded)
            step_seconds = flops * config.batch_size / rate
            cell = step_seconds * config.max_steps + test_seconds
            n = len(recipe.fractions) * len(recipe.seeds)
            total_seconds += n * cell
            cells += n
            print(f"{task_name:>6} {method:>9} {config.max_steps:>6} {tokens:>7.1f} {flops / 1e9:>9.2f} "
                  f"{cell:>7.1f} {test_seconds:>7.1f}")
    print(f"cells={cells} compute_seconds={total_seconds:.0f} at {args.mfu:.0%} of {args.peak_tflops:.0f} TFLOP/s "
          "(validation, loading and process start come on top)")


if __name__ == "__main__":
    main()
