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
import sqlite3
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path

from dsbs.configs import TeachConfig
from dsbs.cost import estimate, token_counter
from dsbs.errors import DataError, MissingDependency, UserError
from dsbs.files import exclusive, write_atomic
from dsbs.names import DEFAULT_STUDENT
from dsbs.prompts import (
    PromptSpec,
    chat_messages,
    completion_prompt,
    exemplars_from_rows,
    load_prompt,
    own_instruction,
    prompt_json,
    worked_answer,
)
from dsbs.redaction import redact, safe_url
from dsbs.retries import RetryableError, TeacherStopped, call_with_retries, openai_server, seconds
from dsbs.tasks import TaskConfig, get_task
from dsbs.tasks.common import cut_at_next_example, resolve_data_dir


def reply_limit(config: TeachConfig) -> int:
    """Characters of completion text kept per reply: a token is rarely more than a few characters."""
    return config.max_reply_chars or 32 * config.max_tokens


class HTTPBackend:
    """Any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama, TGI) over plain HTTP.

    Every request has an overall deadline (``timeout``: a server trickling bytes cannot hold it
    open longer), its reply is read up to a size bound derived from max_tokens, 401/403 stop the
    run, and no credential ends up in an error text.
    """

    def __init__(self, config: TeachConfig):
        self.config = config
        self.httpx, self.key, self.base = openai_server(config, "the openai backend")
        self.headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        self.max_bytes = 65536 + 8 * reply_limit(config)  # JSON around the text, escapes, usage
        self.client = self.httpx.Client(timeout=self.httpx.Timeout(config.timeout))

    def __call__(self, request: dict) -> dict:
        path = "/chat/completions" if "messages" in request else "/completions"
        deadline = time.monotonic() + self.config.timeout
        try:
            with self.client.stream("POST", self.base + path, json={"model": self.config.model, **request},
                                    headers=self.headers) as response:
                body = self._read(response, deadline)
        except self.httpx.HTTPError as err:  # timeouts, refused or dropped connections, broken transfers
            raise RetryableError(self._clean(f"{type(err).__name__}: {err}")) from None
        self._check_status(response.status_code, body, response.headers.get("retry-after"))
        return self._parse(body)

    def _read(self, response, deadline: float) -> bytes:
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if time.monotonic() > deadline:
                raise RetryableError(f"no whole reply within the {self.config.timeout:g} s deadline (timeout)")
            if size > self.max_bytes:
                raise ReplyTooLarge(f"reply larger than {self.max_bytes:,} bytes for max_tokens "
                                    f"{self.config.max_tokens} (max_reply_chars); not read further")
        return b"".join(chunks)

    def _check_status(self, status: int, body: bytes, retry_after: str | None) -> None:
        if status < 400:
            return
        detail = self._clean(body[:500].decode("utf-8", "replace"))
        if status in (401, 403):
            raise TeacherStopped(f"the teacher at {safe_url(self.base)} refused the request (HTTP {status}): {detail}; "
                                 f"check the key in ${self.config.api_key_env} and --model")
        if status == 429 or status >= 500 or status in (408, 409):
            raise RetryableError(f"HTTP {status}: {detail}", seconds(retry_after))
        raise RequestRefused(f"HTTP {status}: {detail}")

    def _parse(self, body: bytes) -> dict:
        try:
            reply = json.loads(body)
            choice = reply["choices"][0]
            text = choice["message"]["content"] if "message" in choice else choice["text"]
            usage = reply.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            raise RetryableError(f"unreadable reply: {type(err).__name__}") from None
        if not isinstance(text, str):
            raise RetryableError("reply without text")
        return {"text": text, "prompt_tokens": usage.get("prompt_tokens"),
                "completion_tokens": usage.get("completion_tokens")}

    def _clean(self, text: str) -> str:
        return redact(text, (self.key,))


class ReplyTooLarge(Exception):
    """A reply past the size bound: not retried (the same server would do it again), recorded as cut."""


