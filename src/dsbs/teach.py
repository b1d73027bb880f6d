"""`dsbs teach`: annotate a task's inputs with a teacher LLM's rationales and labels.

For each input: render the few-shot chain-of-thought prompt, ask the teacher (an
OpenAI-compatible server, or a local model in-process), parse its answer with the task's parser.
Every answer goes into a SQLite cache the moment it arrives, keyed by everything that
determines it, so a re-run or a run resumed after a kill asks nothing twice; the outputs are
written at the end in the layout the task loaders read.
"""

import hashlib
import json
import os
import random
import sqlite3
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

from dsbs.configs import TeachConfig
from dsbs.errors import MissingDependency
from dsbs.files import write_atomic
from dsbs.models import DEFAULT_STUDENT
from dsbs.prompts import chat_messages, completion_prompt, exemplars_from_rows, load_prompt
from dsbs.tasks import TaskConfig, get_task
from dsbs.tasks.common import resolve_data_dir


class RetryableError(Exception):
    """A failure worth another try: a timeout, 429, 5xx or an unreadable reply."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def backoff_delay(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * 2**attempt))


def call_with_retries(call, max_retries: int, sleep=time.sleep):
    """call() until it succeeds, a non-retryable error, or max_retries retries; Retry-After is honoured."""
    for attempt in range(max_retries + 1):
        try:
            return call()
        except RetryableError as err:
            if attempt == max_retries:
                raise
            sleep(err.retry_after if err.retry_after is not None else backoff_delay(attempt))


class OpenAIBackend:
    """Any OpenAI-compatible server through the official client (its own retries off: ours count)."""

    def __init__(self, config: TeachConfig):
        try:
            import openai
        except ImportError:
            raise MissingDependency("the openai backend needs the openai package: pip install 'dsbs[openai]'") from None
        self.openai = openai
        self.client = openai.OpenAI(base_url=config.base_url, api_key=os.environ.get(config.api_key_env) or "none",
                                    timeout=config.timeout, max_retries=0)
        self.model = config.model

    def __call__(self, request: dict) -> dict:
        openai = self.openai
        try:
            if "messages" in request:
                reply = self.client.chat.completions.create(model=self.model, **request)
                text = reply.choices[0].message.content
            else:
                reply = self.client.completions.create(model=self.model, **request)
                text = reply.choices[0].text
        except openai.RateLimitError as err:
            raise RetryableError(f"429: {err}", _retry_after(err.response)) from None
        except openai.APIStatusError as err:
            if err.status_code >= 500 or err.status_code in (408, 409):
                raise RetryableError(f"{err.status_code}: {err}", _retry_after(err.response)) from None
            raise
        except (openai.APITimeoutError, openai.APIConnectionError, openai.APIResponseValidationError) as err:
            raise RetryableError(f"{type(err).__name__}: {err}") from None
        except (ValueError, AttributeError, IndexError, TypeError, KeyError) as err:  # a garbled body
            raise RetryableError(f"unreadable reply: {err!r}") from None
        if not isinstance(text, str):
            raise RetryableError("reply without text")
        usage = reply.usage
        return {"text": text, "prompt_tokens": getattr(usage, "prompt_tokens", None),
                "completion_tokens": getattr(usage, "completion_tokens", None)}


def _retry_after(response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after")))
    except (TypeError, ValueError, AttributeError):
        return None


class LocalBackend:
    """An in-process model: llama-cpp-python for GGUF files when installed, transformers otherwise.

    One model answers one request at a time, so calls are serialised whatever the concurrency.
    """

    def __init__(self, config: TeachConfig):
        self.lock = threading.Lock()
        self.llama = None
        gguf = _gguf_path(config.model)
        if gguf is not None:
            try:
                from llama_cpp import Llama

                self.llama = Llama(model_path=gguf, n_ctx=4096, n_threads=os.cpu_count(), verbose=False)
            except ImportError:
                pass
        if self.llama is None:
            from dsbs.models import load_student

            if gguf is not None and config.model != DEFAULT_STUDENT:
                raise MissingDependency("a .gguf teacher needs llama-cpp-python: pip install 'dsbs[llama]'")
            self.model, self.tokenizer = load_student(config.model)
            self.model.eval()

    def __call__(self, request: dict) -> dict:
        with self.lock:
            if self.llama is not None:
                if "messages" in request:
                    reply = self.llama.create_chat_completion(**request)
                    text = reply["choices"][0]["message"]["content"]
                else:
                    reply = self.llama.create_completion(**request)
                    text = reply["choices"][0]["text"]
                usage = reply.get("usage", {})
                return {"text": text, "prompt_tokens": usage.get("prompt_tokens"),
                        "completion_tokens": usage.get("completion_tokens")}
            return self._generate(request)

    def _generate(self, request: dict) -> dict:
        import torch

        if "messages" in request:
            prompt = self.tokenizer.apply_chat_template(request["messages"], tokenize=False, add_generation_prompt=True)
        else:
            prompt = request["prompt"]
        ids = self.tokenizer(prompt, return_tensors="pt")
        sampling = {"do_sample": False}
        if request["temperature"] > 0:
            sampling = {"do_sample": True, "temperature": request["temperature"]}
        with torch.inference_mode():
            out = self.model.generate(**ids, max_new_tokens=request["max_tokens"],
                                      pad_token_id=self.tokenizer.pad_token_id, tokenizer=self.tokenizer,
                                      stop_strings=list(request.get("stop") or []) or None, **sampling)
        new = out[0, ids["input_ids"].shape[1]:]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        for stop in request.get("stop") or []:
            text = text.split(stop)[0]
        return {"text": text, "prompt_tokens": ids["input_ids"].shape[1], "completion_tokens": len(new)}


def _gguf_path(model: str) -> str | None:
    if model == DEFAULT_STUDENT:
        from dsbs.models import smollm2_gguf_path

        return str(smollm2_gguf_path())
    return model if model.endswith(".gguf") else None


class AnswerCache:
    """SQLite, one row per answered request, committed as it arrives (WAL: a kill loses nothing written)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL)")
        self.lock = threading.Lock()

    def get(self, key: str) -> dict | None:
        with self.lock:
            row = self.db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, answer: dict) -> None:
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?)", (key, json.dumps(answer)))


