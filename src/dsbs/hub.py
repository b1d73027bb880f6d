"""The Hugging Face Hub: a teach output as a `datasets` dataset with its card, and `dsbs push`.

A card says how the data was made (teacher, backend, prompt with its exemplars, sampling, counts,
token usage, dsbs version) and, for data derived from the paper's benchmarks, under which licences
its sources are. `dsbs push` uploads a teach output or a student directory with its card, and
never checkpoints, the answer cache, locks, or a file that holds a credential.
"""

import json
import os
import sys
from pathlib import Path

from dsbs import __version__
from dsbs.errors import MissingDependency, UserError
from dsbs.files import write_atomic
from dsbs.redaction import redact, safe_url

NEVER_PUSHED = ("checkpoints", "cache.sqlite", "cache.sqlite-wal", "cache.sqlite-shm", ".dsbs.lock", "tracker.json",
                "tensorboard", "wandb", "mlruns")


def write_teach_dataset(output: Path, task, split: str, records: list[dict], summary: dict, spec, config,
                        details: Path) -> list[str]:
    """README.md (the dataset card) and, with pyarrow, data/{split}-00000-of-00001.parquet in ``output``; without
    pyarrow the card points at ``details``, the teacher's JSONL."""
    data = write_parquet(output / "data" / f"{split}-00000-of-00001.parquet", records)
    data_files = f"data/{split}-*.parquet" if data else details.relative_to(output).as_posix()
    if data is None:
        print(f"no parquet dataset written: pip install 'dsbs[hf]' (pyarrow) for one; the card points at {data_files}",
              file=sys.stderr)
    write_atomic(output / "README.md", dataset_card(task, split, summary, spec, config, data_files))
    return [str(path) for path in (data, output / "README.md") if path]


def write_parquet(path: Path, records: list[dict]) -> Path | None:
    """The records with the card's fields as parquet; None without pyarrow."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    rows = [{"id": r["id"], "input": r["input"], "label": r["label"], "rationale": r["rationale"],
             "teacher_label": r["teacher_label"], "errors": r["errors"],
             "completion": r["completions"][r["chosen"]] if r["completions"] else None} for r in records]
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    write_atomic(path, sink.getvalue().to_pybytes())
    return path


def dataset_card(task, split: str, summary: dict, spec, config, data_files: str) -> str:
    """README.md with YAML metadata, as the Hub reads dataset cards."""
    meta = {
        "configs": [{"config_name": "default", "data_files": [{"split": split, "path": data_files}]}],
        "tags": ["distilling-step-by-step", "rationales", "dsbs"],
        "license": "other" if task.sources else "unknown",
        "dsbs": {"version": __version__, "task": task.name, "split": split,
                 "teacher": {"backend": config.backend, "model": config.model, "base_url": safe_url(config.base_url),
                             "api": config.api},
                 "sampling": {"temperature": config.temperature, "max_tokens": config.max_tokens,
                              "samples": config.samples},
                 "counts": {k: summary[k] for k in ("items", "failed_items", "parse_failures", "cut_replies",
                                                     "answers_from_cache")},
                 "tokens": {"prompt": summary["prompt_tokens"], "completion": summary["completion_tokens"]},
                 "teacher_accuracy": summary["teacher_accuracy"], "prompt": summary["prompt"],
                 "route": summary.get("route", "live")},
    }
    exemplars = "\n\n".join(f"Q: {x}\nA: {a}" for x, a in spec.exemplars)
    lines = ["---", json_as_yaml(meta), "---", "", f"# Teacher rationales for {task.name} ({split} split)", "",
             f"Made with dsbs {__version__} (`dsbs teach`): for each input the teacher `{config.model}` "
             f"({config.backend} backend, {config.api} API) answered a few-shot chain-of-thought prompt; its answer "
             "was parsed into a rationale and a label.", "",
             f"- requests: {route_text(summary.get('route', 'live'), config)}",
             f"- items: {summary['items']}; failed: {summary['failed_items']}; "
             f"unparsable: {summary['parse_failures']}; replies cut to the size bound: {summary['cut_replies']}",
             f"- tokens: {summary['prompt_tokens']} prompt, {summary['completion_tokens']} completion over the "
             "answers (a request that rows with equal inputs share counted once)" + this_run_note(summary),
             f"- sampling: temperature {config.temperature}, max_tokens {config.max_tokens}, samples {config.samples}",
             f"- teacher accuracy on the gold labels: {summary['teacher_accuracy']} over the "
             f"{summary['teacher_accuracy_rows']} rows it answered (not scored: {summary['exemplar_rows_not_scored']} "
             "rows that are exemplars of the prompt, and the failed items)",
             f"- prompt: {summary['prompt']}",
             "- fields: `input` (the student input), `label` (gold, where the row has one), `rationale` and "
             "`teacher_label` (the teacher's; empty where its answer did not parse), "
             + ("`completion`, `errors`" if data_files.endswith(".parquet") else
                "`completions` (every sample), `errors`, token counts (no parquet: pyarrow was not installed)"), ""]
    if task.sources:
        lines += ["## Sources and licences", "", f"Derived from {task.sources}; these licences apply to the "
                  "inputs and gold labels, and the teacher's terms of use to its outputs.", ""]
    lines += ["## Prompt", "", "Instruction:", "", "```", spec.instruction or "(none)", "```", "",
              "Exemplars:", "", "```", exemplars, "```", ""]
    return "\n".join(lines)


def route_text(route: str, config) -> str:
    """How the card's answers were asked for."""
    if route == "live":
        return ("answered in process, one at a time" if config.backend == "local" else
                f"sent live, up to {config.concurrency} at a time")
    return ROUTES[route]


