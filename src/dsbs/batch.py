"""The providers' batch route for `dsbs teach`: the same requests at half the price, answered within 24 hours.

Every request the live path would send becomes one line of OpenAI's batch format (``custom_id``,
``method``, ``url``, ``body``); its ``custom_id`` is the answer's cache key and sample index, so an
answer lands in the same cache, through the same reply-size limit, as a live one, and nothing the
cache holds is asked again. Request files are split at the provider's limits, uploaded with the
Files API, and each batch's id is written to ``OUTPUT/batches.json`` the moment it exists: a run
killed while it waits, run again, polls those batches instead of paying twice. An expired or
cancelled batch keeps its partial results; only the missing items go into a new batch. Ctrl-C
leaves the batches running (the same command collects them; ``--cancel`` cancels them).

Offline, ``--batch-file`` writes the request file only (for ``vllm run-batch -i FILE -o OUT --model
M`` or any provider's upload) and ``--ingest OUT`` reads the results back.
"""

import json
import sys
import time
from pathlib import Path

from dsbs.errors import DataError, UserError
from dsbs.files import write_atomic
from dsbs.redaction import redact
from dsbs.retries import RetryableError, TeacherStopped, call_with_retries, openai_server, seconds

STATE = "batches.json"
TERMINAL = ("completed", "expired", "cancelled", "failed")
ROUNDS = 3  # batches submitted for the same missing items before the run gives up on them
MAX_PAGES, CLOCK_SKEW = 100, 600  # looking for a batch: pages of the list of batches; seconds of clock difference


def custom_id(key: str, sample: int) -> str:
    return f"{key}-{sample}"


def key_of(custom: str) -> str:
    return custom.rsplit("-", 1)[0]


def request_lines(pending: list, config) -> list[str]:
    """One batch-format line per pending (row, sample, request, key): each custom_id once."""
    lines, seen = [], set()
    for _, sample, request, key in pending:
        cid = custom_id(key, sample)
        if cid not in seen:
            seen.add(cid)
            url = "/v1/chat/completions" if "messages" in request else "/v1/completions"
            lines.append(json.dumps({"custom_id": cid, "method": "POST", "url": url,
                                     "body": {"model": config.model, **request}}, ensure_ascii=False))
    return lines


def split_files(lines: list[str], max_requests: int, max_bytes: int) -> list[list[str]]:
    """Lines in files of at most ``max_requests`` lines and ``max_bytes`` bytes each."""
    files, current, size = [], [], 0
    for line in lines:
        length = len(line.encode()) + 1
        if current and (len(current) == max_requests or size + length > max_bytes):
            files.append(current)
            current, size = [], 0
        current.append(line)
        size += length
    return files + ([current] if current else [])