class RequestRefused(Exception):
    """A 4xx other than 401/403/408/409/429: this request is wrong; other items may still work."""


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
        self.path = path
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL)")
        self.lock = threading.Lock()

    def get(self, key: str) -> dict | None:
        with self.lock:
            row = self.db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, answer: dict) -> None:
        try:
            with self.lock:
                self.db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?)", (key, json.dumps(answer)))
        except (sqlite3.Error, OSError) as err:
            raise TeacherStopped(f"cannot store the teacher's answers in {self.path} ({err}); the answers stored "
                                 "so far are kept: free space and run the same command again") from None


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


def make_request(config: TeachConfig, spec, text: str) -> dict:
    sampling = {"temperature": config.temperature, "max_tokens": config.max_tokens, "stop": list(spec.stop)}
    if config.api == "chat":
        return {"messages": chat_messages(spec, text), **sampling}
    return {"prompt": completion_prompt(spec, text), **sampling}


def ask(backend, request: dict, key: str, cache: "AnswerCache", config: TeachConfig, stats: Counter) -> dict:
    """One request with retries, its reply cut to the bound, stored before it is returned."""
    def capped(asked: float) -> None:
        stats["retry_after_capped"] += 1
        print(f"the teacher asked for a {asked:g} s pause; waiting {config.max_retry_after:g} s (max_retry_after)",
              file=sys.stderr)

    answer = call_with_retries(lambda: backend(request), config.max_retries, max_retry_after=config.max_retry_after,
                               on_capped=capped)
    if len(answer["text"]) > reply_limit(config):
        answer = {**answer, "text": answer["text"][: reply_limit(config)], "cut": True}
    cache.put(key, answer)  # in the worker, so a kill loses only requests still in flight
    return answer


def ask_all(backend, pending: list, cache: "AnswerCache", config: TeachConfig, answers: dict, stats: Counter,
            on_answer) -> None:
    """Ask for every pending request, ``concurrency`` at a time.

    A failed item is recorded and the run goes on; a refused key or a failed cache write stops it,
    and so does Ctrl-C: requests not yet sent are cancelled, those in flight are finished and
    stored, then the stop propagates.
    """
    secrets = (os.environ.get(config.api_key_env) or "",)
    asked_by = {}  # a key once, for every (row, sample) that needs it: duplicated rows are asked (and paid) once
    for i, s, request, key in pending:
        asked_by.setdefault(key, (request, []))[1].append((i, s))
    pool = ThreadPoolExecutor(max_workers=config.concurrency)
    futures = {pool.submit(ask, backend, request, key, cache, config, stats): items
               for key, (request, items) in asked_by.items()}
    try:
        for future in as_completed(futures):
            try:
                answer = future.result()
            except TeacherStopped:
                raise
            except Exception as err:  # recorded per item; the run goes on
                answer = {"error": redact(f"{type(err).__name__}: {err}", secrets),
                          "cut": isinstance(err, ReplyTooLarge)}
            for i, s in futures[future]:
                answers[(i, s)] = answer
                on_answer(i, answer)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class Teacher:
    """The backend, started on first need: a run answered wholly from the cache starts none."""

    def __init__(self, config: TeachConfig):
        self.config, self.backend = config, None
        self.exemplar_spend = Counter()  # requests sent to write exemplars, and their tokens

    def started(self):
        if self.backend is None:
            self.backend = HTTPBackend(self.config) if self.config.backend == "openai" else LocalBackend(self.config)
        return self.backend


class NoTeacher(Teacher):
    """The offline routes (--batch-file, --ingest): a prompt whose exemplars the teacher must write first
    cannot be built without one."""

    def started(self):
        raise UserError("this prompt needs exemplars the teacher writes first, and --batch-file/--ingest reach no "
                        "teacher: run once without them (the exemplars are cached), or pass --zero-shot or "
                        "--prompt-file")


def split_cached(requests: list[tuple[int, dict]], cache, config: TeachConfig,
                 samples: int) -> tuple[dict, list]:
    """(answers the cache holds by (row, sample), the (row, sample, request, key) still to ask)."""
    answers, pending = {}, []
    for i, request in requests:
        for s in range(samples):
            key = request_key(config, request, s)
            cached = cache.get(key)
            if cached is not None:
                answers[(i, s)] = cached
            else:
                pending.append((i, s, request, key))
    return answers, pending


