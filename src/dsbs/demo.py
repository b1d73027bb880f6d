"""`dsbs demo`: the main job end to end on the built-in offline task, in a few minutes on a CPU.

Trains the default student twice on the generated arithmetic task, once with standard
fine-tuning and once with distilling step-by-step, evaluates both on the test split and prints
a table. It demonstrates the pipeline; its numbers say nothing about the real benchmarks.
"""

import json
from pathlib import Path

from dsbs.configs import DemoConfig, TrainConfig
from dsbs.evaluate import evaluate
from dsbs.files import write_atomic
from dsbs.tasks import TaskConfig
from dsbs.train import train

DEMO_METHODS = ("standard", "dsbs")


def run_demo(demo: DemoConfig) -> list[dict]:
    output, student, max_steps = demo.output, demo.student, demo.max_steps
    task_config = TaskConfig(task="demo")
    rows = []
    for method in DEMO_METHODS:
        run_dir = Path(output) / method
        config = TrainConfig(
            method=method, student=student, output=str(run_dir), max_steps=max_steps, batch_size=8, lr=1e-4,
            warmup_steps=max(1, max_steps // 10), eval_limit=20, max_input_tokens=96, max_target_tokens=64,
            log_interval=5, resume=True,
        )
        summary = train(task_config, config)
        metrics = evaluate(str(run_dir / "model"), task_config, split="test", output=str(run_dir / "eval"))
        rows.append({"method": method, "steps": summary["steps"], "train_examples": summary["train_examples"],
                     "test_accuracy": metrics["accuracy"], "test_n": metrics["n"]})
    table = ["| method | steps | train examples | test accuracy | n |", "|---|---|---|---|---|"]
    table += [f"| {r['method']} | {r['steps']} | {r['train_examples']} | {r['test_accuracy']:.1%} | {r['test_n']} |"
              for r in rows]
    text = "\n".join(table)
    write_atomic(Path(output) / "results.md", text + "\n")
    write_atomic(Path(output) / "results.json", json.dumps(rows, indent=2))
    print("\nDemo task (generated arithmetic problems, scripted teacher rationales):\n" + text)
    print(where_written(Path(output)))
    return rows


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def where_written(output: Path) -> str:
    """What the demo left on disk, and how big each part is: the students are most of it."""
    lines = [f"\nWritten to {output} ({size_of(output) / 1e6:,.0f} MB in all):"]
    for method in DEMO_METHODS:
        run = output / method
        lines.append(f"  {run}/model/  {size_of(run / 'model') / 1e6:,.0f} MB  the {method} student (dsbs predict "
                     f"--model {run}/model ...); log.jsonl, train_config.json, summary.json, eval/ beside it")
    lines.append(f"  {output}/results.md, results.json  the table above")
    return "\n".join(lines)