def answer_of(result: dict, limit: int) -> tuple[dict | None, str | None]:
    """(answer as the live path stores it, error) of one results line."""
    response = result.get("response") or {}
    if result.get("error") or response.get("status_code", 200) >= 400:
        detail = result.get("error") or response.get("body")
        return None, redact(f"batch request failed: {json.dumps(detail)[:300]}")
    try:
        body = response["body"]
        choice = body["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        usage = body.get("usage") or {}
    except (KeyError, IndexError, TypeError) as err:
        return None, f"unreadable batch result: {type(err).__name__}"
    if not isinstance(text, str):  # a refusal or a content filter: the live route asks such an item again
        return None, f"batch result without text (finish_reason {choice.get('finish_reason')!r})"
    answer = {"text": text, "prompt_tokens": usage.get("prompt_tokens"),
              "completion_tokens": usage.get("completion_tokens")}
    if len(text) > limit:
        answer = {**answer, "text": text[:limit], "cut": True}
    return answer, None


def ingest_lines(lines, wanted: set[str], cache, limit: int, where: str) -> dict:
    """Store every answer of a results file whose key is wanted; counts of what each line was. An answer
    beats an error line for the same request wherever each stands (a retry's results joined to the first's);
    of two answers the first is kept. A last line cut off mid-write (a results file whose writer was killed) is
    counted and skipped: its request stays unanswered, to be asked again."""
    counts = {"stored": 0, "already_stored": 0, "unknown": 0, "duplicates": 0, "cut_off": 0}
    errors, stored = {}, set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            result = json.loads(line)
            cid = result["custom_id"]
        except json.JSONDecodeError:
            if line.endswith("\n"):  # only a file's last line can lack its newline
                raise DataError(f"{where}:{number}: not a batch result line (JSON with a custom_id)") from None
            print(f"{where}:{number}: the last line is cut off (its writer stopped mid-line); skipped, its request "
                  "stays unanswered", file=sys.stderr)
            counts["cut_off"] += 1
            continue
        except (KeyError, TypeError):
            raise DataError(f"{where}:{number}: not a batch result line (JSON with a custom_id)") from None
        key = key_of(cid)
        if key not in wanted:  # answered before (the same file ingested again), or another run's request
            counts["already_stored" if cache.get(key) is not None else "unknown"] += 1
            continue
        answer, error = answer_of(result, limit)
        if cid in stored or (answer is None and cid in errors):
            counts["duplicates"] += 1
        elif answer is None:
            errors[cid] = error
        else:
            counts["duplicates"] += errors.pop(cid, None) is not None
            cache.put(key, answer)
            stored.add(cid)
            counts["stored"] += 1
    return {**counts, "errors": len(errors), "error_details": errors}


class Refused(UserError):
    """The server answered 4xx (not 401/403/429): this call is wrong as made, and would be again."""


class BatchAPI:
    """The Files and Batches endpoints of an OpenAI-compatible server."""

    def __init__(self, config):
        self.config = config
        self.httpx, self.key, self.base = openai_server(config, "the batch route")
        self.client = self.httpx.Client(timeout=self.httpx.Timeout(config.timeout),
                                        headers={"Authorization": f"Bearer {self.key}"} if self.key else {})

    def call(self, method: str, path: str, **kwargs):
        """One call with the live path's retries (timeouts, 429 with Retry-After, 5xx)."""
        return self.retried(lambda: self.request(method, path, **kwargs), f"{method} {path}")

    def retried(self, once, what: str):
        try:
            return call_with_retries(once, self.config.max_retries, max_retry_after=self.config.max_retry_after)
        except RetryableError as err:
            raise TeacherStopped(f"{what}: {err} after {self.config.max_retries} retries; what was submitted is "
                                 f"recorded in {STATE}: the same command collects it") from None

    def request(self, method: str, path: str, **kwargs):
        """One attempt; what may succeed when tried again raises RetryableError."""
        try:
            response = self.client.request(method, self.base + path, **kwargs)
        except self.httpx.HTTPError as err:
            raise RetryableError(redact(f"{type(err).__name__}: {err}", (self.key,))) from None
        if response.status_code in (401, 403):
            raise TeacherStopped(f"the server refused the batch request (HTTP {response.status_code}): check the "
                                 f"key in ${self.config.api_key_env}")
        if response.status_code == 429 or response.status_code >= 500:
            raise RetryableError(f"HTTP {response.status_code}", seconds(response.headers.get("retry-after")))
        if response.status_code >= 400:
            raise Refused(f"{method} {path}: HTTP {response.status_code}: {redact(response.text[:300], (self.key,))}")
        return response

    def upload(self, lines: list[str]) -> str:
        data = ("".join(line + "\n" for line in lines)).encode()
        return self.call("POST", "/files", data={"purpose": "batch"},
                         files={"file": ("requests.jsonl", data, "application/jsonl")}).json()["id"]

    def create(self, file_id: str, endpoint: str, since: float | None = None) -> dict:
        """The batch of an uploaded file, created once: a create whose reply was lost (a timeout, a 5xx, a kill)
        may have made one, so each attempt first looks for a batch of that file."""

        def once():
            return self.find(file_id, since) or self.request("POST", "/batches", json={
                "input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h"}).json()

        return self.retried(once, "POST /batches")

    def find(self, file_id: str, since: float | None = None) -> dict | None:
        """The batch made of ``file_id``, from the list of batches (newest first), page by page back to the
        file's upload (``since``, a time.time()); a server that cannot list batches has nothing to find."""
        after = None
        for _ in range(MAX_PAGES):
            try:
                page = self.request("GET", "/batches", params={"limit": 100, **({"after": after} if after else {})})
            except Refused:
                return None
            listed = page.json().get("data") or []
            found = next((b for b in listed if b.get("input_file_id") == file_id), None)
            older = since is not None and any((b.get("created_at") or since) < since - CLOCK_SKEW for b in listed)
            if found or older or not listed or not page.json().get("has_more"):
                return found
            after = listed[-1]["id"]
        return None

    def status(self, batch_id: str) -> dict:
        return self.call("GET", f"/batches/{batch_id}").json()

    def content(self, file_id: str) -> str:
        return self.call("GET", f"/files/{file_id}/content").text

    def cancel(self, batch_id: str) -> dict:
        return self.call("POST", f"/batches/{batch_id}/cancel").json()


def read_state(output: Path) -> dict:
    path = output / STATE
    if not path.is_file():
        return {"batches": []}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err}); it lists the batches this output paid for") from None