def ask_pending(teacher: Teacher, cached: dict, pending: list, cache: AnswerCache, config: TeachConfig,
                on_answer=None) -> tuple[dict, Counter]:
    """Answers by (row, sample): ``cached`` (what the cache held, from split_cached) and the teacher's to
    ``pending``."""
    answers, stats = dict(cached), Counter(cached=len(cached))
    if pending:
        ask_all(teacher.started(), pending, cache, config, answers, stats, on_answer or (lambda i, answer: None))
    return answers, stats


class NoCache:
    """A dry run's view of a cache that does not exist yet: nothing answered."""

    def get(self, key: str) -> None:
        return None


def own_marker(task) -> str:
    from dsbs.tasks.custom import DEFAULT_MARKER

    return task.config.get("answer_marker") or DEFAULT_MARKER


def zero_shot_prompt(task):
    """A benchmark's built-in prompt without its exemplars, or an own task's instruction alone."""
    if task.paper_layout:
        return replace(load_prompt(task.name), exemplars=())
    from dsbs.tasks.custom import label_set

    labels = label_set(task.config.get("label_set"))
    return PromptSpec(own_instruction(own_marker(task), labels, task.config.get("metric") == "equation"),
                      "Q: {input}\nA:", ("\nQ:",), ())


def prompt_origin(task, config: TeachConfig, rows) -> str:
    """Where the prompt comes from: "file", "zero-shot", "builtin", "rows" (exemplars from labelled rows with a
    rationale) or "teacher" (rows without rationales: the teacher writes the exemplars' rationales first)."""
    if config.prompt_file:
        return "file"
    if config.zero_shot:
        return "zero-shot"
    if task.paper_layout:
        return "builtin"
    return "rows" if exemplars_from_rows(rows, own_marker(task), config.exemplars) else "teacher"


def teacher_prompt(task, config: TeachConfig, rows, teacher: Teacher | None, cache) -> tuple:
    """(prompt, how it was made), from the source ``prompt_origin`` names; without a ``teacher`` (a dry run),
    exemplars the teacher would write that are not yet in the cache are placeholders of a typical length."""
    origin = prompt_origin(task, config, rows)
    if origin == "file":
        return load_prompt(config.prompt_file), f"the prompt file {config.prompt_file}"
    if origin == "zero-shot":
        return zero_shot_prompt(task), "zero-shot: the instruction alone, no exemplars"
    if origin == "builtin":
        return load_prompt(task.name), f"the built-in prompt of {task.name}"
    base = zero_shot_prompt(task)
    if origin == "rows":
        exemplars = exemplars_from_rows(rows, own_marker(task), config.exemplars)
        return replace(base, exemplars=exemplars), f"exemplars from {len(exemplars)} labelled rows with a rationale"
    exemplars = teacher_exemplars(task, config, rows, teacher, cache)
    return replace(base, exemplars=exemplars), (f"exemplars written by the teacher for {len(exemplars)} labelled "
                                                "rows, given their gold labels")


def exemplar_candidates(rows, count: int) -> list:
    """Labelled rows taken in turn from each label, so that the exemplars cover the labels."""
    by_label: dict[str, list] = {}
    for row in rows:
        if row.label is not None:
            by_label.setdefault(row.label, []).append(row)
    queues, picked = list(by_label.values()), []
    while queues and len(picked) < count:
        picked += [queue.pop(0) for queue in queues][: count - len(picked)]
        queues = [queue for queue in queues if queue]
    return picked


def written_rationale(task, text: str, row) -> str | None:
    """The rationale of an answer written for ``row`` given its label; None if it argues for another label."""
    marker = own_marker(task)
    text = cut_at_next_example(text, ("\nQ:",))
    rationale, label, _ = task.read_answer(text, row)
    if label is not None and not task.labels_match(label, row.label):
        return None
    if rationale is None:  # no marker: the whole answer argues for the label it was given
        rationale = text.split(marker)[0].strip()
    return rationale if len(rationale.split()) >= 3 else None


PLACEHOLDER_RATIONALE = " ".join(["reason"] * 48)  # about the default answer length, for a dry run's count


