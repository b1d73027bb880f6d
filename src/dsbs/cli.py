"""`dsbs <stage>`: one subcommand per pipeline stage, each a plain function of this package.

Every command's flags come from its config dataclasses (dsbs.configs, dsbs.tasks.TaskConfig): the
field's type, default, choices (Literal) and help text. Nothing heavy is imported until a command
runs, so `dsbs --help` answers at once.
"""

import argparse
import dataclasses
import json
import os
import sqlite3
import sys
import types
import typing
from pathlib import Path

from dsbs import configs
from dsbs.configs import literal_choices
from dsbs.errors import UserError
from dsbs.tasks import TaskConfig


def add_dataclass_args(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per field of ``cls`` (a positional argument where the field says so)."""
    group = parser.add_argument_group(cls.__name__, (cls.__doc__ or "").strip().splitlines()[0])
    for f in dataclasses.fields(cls):
        kind, choices = f.type, literal_choices(f.type)
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
            kind = next(t for t in typing.get_args(kind) if t is not type(None))
        if choices:
            kind = type(choices[0])
        required = f.default is dataclasses.MISSING
        help_text = f.metadata.get("help", "").replace("%", "%%")
        if not required and f.default is not None:
            help_text += f" (default: {f.default})"
        if f.metadata.get("positional"):
            group.add_argument(f.name, type=kind, help=help_text)
        elif kind is bool:
            group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=f.default, help=help_text)
        else:
            group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, choices=choices,
                               required=required, default=None if required else f.default, help=help_text,
                               metavar=f.name.upper() if not choices else None)


def from_args(cls, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2))


def cmd_demo(args) -> None:
    from dsbs.demo import run_demo

    run_demo(from_args(configs.DemoConfig, args))


def cmd_download(args) -> None:
    from dsbs.data import download

    config = from_args(configs.DownloadConfig, args)
    download(url=config.url, cache_dir=config.cache_dir, sha256=config.sha256, force=config.force,
             max_unpacked_bytes=config.max_unpacked_bytes)


def cmd_inspect(args) -> None:
    from dsbs.data import inspect

    config = from_args(configs.InspectConfig, args)
    report = inspect(from_args(TaskConfig, args), split=config.split)
    if config.json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        print(f"{key:>16}: {value}")


def cmd_teach(args) -> None:
    from dsbs.teach import teach

    summary = teach(from_args(TaskConfig, args), from_args(configs.TeachConfig, args))
    summary.pop("config", None)
    _print_json(summary)


def cmd_train(args) -> None:
    from dsbs.train import train

    summary = train(from_args(TaskConfig, args), from_args(configs.TrainConfig, args))
    if os.environ.get("RANK", "0") == "0":  # under a distributed launcher, one summary is enough
        _print_json(summary)


def cmd_evaluate(args) -> None:
    from dsbs.evaluate import evaluate

    config = from_args(configs.EvaluateConfig, args)
    metrics = evaluate(config.model, from_args(TaskConfig, args), split=config.split, limit=config.limit,
                       batch_size=config.batch_size, output=config.output, with_rationale=config.with_rationale,
                       precision=config.precision, choices=config.choices)
    for long in ("task_config", "correct_vector", "teacher_correct_vector", "clusters"):  # in metrics.json
        metrics.pop(long)
    _print_json(metrics)


def cmd_predict(args) -> None:
    from dsbs.predict import predict_file

    c = from_args(configs.PredictConfig, args)
    _print_json(predict_file(c.model, c.input, c.output, input_field=c.input_field, input_template=c.input_template,
                             batch_size=c.batch_size, with_rationale=c.with_rationale, skip_bad_lines=c.skip_bad_lines,
                             resume=c.resume, precision=c.precision, choices=c.choices))


def cmd_serve(args) -> None:
    from dsbs.serve import serve

    serve(from_args(configs.ServeConfig, args))


def cmd_experiment(args) -> None:
    import shutil
    import time

    from dsbs.experiment import load_recipe, run_experiment
    from dsbs.report import report

    config = from_args(configs.ExperimentConfig, args)
    recipe = load_recipe(config.recipe, output=config.output)
    results = Path(recipe.output) / "results.jsonl"
    report_dir = config.report_dir or recipe.output
    wants_report, last = config.report or config.report_dir, [0.0]

    def refresh(_result: dict) -> None:
        if config.report_dir:  # a copy beside the report, so that the directory is complete on its own
            Path(report_dir).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(results, Path(report_dir) / "results.jsonl")
        if time.time() - last[0] >= 60:  # at most once a minute: a report resamples every comparison
            report(str(results), output=report_dir)
            last[0] = time.time()

    try:
        deadline = time.time() + config.time_limit if config.time_limit else None
        run_experiment(recipe, jobs=config.jobs, deadline=deadline, on_result=refresh if wants_report else None)
    finally:
        if wants_report and results.is_file():
            last[0] = 0.0
            refresh({})
            print((Path(report_dir) / "report.md").read_text())


def cmd_report(args) -> None:
    from dsbs.report import report

    config = from_args(configs.ReportConfig, args)
    result = report(config.results, output=config.output)
    print(result.pop("markdown"))
    _print_json(result)


def cmd_export(args) -> None:
    from dsbs.engines import export

    config = from_args(configs.ExportConfig, args)
    _print_json(export(config.model, config.output, config.format, config.quantization))


def cmd_push(args) -> None:
    from dsbs.hub import push

    config = from_args(configs.PushConfig, args)
    _print_json(push(config.directory, config.repo_id, private=config.private))


# subcommand -> (function, help, config classes); `dsbs data download|inspect` are nested
COMMANDS = {
    "demo": (cmd_demo, "the whole pipeline on the built-in offline demo task", [configs.DemoConfig]),
    "teach": (cmd_teach, "annotate a task with a teacher LLM's rationales and labels",
              [TaskConfig, configs.TeachConfig]),
    "train": (cmd_train, "train a student with standard, distill, dsbs or single_task",
              [TaskConfig, configs.TrainConfig]),
    "evaluate": (cmd_evaluate, "accuracy of a trained student on a split", [configs.EvaluateConfig, TaskConfig]),
    "experiment": (cmd_experiment, "run a recipe's grid of trainings and test evaluations", [configs.ExperimentConfig]),
    "report": (cmd_report, "tables with paired intervals and plots from an experiment's results",
               [configs.ReportConfig]),
    "serve": (cmd_serve, "HTTP service: POST /predict and OpenAI-compatible /v1/chat/completions",
              [configs.ServeConfig]),
    "predict": (cmd_predict, "label every line of a JSONL file", [configs.PredictConfig]),
    "export": (cmd_export, "convert a student for an inference engine (CTranslate2, llama.cpp, ONNX Runtime)",
               [configs.ExportConfig]),
    "push": (cmd_push, "upload a teach output or a student, with its card, to the Hugging Face Hub",
             [configs.PushConfig]),
}
DATA_COMMANDS = {
    "download": (cmd_download, "fetch and unpack the paper's released datasets.zip", [configs.DownloadConfig]),
    "inspect": (cmd_inspect, "row counts, teacher parse failures and accuracy, rationale lengths",
                [TaskConfig, configs.InspectConfig]),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsbs", description="Distilling step-by-step: teach, train, evaluate and "
                                     "deploy small task models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")
    data = sub.add_parser("data", help="download or inspect task data")
    groups = [(sub, COMMANDS), (data.add_subparsers(dest="data_command", required=True, metavar="<action>"),
                                DATA_COMMANDS)]
    for subparsers, commands in groups:
        for name, (func, help_text, classes) in commands.items():
            p = subparsers.add_parser(name, help=help_text, description=help_text)
            for cls in classes:
                add_dataclass_args(p, cls)
            p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dsbs.experiment import SweepFailed

    try:
        args.func(args)
    except UserError as err:  # a message, no traceback; anything else is a bug and keeps its traceback
        print(f"dsbs: error: {err}", file=sys.stderr)
        return 2
    except SweepFailed as err:  # each failure was printed as it happened
        print(f"dsbs: error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `dsbs ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141
    except (OSError, sqlite3.Error) as err:  # a full disk, a read-only directory: the system's words suffice
        print(f"dsbs: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dsbs: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