def write_state(output: Path, state: dict) -> None:
    write_atomic(output / STATE, json.dumps(state, indent=2))


def run_batches(pending: list, cache, config, output: Path, limit: int, sleep=time.sleep) -> dict:
    """Submit the pending requests (or collect the batches already submitted), wait, store every answer.

    Returns the batch errors by custom_id (items that stay unanswered are failed items, as live)."""
    api, state = BatchAPI(config), read_state(output)
    wanted = {key for _, _, _, key in pending} | {k for b in state["batches"] for k in b.get("keys", [])}
    errors: dict = {}
    for batch in [b for b in state["batches"] if "id" not in b]:  # uploaded by a run killed before creating it
        create(api, batch, config, output, state)
    for _ in range(ROUNDS):
        open_batches = [b for b in state["batches"] if not b.get("ingested")]
        if not open_batches:
            missing = [p for p in pending if cache.get(p[3]) is None and custom_id(p[3], p[1]) not in errors]
            if not missing:
                break
            submit(api, missing, config, output, state)
        wait(api, config, output, state, sleep)
        for batch in [b for b in state["batches"] if not b.get("ingested")]:
            counts = collect(api, batch, wanted, cache, limit)
            errors.update(counts.pop("error_details"))
            batch.update(ingested=True, counts=counts)
            write_state(output, state)
    return errors


def submit(api: BatchAPI, pending: list, config, output: Path, state: dict) -> None:
    """Upload each part and record it before its batch is created, then create it: a kill at any point, run
    again, finds the batch of a recorded file instead of paying for a second one."""
    lines = request_lines(pending, config)
    for part in split_files(lines, config.batch_max_requests, config.batch_max_bytes):
        batch = {"input_file_id": api.upload(part), "uploaded_at": time.time(), "requests": len(part),
                 "status": "uploaded", "keys": sorted({key_of(json.loads(line)["custom_id"]) for line in part})}
        state["batches"].append(batch)
        write_state(output, state)
        create(api, batch, config, output, state)


def create(api: BatchAPI, batch: dict, config, output: Path, state: dict) -> None:
    endpoint = "/v1/chat/completions" if config.api == "chat" else "/v1/completions"
    try:
        made = api.create(batch["input_file_id"], endpoint, batch.get("uploaded_at"))
    except Refused as err:  # refused, so never made: a kept entry would be created again by every rerun
        state["batches"].remove(batch)
        write_state(output, state)
        raise UserError(f"{err}\nthe provider would not make a batch of the uploaded file {batch['input_file_id']}; "
                        f"it is no longer listed in {output / STATE}: a rerun uploads its requests again (a file too "
                        "large for the provider: lower --batch-max-requests or --batch-max-bytes)") from None
    batch.update(id=made["id"], status=made["status"])
    write_state(output, state)  # before anything else: a kill now must not pay for it twice
    print(f"submitted batch {batch['id']}: {batch['requests']} requests", file=sys.stderr)