def exemplar_requests(task, config: TeachConfig, rows) -> tuple[list, list[tuple[int, dict]]]:
    """(the labelled rows the teacher is asked to explain, their requests)."""
    candidates = exemplar_candidates(rows, 2 * config.exemplars)
    if not candidates:
        raise DataError("no labelled rows to make exemplars from, and no rationales: pass --zero-shot, or "
                        "--prompt-file with exemplars you wrote (its format: dsbs teach --help)")
    marker = own_marker(task)
    spec = PromptSpec(f"The correct answer to each question is given. Explain step by step why it is correct, "
                      f"then end with '{marker}' and the answer.", "Q: {input}\nA:", ("\nQ:",), ())
    return candidates, [(i, make_request(config, spec, f"{row.input}\n(The correct answer: {row.label}.)"))
                        for i, row in enumerate(candidates)]


def teacher_exemplars(task, config: TeachConfig, rows, teacher: Teacher | None, cache) -> tuple:
    """Exemplars for an own task whose rows have no rationales: the teacher explains labelled rows' gold labels."""
    marker = own_marker(task)
    candidates, requests = exemplar_requests(task, config, rows)
    answers, pending = split_cached(requests, cache, config, 1)
    if teacher is not None and pending:  # else a dry run (placeholders for the rest), or all in the cache
        print(f"writing exemplars: the teacher explains {len(pending)} labelled rows", file=sys.stderr)
        answers, _ = ask_pending(teacher, answers, pending, cache, config)
        teacher.exemplar_spend = spend({key: answers[(i, 0)] for i, _, _, key in pending}.values())
    exemplars = []
    for i, row in enumerate(candidates):
        answer = answers.get((i, 0), {"text": PLACEHOLDER_RATIONALE})
        rationale = written_rationale(task, answer["text"], row) if "text" in answer else None
        if rationale and len(exemplars) < config.exemplars:
            exemplars.append((row.input, worked_answer(rationale, marker, row.label)))
    if not exemplars:
        raise TeacherStopped(f"the teacher wrote no usable rationale for the {len(candidates)} labelled rows it was "
                             "asked to explain: pass --zero-shot, or --prompt-file with exemplars you wrote (its "
                             "format: dsbs teach --help)")
    return tuple(exemplars)


def teach(task_config: TaskConfig, config: TeachConfig) -> dict:
    """Annotate, write the outputs, return the summary (also written as teach_summary.json); with
    ``config.dry_run`` only the estimate of what that would take, sending and writing nothing."""
    if config.dry_run:
        return dry_run(task_config, resolve_api(config))
    if config.cancel:
        from dsbs.batch import cancel_batches

        return cancel_batches(config, Path(config.output))
    with exclusive(config.output, "teach"):
        return _teach(task_config, config)


def dry_run(task_config: TaskConfig, config: TeachConfig) -> dict:
    """The requests a run would send, their tokens and cost, from the cache and the prompts alone."""
    task = get_task(task_config)
    split_rows = task.load(config.split or task.train_split)
    rows = split_rows[: config.limit] if config.limit else split_rows
    path = Path(config.output) / "cache.sqlite"
    cache = AnswerCache(path) if path.is_file() else NoCache()
    spec, prompt_source = teacher_prompt(task, config, split_rows, None, cache)
    requests = [(i, make_request(config, spec, row.input)) for i, row in enumerate(rows)]
    _, pending = split_cached(requests, cache, config, config.samples)
    to_write = []
    if prompt_origin(task, config, split_rows) == "teacher":
        to_write = distinct_requests(split_cached(exemplar_requests(task, config, split_rows)[1], cache, config, 1)[1])
    count, tokenizer, exact = token_counter(config)
    result = estimate(distinct_requests(pending), distinct_cached(requests, pending, config),
                      [a for _, a in spec.exemplars], config, count, tokenizer, exact and not to_write,
                      live_only=to_write)
    result |= {"prompt": prompt_source, "exemplar_requests": len(to_write)}
    if to_write:
        result["prompt_tokens_note"] = (f"{len(to_write)} requests first ask the teacher to write exemplars; the "
                                        "prompts count those exemplars at a typical length")
    return result


