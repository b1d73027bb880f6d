"""Experiment tracking (`--report-to`): tensorboard, trackio, wandb or mlflow, as transformers and TRL do.

A run's tracker is opened by the main process only; its identity is kept in the run directory
(``tracker.json``), so a resumed run continues the same tracker run and `dsbs evaluate` /
`dsbs experiment` add the test metrics to it.
"""

import json
from pathlib import Path

from dsbs.errors import MissingDependency
from dsbs.files import write_atomic

TRACKERS = ("none", "tensorboard", "trackio", "wandb", "mlflow")
STATE_FILE = "tracker.json"
INSTALL = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb", "mlflow": "mlflow"}


def _require(kind: str):
    import importlib

    module = {"tensorboard": "torch.utils.tensorboard"}.get(kind, kind)
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(f"--report-to {kind} needs the {INSTALL[kind]} package: "
                                f"pip install 'dsbs[{kind}]'") from None


class Tracker:
    """One run in one tracking backend: log(metrics, step), then finish()."""

    def __init__(self, kind: str, run_dir: Path, project: str, config: dict | None = None, first_step: int = 0):
        self.kind, self.run_dir = kind, Path(run_dir)
        state_path = self.run_dir / STATE_FILE
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        name = self.run_dir.name
        if kind == "tensorboard":
            writer = _require(kind).SummaryWriter
            # a resumed run drops what was logged after its checkpoint, as log.jsonl does
            self.backend = writer(log_dir=str(self.run_dir / "tensorboard"), purge_step=first_step or None)
            if config:
                self.backend.add_text("config", f"```\n{json.dumps(config, indent=2)}\n```")
            state = {"kind": kind, "log_dir": str(self.run_dir / "tensorboard")}
        elif kind == "trackio":
            trackio = _require(kind)
            self.backend = trackio.init(project=state.get("project", project), name=state.get("name", name),
                                        config=config, resume="allow", embed=False)
            state = {"kind": kind, "project": state.get("project", project), "name": state.get("name", name)}
        elif kind == "wandb":
            wandb = _require(kind)
            self.backend = wandb.init(project=project, name=name, id=state.get("id"), resume="allow", config=config,
                                      dir=str(self.run_dir))
            state = {"kind": kind, "project": project, "id": self.backend.id}
        else:
            mlflow = _require(kind)
            mlflow.set_experiment(project)
            self.backend = mlflow.start_run(run_id=state.get("id"), run_name=name)
            if config and not state:
                mlflow.log_params({k: str(v)[:500] for k, v in flatten(config).items()})
            state = {"kind": kind, "project": project, "id": self.backend.info.run_id}
        write_atomic(state_path, json.dumps(state, indent=2))

    def log(self, metrics: dict, step: int) -> None:
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if self.kind == "tensorboard":
            for key, value in numbers.items():
                self.backend.add_scalar(key, value, step)
            self.backend.flush()
        elif self.kind == "trackio":
            self.backend.log(numbers, step=step)
        elif self.kind == "wandb":
            self.backend.log(numbers, step=step)
        else:
            import mlflow

            mlflow.log_metrics(numbers, step=step)

    def finish(self) -> None:
        if self.kind == "tensorboard":
            self.backend.close()
        elif self.kind in ("trackio", "wandb"):
            self.backend.finish()
        else:
            import mlflow

            mlflow.end_run()


def flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def open_tracker(kind: str, run_dir: Path, project: str = "dsbs", config: dict | None = None,
                 first_step: int = 0) -> Tracker | None:
    return None if kind == "none" else Tracker(kind, run_dir, project, config, first_step)


def resume_tracker(run_dir: Path) -> Tracker | None:
    """The tracker run a training run in ``run_dir`` opened, to add metrics to it; None if it had none."""
    state_path = Path(run_dir) / STATE_FILE
    if not state_path.is_file():
        return None
    state = json.loads(state_path.read_text())
    return Tracker(state["kind"], Path(run_dir), state.get("project", "dsbs"))