def wait(api: BatchAPI, config, output: Path, state: dict, sleep) -> None:
    """Poll the open batches with backoff until each has ended; Ctrl-C leaves them running."""
    delay = config.batch_poll
    try:
        while True:
            open_batches = [b for b in state["batches"] if not b.get("ingested") and b["status"] not in TERMINAL]
            if not open_batches:
                return
            for batch in open_batches:
                reply = status(api, batch, output)
                counts = reply.get("request_counts") or {}
                batch.update(status=reply["status"], output_file_id=reply.get("output_file_id"),
                             error_file_id=reply.get("error_file_id"))
                print(f"batch {batch['id']}: {reply['status']}, {counts.get('completed', 0)} completed, "
                      f"{counts.get('failed', 0)} failed of {counts.get('total', batch['requests'])}", file=sys.stderr)
            write_state(output, state)
            if any(b["status"] not in TERMINAL for b in open_batches):
                sleep(delay)
                delay = min(delay * 2, config.batch_poll_max)
    except KeyboardInterrupt:
        print(f"stopped waiting: the batches in {output / STATE} keep running at the provider; run the same "
              "command again to collect them, or add --cancel to cancel them", file=sys.stderr)
        raise


def status(api: BatchAPI, batch: dict, output: Path) -> dict:
    try:
        return api.status(batch["id"])
    except Refused as err:
        raise UserError(f"{err}\nbatch {batch['id']} is recorded in {output / STATE}: a batch of another key or "
                        "base URL, or one the provider no longer keeps; remove its entry from that file to ask its "
                        "items again") from None


def collect(api: BatchAPI, batch: dict, wanted: set[str], cache, limit: int) -> dict:
    """Store the answers of an ended batch (a failed one has none, an expired one some)."""
    if batch["status"] == "failed" and not batch.get("output_file_id"):
        print(f"batch {batch['id']} failed at the provider; its items will be asked again", file=sys.stderr)
    lines = [line + "\n" for file_id in (batch.get("output_file_id"), batch.get("error_file_id")) if file_id
             for line in api.content(file_id).split("\n")]  # whole lines: a provider's file is never cut off
    return ingest_lines(lines, wanted, cache, limit, f"the files of batch {batch['id']}")


def cancel_batches(config, output: Path) -> dict:
    """--cancel: cancel every recorded batch that has not ended; its partial results are still collected later."""
    api, state = BatchAPI(config), read_state(output)
    cancelled, refused = [], {}
    for batch in [b for b in state["batches"] if "id" not in b]:  # its create's reply was lost: it may run
        made = api.retried(lambda b=batch: api.find(b["input_file_id"], b.get("uploaded_at")), "GET /batches")
        if made:
            batch.update(id=made["id"], status=made["status"])
            write_state(output, state)
        else:
            print(f"no batch of the uploaded file {batch['input_file_id']} runs (its create did not happen); a rerun "
                  "of the same command creates it", file=sys.stderr)
    for batch in state["batches"]:
        if "id" in batch and not batch.get("ingested") and batch["status"] not in TERMINAL:
            try:  # one batch that ended meanwhile (HTTP 400) must not leave the others running
                batch["status"] = api.cancel(batch["id"]).get("status", "cancelling")
                cancelled.append(batch["id"])
            except Refused as err:
                refused[batch["id"]] = str(err)
                print(f"batch {batch['id']} not cancelled: {err}", file=sys.stderr)
            write_state(output, state)
    return {"cancelled": cancelled, **({"not_cancelled": refused} if refused else {})}


def write_request_file(path: str, pending: list, config) -> dict:
    """--batch-file: the request lines of everything not yet answered, for vllm run-batch or a provider."""
    lines = request_lines(pending, config)
    write_atomic(path, "".join(line + "\n" for line in lines))
    return {"requests_written": len(lines), "file": path}


def ingest_file(path: str, pending: list, cache, limit: int) -> dict:
    """--ingest: a results file (OpenAI batch output, vllm run-batch output) into the cache."""
    if not Path(path).is_file():
        raise DataError(f"{path}: file not found")
    wanted = {key for _, _, _, key in pending}
    with open(path, "rb") as f:
        return ingest_lines(decoded(f, path), wanted, cache, limit, path)


def decoded(lines, path: str):
    """A results file's lines as text; a last line cut inside a character is left for ingest_lines to skip."""
    for number, raw in enumerate(lines, start=1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as err:
            if raw.endswith(b"\n"):
                raise DataError(f"{path}:{number}: not valid UTF-8 ({err.reason})") from None
            yield raw.decode("utf-8", errors="replace")  # a cut line: not JSON, no newline