def resolve_api(config: TeachConfig) -> TeachConfig:
    """``config`` with --api auto decided: an in-process instruction-tuned model answers a bare completion
    prompt with an end-of-text token, so the local backend speaks chat."""
    if config.api != "auto":
        return config
    return replace(config, api="chat" if config.backend == "local" and has_chat_template(config.model) else
                   "completion")


def has_chat_template(model: str) -> bool:
    """A GGUF file (the bundled teacher's included) carries one; a transformers model may."""
    if _gguf_path(model) is not None:
        return True
    from transformers import AutoTokenizer

    return bool(getattr(AutoTokenizer.from_pretrained(model), "chat_template", None))


def _teach(task_config: TaskConfig, config: TeachConfig) -> dict:
    from tqdm.auto import tqdm

    config = resolve_api(config)
    task = get_task(task_config)
    split = config.split or task.train_split
    split_rows = task.load(split)
    rows = split_rows[: config.limit] if config.limit else split_rows
    output = Path(config.output)
    offline = config.batch_file or config.ingest
    cache, teacher = AnswerCache(output / "cache.sqlite"), (NoTeacher if offline else Teacher)(config)
    # exemplars from the whole split: a --limit pilot sends the prompt the full run sends (its answers are reused)
    spec, prompt_source = teacher_prompt(task, config, split_rows, teacher, cache)
    write_atomic(output / "prompt.json", prompt_json(spec))
    started = time.perf_counter()
    bar = tqdm(total=len(rows) * config.samples, desc=f"teach {task.name}/{split}", unit="answer",
               disable=bool(offline or config.batch))  # the batch route prints its own progress
    parsed = Counter()

    def on_answer(i: int, answer: dict) -> None:
        parsed["failed" if "error" in answer else "answered"] += 1
        if "text" in answer:
            parsed["tokens"] += (answer.get("prompt_tokens") or 0) + (answer.get("completion_tokens") or 0)
            parsed["parse_failures"] += task.read_answer(answer["text"], rows[i])[1] is None
        bar.update(1)
        bar.set_postfix(failed=parsed["failed"], unparsed=parsed["parse_failures"], tokens=parsed["tokens"])

    requests = [(i, make_request(config, spec, row.input)) for i, row in enumerate(rows)]
    cached, pending = split_cached(requests, cache, config, config.samples)
    if config.batch_file:
        bar.close()
        from dsbs.batch import write_request_file

        return write_request_file(config.batch_file, pending, config)
    keys, new = request_keys(requests, config), {key for *_, key in pending}
    expected = live_estimate(requests, pending, config, spec)
    if config.batch or config.ingest:
        answers, stats = batch_answers(cached, pending, cache, config, output)
    else:
        answers, stats = ask_pending(teacher, cached, pending, cache, config, on_answer)
    bar.close()
    records = [record_for(task, config, i, row, [answers[(i, s)] for s in range(config.samples)])
               for i, row in enumerate(rows)]
    files, details = write_outputs(task_config, task, split, records, output)
    exemplar_inputs = {x for x, _ in spec.exemplars}
    summary = summarize(task, split, records, stats, config, files, time.perf_counter() - started, exemplar_inputs)
    summary |= costs(keys, answers, new, teacher.exemplar_spend, bool(config.ingest))
    if "ingest_lines" in stats:  # what each line of the results file was
        summary["ingest_lines"] = stats["ingest_lines"]
    summary["prompt"], summary["estimate"] = prompt_source, expected
    summary["route"] = "batch" if config.batch else "ingest" if config.ingest else "live"
    from dsbs.hub import write_teach_dataset

    summary["files"] += write_teach_dataset(output, task, split, records, summary, spec, config, details)
    write_atomic(output / "teach_summary.json", json.dumps(summary, indent=2))
    return summary