ROUTES = {"batch": "sent through the provider's batch route (half the price, "
          "answered within 24 hours; batch ids in batches.json)", "ingest": "read from a batch results file (--ingest: "
          "an offline run such as vllm run-batch, or a provider's batch output)"}


def this_run_note(summary: dict) -> str:
    """What the run that wrote the card sent, beside the estimate made before it sent the rows' requests."""
    run = summary.get("this_run")
    if not run:
        return ""
    if summary.get("route") == "ingest":
        return f"; this run read {summary['answers_ingested']} answers from the results file and sent nothing"
    writing = f", {run['exemplar_requests']} of them writing exemplars first" if run["exemplar_requests"] else ""
    text = (f"; this run sent {run['requests']} requests{writing}: {run['prompt_tokens']} prompt, "
            f"{run['completion_tokens']} completion tokens")
    estimate = summary.get("estimate")
    if estimate:
        text += (f" (estimated before its {estimate['requests']} rows' requests: {estimate['prompt_tokens']} "
                 f"prompt, about {estimate['completion_tokens_estimate']} completion, counted with "
                 f"{estimate['prompt_tokens_counted_with']})")
    return text


def json_as_yaml(value) -> str:
    """YAML for the card header (JSON is valid YAML; pyyaml, a dependency, makes it readable)."""
    import yaml

    return yaml.safe_dump(json.loads(json.dumps(value)), sort_keys=False, allow_unicode=True).strip()


def files_to_push(directory: Path) -> tuple[list[str], list[str]]:
    """(files to upload, files left out and why) of a teach output or student directory."""
    keep, left_out = [], []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory)
        if any(part in NEVER_PUSHED or part.startswith(".") for part in relative.parts):
            left_out.append(f"{relative} (never pushed)")
            continue
        if path.stat().st_size < 5_000_000 and path.suffix in (".json", ".jsonl", ".md", ".txt", ".yaml", ".yml"):
            text = path.read_text(errors="replace")
            if redact(text) != text:
                left_out.append(f"{relative} (holds something like a credential)")
                continue
        keep.append(str(relative))
    return keep, left_out


def push(directory: str, repo_id: str, private: bool = False) -> dict:
    """Upload a teach output (a dataset repo) or a student (a model repo) with its card."""
    root = Path(directory)
    if (root / "dsbs.json").is_file():
        repo_type = "model"
    elif (root / "teach_summary.json").is_file():
        repo_type = "dataset"
    else:
        raise UserError(f"{directory} is neither a student (dsbs.json) nor a teach output (teach_summary.json)")
    if not (root / "README.md").is_file():
        raise UserError(f"{directory} has no README.md card; train or teach again with this dsbs to write one")
    files, left_out = files_to_push(root)
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise MissingDependency("dsbs push needs huggingface_hub: pip install 'dsbs[hf]'") from None
    api = HfApi(token=os.environ.get("HF_TOKEN") or None)  # else the token of `hf auth login`
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(root), repo_id=repo_id, repo_type=repo_type, allow_patterns=files,
                      commit_message=f"dsbs {__version__}: upload {repo_type}")
    return {"repo_id": repo_id, "repo_type": repo_type, "files": files, "left_out": left_out}
