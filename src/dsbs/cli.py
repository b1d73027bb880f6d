"""`dsbs <stage>`: one subcommand per pipeline stage, each a plain function of this package.

Flags for configs come from their dataclass fields and help texts; nothing heavy is imported
until a command runs, so `dsbs --help` answers at once.
"""

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from pathlib import Path


def add_dataclass_args(parser: argparse.ArgumentParser, cls) -> None:
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        kind = f.type
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
            kind = next(t for t in typing.get_args(kind) if t is not type(None))
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "").replace("%", "%%") + (f" (default: {f.default})" if f.default is not None else "")
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=kind, default=f.default, help=help_text, metavar=f.name.upper())


def from_args(cls, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2))


def cmd_demo(args) -> None:
    from dsbs.demo import run_demo

    run_demo(output=args.output, student=args.student, max_steps=args.max_steps)


def cmd_download(args) -> None:
    from dsbs.data import download

    download(url=args.url, cache_dir=args.cache_dir, sha256=args.sha256, force=args.force)


def cmd_inspect(args) -> None:
    from dsbs.data import inspect
    from dsbs.tasks import TaskConfig

    report = inspect(from_args(TaskConfig, args), split=args.split)
    if args.json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        print(f"{key:>16}: {value}")


def cmd_teach(args) -> None:
    from dsbs.tasks import TaskConfig
    from dsbs.teach import TeachConfig, teach

    summary = teach(from_args(TaskConfig, args), from_args(TeachConfig, args))
    summary.pop("config")
    _print_json(summary)


def cmd_train(args) -> None:
    from dsbs.tasks import TaskConfig
    from dsbs.train import TrainConfig, train

    summary = train(from_args(TaskConfig, args), from_args(TrainConfig, args))
    if os.environ.get("RANK", "0") == "0":  # under a distributed launcher, one summary is enough
        _print_json(summary)


def cmd_experiment(args) -> None:
    import shutil
    import time

    from dsbs.experiment import load_recipe, run_experiment
    from dsbs.report import report

    recipe = load_recipe(args.recipe, output=args.output)
    deadline = time.time() + args.time_limit if args.time_limit else None
    results = Path(recipe.output) / "results.jsonl"
    report_dir = args.report_dir or recipe.output
    last = [0.0]

    def refresh(_result: dict) -> None:
        if args.report_dir:  # a copy beside the report, so that the directory is complete on its own
            Path(report_dir).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(results, Path(report_dir) / "results.jsonl")
        if time.time() - last[0] >= 60:  # at most once a minute: a report resamples every comparison
            report(str(results), output=report_dir)
            last[0] = time.time()

    wants_report = args.report or args.report_dir
    try:
        run_experiment(recipe, jobs=args.jobs, deadline=deadline, on_result=refresh if wants_report else None)
    finally:
        if wants_report and results.is_file():
            refresh({})
            print(report(str(results), output=report_dir)["markdown"])


def cmd_report(args) -> None:
    from dsbs.report import report

    result = report(args.results, output=args.output)
    print(result.pop("markdown"))
    _print_json(result)


def cmd_serve(args) -> None:
    from dsbs.serve import serve

    serve(args.model, host=args.host, port=args.port, max_batch=args.max_batch, max_inputs=args.max_inputs,
          max_input_chars=args.max_input_chars)


def cmd_evaluate(args) -> None:
    from dsbs.evaluate import evaluate
    from dsbs.tasks import TaskConfig

    metrics = evaluate(args.model, from_args(TaskConfig, args), split=args.split, limit=args.limit,
                       batch_size=args.batch_size, output=args.output, with_rationale=args.with_rationale)
    for long in ("task_config", "correct_vector", "teacher_correct_vector"):  # in metrics.json
        metrics.pop(long)
    _print_json(metrics)


def cmd_predict(args) -> None:
    from dsbs.predict import predict_file

    _print_json(predict_file(args.model, args.input, args.output, input_field=args.input_field,
                             batch_size=args.batch_size, with_rationale=args.with_rationale,
                             skip_bad_lines=args.skip_bad_lines, resume=args.resume))