def batch_answers(cached: dict, pending: list, cache, config: TeachConfig, output: Path) -> tuple:
    """Answers from the cache, and from the batch route (--batch) or a results file (--ingest) for ``pending``;
    what stays unanswered is a failed item."""
    from dsbs.batch import custom_id, ingest_file, run_batches

    answers, stats = dict(cached), Counter()
    if config.ingest:
        counts = ingest_file(config.ingest, pending, cache, reply_limit(config))
        stats["ingest_lines"] = {k: v for k, v in counts.items() if k != "error_details"}
        print(f"{config.ingest}: {counts['stored']} answers stored, {counts['already_stored']} stored before, "
              f"{counts['errors']} errors, {counts['unknown']} lines for requests this run does not make, "
              f"{counts['duplicates']} duplicates", file=sys.stderr)
        if pending and counts["stored"] == counts["errors"] == 0 and counts["unknown"]:
            raise DataError(f"{config.ingest}: none of its {counts['unknown']} answers is for a request of this run: "
                            "the results answer requests made with other settings (ingest with the --model, "
                            "--base-url, --max-tokens, --temperature and prompt of the --batch-file run)")
        errors = counts["error_details"]
    else:
        errors = run_batches(pending, cache, config, output, reply_limit(config))
    missing = "no answer in the results file" if config.ingest else "no answer from the batch route"
    for i, s, _, key in pending:
        got = cache.get(key)
        answers[(i, s)] = got or {"error": errors.get(custom_id(key, s), missing)}
    return answers, stats


def live_estimate(requests: list[tuple[int, dict]], pending: list, config: TeachConfig, spec) -> dict | None:
    """The dry run's estimate for the requests about to be sent, where a tokenizer is at hand without building
    one (the summary and card put it beside the tokens the teacher reports)."""
    count, tokenizer, exact = token_counter(config, build_student=False)
    if count is None:
        return None
    return estimate(distinct_requests(pending), distinct_cached(requests, pending, config),
                    [a for _, a in spec.exemplars], config, count, tokenizer, exact)


def distinct_requests(pending: list) -> list[dict]:
    """The requests of (row, sample, request, key) items, each key once: equal inputs are asked (and paid) once."""
    return list({key: request for _, _, request, key in pending}.values())


def distinct_cached(requests: list[tuple[int, dict]], pending: list, config: TeachConfig) -> int:
    """Distinct requests of ``requests`` that the cache answers (``pending``: those it does not)."""
    return len(set(request_keys(requests, config).values())) - len({key for *_, key in pending})


def request_keys(requests: list[tuple[int, dict]], config: TeachConfig) -> dict:
    """(row, sample) -> the cache key of its request."""
    return {(i, s): request_key(config, request, s) for i, request in requests for s in range(config.samples)}


def spend(answers) -> Counter:
    """Requests and the tokens the teacher reported for their answers (a failed request: none)."""
    total = Counter()
    for answer in answers:
        total["requests"] += 1
        total["prompt_tokens"] += answer.get("prompt_tokens") or 0
        total["completion_tokens"] += answer.get("completion_tokens") or 0
    return total


def record_for(task, config: TeachConfig, i: int, row, got: list[dict]) -> dict:
    """One input's line in the details file: the voted label and rationale, every completion, errors."""
    texts = [a["text"] for a in got if "text" in a]
    read = [task.read_answer(t, row) for t in texts]
    rationale, label, agreeing = majority([(r, lab) for r, lab, _ in read])
    # the completion written for training is one whose parsed label is the majority's
    chosen = next((k for k, (_, lab, _) in enumerate(read) if label is not None and lab == label), 0)
    return {
        "index": i, "id": row.id, "input": row.input, "label": row.label, "rationale": rationale,
        "cluster": row.cluster,
        "teacher_label": label, "label_as_written": read[chosen][2] if label is not None else None,
        "agreeing_rationales": agreeing if config.samples > 1 else None, "completions": texts, "chosen": chosen,
        "samples": [{"rationale": r, "teacher_label": lab} for r, lab, _ in read],
        "errors": [a["error"] for a in got if "error" in a], "cut_replies": sum(bool(a.get("cut")) for a in got),
        "prompt_tokens": sum(a.get("prompt_tokens") or 0 for a in got if "text" in a),
        "completion_tokens": sum(a.get("completion_tokens") or 0 for a in got if "text" in a),
    }