def request_key(config: TeachConfig, request: dict, sample: int) -> str:
    """Everything that determines an answer; with temperature 0 the samples share one answer."""
    identity = {"backend": config.backend, "model": config.model, "base_url": config.base_url, "request": request,
                "sample": sample if config.temperature > 0 else 0}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def majority(parsed: list[tuple[str | None, str | None]]) -> tuple[str | None, str | None, list[str]]:
    """(a rationale, the majority label, every rationale that agrees with it) of several answers."""
    votes = Counter(label for _, label in parsed if label is not None)
    if not votes:
        return None, None, []
    label = votes.most_common(1)[0][0]
    agreeing = [r for r, lab in parsed if lab == label and r]
    return (agreeing[0] if agreeing else None), label, agreeing


def teach(task_config: TaskConfig, config: TeachConfig) -> dict:
    """Annotate, write the outputs, return the summary (also written as teach_summary.json)."""
    from tqdm.auto import tqdm

    task = get_task(task_config)
    split = config.split or task.train_split
    rows = task.load(split)
    rows = rows[: config.limit] if config.limit else rows
    if config.prompt_file or task.paper_layout:
        spec = load_prompt(config.prompt_file or task_config.task)
    else:
        from dsbs.prompts import PromptSpec

        spec = PromptSpec("", "Q: {input}\nA:", ("\nQ:",), exemplars_from_rows(rows))
    sampling = {"temperature": config.temperature, "max_tokens": config.max_tokens, "stop": list(spec.stop)}

    def request_for(text: str) -> dict:
        if config.api == "chat":
            return {"messages": chat_messages(spec, text), **sampling}
        return {"prompt": completion_prompt(spec, text), **sampling}

    output = Path(config.output)
    cache = AnswerCache(output / "cache.sqlite")
    backend = None  # started only if something is not cached
    jobs = [(i, s, request_for(row.input)) for i, row in enumerate(rows) for s in range(config.samples)]
    answers: dict[tuple[int, int], dict] = {}
    pending = []
    for i, s, request in jobs:
        key = request_key(config, request, s)
        cached = cache.get(key)
        if cached is not None:
            answers[(i, s)] = cached
        else:
            pending.append((i, s, request, key))

    started = time.perf_counter()
    stats = Counter(cached=len(answers))
    bar = tqdm(total=len(jobs), initial=len(answers), desc=f"teach {task.name}/{split}", unit="answer")
    if pending:
        backend = OpenAIBackend(config) if config.backend == "openai" else LocalBackend(config)

        def ask(request: dict, key: str) -> dict:
            answer = call_with_retries(lambda: backend(request), config.max_retries)
            cache.put(key, answer)  # in the worker, so a kill loses only requests still in flight
            return answer

        with ThreadPoolExecutor(max_workers=config.concurrency) as pool:
            futures = {pool.submit(ask, request, key): (i, s, key) for i, s, request, key in pending}
            for future in as_completed(futures):
                i, s, key = futures[future]
                try:
                    answer = future.result()
                except Exception as err:  # recorded per item; the run goes on
                    answers[(i, s)] = {"error": f"{type(err).__name__}: {err}"}
                    stats["failed"] += 1
                else:
                    answers[(i, s)] = answer
                    stats["answered"] += 1
                    stats["tokens"] += (answer.get("prompt_tokens") or 0) + (answer.get("completion_tokens") or 0)
                    stats["parse_failures"] += task.read_answer(answer["text"], rows[i])[1] is None
                bar.update(1)
                bar.set_postfix(failed=stats["failed"], unparsed=stats["parse_failures"], tokens=stats["tokens"])
    bar.close()

    records = []
    for i, row in enumerate(rows):
        got = [answers[(i, s)] for s in range(config.samples)]
        texts = [a["text"] for a in got if "text" in a]
        answers = [task.read_answer(t, row) for t in texts]
        parsed = [(rationale, label) for rationale, label, _ in answers]
        rationale, label, agreeing = majority(parsed)
        # the completion written for training is one whose parsed label is the majority's
        chosen = next((k for k, (_, lab) in enumerate(parsed) if label is not None and lab == label), 0)
        records.append({
            "index": i, "input": row.input, "gold": row.label, "rationale": rationale, "label": label,
            "label_as_written": answers[chosen][2] if label is not None else None,
            "agreeing_rationales": agreeing if config.samples > 1 else None, "completions": texts, "chosen": chosen,
            "errors": [a["error"] for a in got if "error" in a],
            "prompt_tokens": sum(a.get("prompt_tokens") or 0 for a in got if "text" in a),
            "completion_tokens": sum(a.get("completion_tokens") or 0 for a in got if "text" in a),
        })
    files = write_outputs(task_config, task, split, records, output)
    graded = [r for r in records if r["gold"] is not None]
    # scored as the paper scores it: the label as the teacher wrote it
    correct = sum(r["label_as_written"] is not None and task.labels_match(r["label_as_written"], r["gold"])
                  for r in graded)
    summary = {
        "task": task.name, "split": split, "items": len(records), "requests_made": stats["answered"] + stats["failed"],
        "answers_from_cache": stats["cached"], "failed_items": sum(1 for r in records if not r["completions"]),
        "parse_failures": sum(1 for r in records if r["completions"] and r["label"] is None),
        "teacher_accuracy": round(correct / len(graded), 4) if graded else None,
        "prompt_tokens": sum(r["prompt_tokens"] for r in records),
        "completion_tokens": sum(r["completion_tokens"] for r in records),
        "seconds": round(time.perf_counter() - started, 2), "files": files, "config": asdict(config),
    }
    (output / "teach_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def write_outputs(task_config: TaskConfig, task, split: str, records: list[dict], output: Path) -> list[str]:
    """Outputs in the layout the loaders read, plus every raw completion and its token usage.

    A benchmark gets the paper's layout (its gold rows, the other splits' gold files, and
    llm/{split}_CoT_0.json aligned by position), so `--data-dir OUTPUT` trains on it; any other
    task gets a JSONL file with input, label, rationale and teacher_label fields.
    """
    written, name = [], task.name
    if task.paper_layout:
        source = resolve_data_dir(task_config.data_dir) / name
        target = output / name
        for gold in source.glob(f"{name}_*.json"):
            lines = gold.read_text(encoding="utf-8").splitlines(keepends=True)
            keep = [line for line in lines if line.strip()]
            if gold.name == f"{name}_{split}.json":
                keep = keep[: len(records)]
            write_atomic(target / gold.name, "".join(keep))
        # the loader parses one text per row: the one whose label won the vote
        completions = [r["completions"][r["chosen"]] if r["completions"] else "" for r in records]
        write_atomic(target / "llm" / f"{split}_CoT_0.json", json.dumps(completions, ensure_ascii=False))
        written += [str(target / f"{name}_{split}.json"), str(target / "llm" / f"{split}_CoT_0.json")]
        details = target / "llm" / f"{split}_teacher.jsonl"
    else:
        rows = [{"input": r["input"], "label": r["gold"], "rationale": r["rationale"], "teacher_label": r["label"]}
                for r in records]
        path = output / f"{name}_{split}.jsonl"
        write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        written.append(str(path))
        details = output / f"{name}_{split}_teacher.jsonl"
    write_atomic(details, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return written + [str(details)]