def build_parser() -> argparse.ArgumentParser:
    from dsbs.data import PAPER_DATA_URL
    from dsbs.tasks import TaskConfig
    from dsbs.teach import TeachConfig
    from dsbs.train import TrainConfig

    parser = argparse.ArgumentParser(prog="dsbs", description="Distilling step-by-step: teach, train, evaluate and deploy small task models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")

    p = sub.add_parser("demo", help="the whole pipeline on the built-in offline demo task")
    p.add_argument("--output", default="runs/demo", help="directory for both runs and the summary")
    p.add_argument("--student", default="smollm2-135m", help="student model (or the built-in minilm-l6-seq2seq)")
    p.add_argument("--max-steps", type=int, default=40, help="optimizer steps per method")
    p.set_defaults(func=cmd_demo)

    data = sub.add_parser("data", help="download or inspect task data").add_subparsers(dest="data_command", required=True, metavar="<action>")
    p = data.add_parser("download", help="fetch and unpack the paper's released datasets.zip")
    p.add_argument("--url", default=PAPER_DATA_URL)
    p.add_argument("--cache-dir", default=None, help="default: $DSBS_CACHE_DIR or ~/.cache/dsbs")
    p.add_argument("--sha256", default=None, help="expected checksum of the archive")
    p.add_argument("--force", action="store_true", help="download again even if present")
    p.set_defaults(func=cmd_download)
    p = data.add_parser("inspect", help="row counts, teacher parse failures and accuracy, rationale lengths")
    add_dataclass_args(p, TaskConfig)
    p.add_argument("--split", default=None, help="split to inspect (default: the task's test split)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("teach", help="annotate a task with a teacher LLM's rationales and labels")
    add_dataclass_args(p, TaskConfig)
    add_dataclass_args(p, TeachConfig)
    p.set_defaults(func=cmd_teach)

    p = sub.add_parser("train", help="train a student with standard, distill, dsbs or single_task")
    add_dataclass_args(p, TaskConfig)
    add_dataclass_args(p, TrainConfig)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy of a trained student on a split")
    p.add_argument("--model", required=True, help="a student directory (a run's model/ or a checkpoint)")
    add_dataclass_args(p, TaskConfig)
    p.add_argument("--split", default=None, help="default: the task's test split")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N rows only")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--output", default=None, help="write predictions.jsonl and metrics.json here")
    p.add_argument("--with-rationale", action="store_true", help="also generate rationales, for inspection")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("experiment", help="run a recipe's grid of trainings and test evaluations")
    p.add_argument("recipe", help="a recipe YAML file (see recipes/)")
    p.add_argument("--output", default=None, help="override the recipe's output directory")
    p.add_argument("--report", action="store_true", help="write the report as runs finish (at most once a minute) and when the grid is done")
    p.add_argument("--report-dir", default=None, help="write the report, its plots and a copy of results.jsonl here (implies --report)")
    p.add_argument("--jobs", type=int, default=1, help="cells run at once, each in its own process: one GPU each where there are several, else sharing one; on a CPU the cores are divided among them")
    p.add_argument("--time-limit", type=float, default=None, help="seconds: start nothing after this and stop runs still going (they resume on the next start)")
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("report", help="markdown table and plots from an experiment's results")
    p.add_argument("results", help="results.jsonl or the experiment's output directory")
    p.add_argument("--output", default=None, help="where to write report.md and the PNGs (default: beside the results)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("serve", help="HTTP service: POST /predict and OpenAI-compatible /v1/chat/completions")
    p.add_argument("--model", required=True, help="a student directory (a run's model/)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32, help="inputs generated together (concurrent requests are batched)")
    p.add_argument("--max-inputs", type=int, default=64, help="inputs per request")
    p.add_argument("--max-input-chars", type=int, default=4000, help="characters per input")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("predict", help="label every line of a JSONL file")
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True, help="JSONL file, one object with an input field per line")
    p.add_argument("--output", required=True, help="JSONL file to write")
    p.add_argument("--input-field", default="input")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--with-rationale", action="store_true")
    p.add_argument("--skip-bad-lines", action="store_true", help="report and skip malformed lines instead of stopping")
    p.add_argument("--resume", action="store_true", help="keep the predictions already in --output and answer only the rest")
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dsbs.experiment import SweepFailed
    from dsbs.tasks.common import DataError

    try:
        args.func(args)
    except (DataError, ValueError, FileNotFoundError, ImportError) as err:  # user errors: a message, no traceback
        print(f"dsbs: error: {err}", file=sys.stderr)
        return 2
    except SweepFailed as err:  # each failure was printed as it happened
        print(f"dsbs: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dsbs: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