def costs(keys: dict, answers: dict, new: set[str], exemplar_spend: Counter, ingest: bool) -> dict:
    """What the output's answers cost, each distinct request once (rows with equal inputs share one): over all
    of them, and over what this run sent (the exemplars the teacher wrote first included; --ingest sends none)."""
    distinct = {key: answers[item] for item, key in keys.items()}
    total = spend(a for a in distinct.values() if "text" in a)
    now = exemplar_spend + (Counter() if ingest else spend(a for k, a in distinct.items() if k in new))
    result = {"requests_made": now["requests"], "answers_from_cache": len(distinct) - len(new),
              "prompt_tokens": total["prompt_tokens"], "completion_tokens": total["completion_tokens"],
              "this_run": {"requests": now["requests"], "exemplar_requests": exemplar_spend["requests"],
                           "prompt_tokens": now["prompt_tokens"], "completion_tokens": now["completion_tokens"]}}
    if ingest:
        result["answers_ingested"] = sum("text" in a for k, a in distinct.items() if k in new)
    return result


def summarize(task, split: str, records: list[dict], stats: Counter, config: TeachConfig, files: list[str],
              seconds: float, exemplar_inputs: set[str]) -> dict:
    labelled = [r for r in records if r["label"] is not None]
    # an exemplar's answer is in the prompt: the teacher is scored on the other rows only, and only where it
    # answered (a failed request says nothing of the teacher; its rows are the failed items)
    graded = [r for r in labelled if r["input"] not in exemplar_inputs and r["completions"]]
    # scored as the paper scores it: the label as the teacher wrote it
    correct = sum(r["label_as_written"] is not None and task.labels_match(r["label_as_written"], r["label"])
                  for r in graded)
    return {
        "task": task.name, "split": split, "items": len(records),
        "failed_items": sum(1 for r in records if not r["completions"]),
        "parse_failures": sum(1 for r in records if r["completions"] and r["teacher_label"] is None),
        "cut_replies": sum(r["cut_replies"] for r in records), "retry_after_capped": stats["retry_after_capped"],
        "teacher_accuracy": round(correct / len(graded), 4) if graded else None,
        "teacher_accuracy_rows": len(graded),
        "exemplar_rows_not_scored": sum(r["input"] in exemplar_inputs for r in labelled),
        "seconds": round(seconds, 2), "files": files,
        "config": {**asdict(config), "base_url": safe_url(config.base_url)},
    }


def write_outputs(task_config: TaskConfig, task, split: str, records: list[dict], output: Path) -> tuple:
    """(files written, the details file): the output as a task (``task.json``: `dsbs train --task OUTPUT` reads
    it), plus every raw completion in the details file.

    A benchmark gets the paper's layout (its gold rows, the other splits' gold files, and
    llm/{split}_CoT_0.json aligned by position); an own task gets ``{split}.jsonl`` with the fields
    id, input, label (gold), rationale and teacher_label, the same names as the parquet and card.
    """
    from dsbs.tasks.taught import RECORD

    if task.paper_layout:
        written, details = write_paper_layout(task_config, task.name, split, records, output)
        record = {"benchmark": task.name, "split": split}
    else:
        rows = [{"id": r["id"], "input": r["input"], "label": r["label"], "rationale": r["rationale"],
                 "teacher_label": r["teacher_label"], **({"samples": r["samples"]} if len(r["samples"]) > 1 else {}),
                 **({"cluster": r["cluster"]} if r.get("cluster") is not None else {})} for r in records]
        path = output / f"{split}.jsonl"
        write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        written, details = [str(path)], output / "llm" / f"{split}_teacher.jsonl"
        record = {"name": task.name, "split": split, "file": path.name, "source": task.config}
    write_atomic(details, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    write_atomic(output / RECORD, json.dumps(record, indent=2))
    return written + [str(details), str(output / RECORD)], details


def write_paper_layout(task_config: TaskConfig, name: str, split: str, records: list[dict],
                       output: Path) -> tuple[list[str], Path]:
    """OUTPUT/{name}/: the gold files of every split and the teacher's completions of ``split``, as released."""
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
    written = [str(target / f"{name}_{split}.json"), str(target / "llm" / f"{split}_CoT_0.json")]
    return written, target / "llm" / f"{split}_teacher.jsonl"
