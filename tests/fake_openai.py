"""An OpenAI-compatible server on loopback whose reply to each item follows a script of faults."""

import json
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("ok", "429", "500", "hang", "truncated", "garbage", "trickle", "429-day", "401", "echo-auth", "huge")


def item_of(body: dict) -> str:
    """The input being asked about: the last query of the prompt, or the last user turn."""
    if "messages" in body:
        return body["messages"][-1]["content"]
    return body["prompt"].rsplit("\n\n", 1)[-1]


BATCH_FAULTS = ("ok", "expire-half", "error-lines", "failed", "messy")  # each but messy hits the first batch only


def completion_body(body: dict, text: str) -> dict:
    """A completion or chat completion reply holding ``text``, for the request ``body``."""
    if "messages" in body:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    else:
        choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
    return {"id": "x", "object": "chat.completion" if "messages" in body else "text_completion", "created": 0,
            "model": body.get("model", "m"), "choices": [choice],
            "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17}}


class FakeBatches:
    """OpenAI's Files and Batches API: a batch ends after ``polls`` status reads, as ``fault`` says."""

    def __init__(self, answer, fault: str = "ok", polls: int = 2, upload_429: bool = False):
        self.answer, self.fault, self.polls, self.upload_429 = answer, fault, polls, upload_429
        self.files: dict[str, str] = {}
        self.batches: dict[str, dict] = {}
        self.submitted: Counter = Counter()  # custom_id -> times it was in a submitted batch
        self.answered: Counter = Counter()  # custom_id -> times the provider answered it (and would bill it)
        self.uploads = 0

    def upload(self, content: str) -> tuple[int, dict]:
        self.uploads += 1
        if self.upload_429 and self.uploads == 1:
            return 429, {"error": {"message": "rate limited"}}
        file_id = f"file-{len(self.files)}"
        self.files[file_id] = content
        return 200, {"id": file_id, "object": "file", "purpose": "batch"}

    def create(self, request: dict) -> tuple[int, dict]:
        if self.fault == "create-400":  # e.g. a file over the provider's limits: never made
            return 400, {"error": {"message": "file exceeds the maximum size"}}
        lines = [json.loads(line) for line in self.files[request["input_file_id"]].splitlines() if line.strip()]
        self.submitted.update(line["custom_id"] for line in lines)
        batch_id = f"batch-{len(self.batches)}"
        self.batches[batch_id] = {"id": batch_id, "object": "batch", "status": "validating", "lines": lines,
                                  "reads": 0, "input_file_id": request["input_file_id"], "created_at": int(time.time())}
        if self.fault == "create-lost":  # made, but the reply is lost: a retry must not make a second one
            self.fault = "ok"
            return 502, {"error": {"message": "bad gateway"}}
        return 200, self.public(batch_id)

    def listing(self, query: dict) -> tuple[int, dict]:
        """Newest first, a page of ``limit`` (at most 100) after the batch ``after``, as OpenAI pages them."""
        ids = list(reversed(list(self.batches)))
        start = ids.index(query["after"]) + 1 if "after" in query else 0
        page = ids[start: start + min(int(query.get("limit", 20)), 100)]
        return 200, {"object": "list", "data": [self.public(b) for b in page],
                     "has_more": start + len(page) < len(ids), "last_id": page[-1] if page else None}

    def public(self, batch_id: str) -> dict:
        batch = self.batches[batch_id]
        done = len(batch["lines"]) if batch["status"] in ("completed", "expired", "cancelled") else 0
        return {**{k: v for k, v in batch.items() if k not in ("lines", "reads")},
                "request_counts": {"total": len(batch["lines"]), "completed": done, "failed": 0}}

    def status(self, batch_id: str) -> tuple[int, dict]:
        batch = self.batches[batch_id]
        batch["reads"] += 1
        if batch["status"] in ("validating", "in_progress", "cancelling") and batch["reads"] >= self.polls:
            self.finish(batch)
        elif batch["status"] == "validating":
            batch["status"] = "in_progress"
        return 200, self.public(batch_id)

    def finish(self, batch: dict) -> None:
        lines = batch["lines"]
        if self.fault == "failed":
            batch["status"], self.fault = "failed", "ok"
            return
        answered = lines[: len(lines) // 2] if self.fault == "expire-half" or batch["status"] == "cancelling" else lines
        outputs, errors = [], []
        for n, line in enumerate(answered):
            if self.fault == "error-lines" and n % 3 == 0:
                errors.append({"id": f"r{n}", "custom_id": line["custom_id"], "response": {"status_code": 500, "body":
                               {"error": {"message": "boom"}}}, "error": {"code": "server_error", "message": "boom"}})
                continue
            text = self.answer(item_of(line["body"]), 1)
            self.answered[line["custom_id"]] += 1
            outputs.append({"id": f"r{n}", "custom_id": line["custom_id"],
                            "response": {"status_code": 200, "body": completion_body(line["body"], text)},
                            "error": None})
        if self.fault == "messy":  # out of order, one line twice, one for a request nobody made
            outputs = outputs[::-1] + outputs[:1] + [{**outputs[0], "custom_id": "nobody-0"}]
        batch["status"] = ("expired" if self.fault == "expire-half" else
                           "cancelled" if batch["status"] == "cancelling" else "completed")
        for kind, rows in (("output_file_id", outputs), ("error_file_id", errors)):
            if rows:
                file_id = f"file-{len(self.files)}"
                self.files[file_id] = "".join(json.dumps(r) + "\n" for r in rows)
                batch[kind] = file_id
        if self.fault in ("expire-half", "error-lines"):
            self.fault = "ok"

    def cancel(self, batch_id: str) -> tuple[int, dict]:
        status = self.batches[batch_id]["status"]
        if status in ("completed", "expired", "cancelled", "failed"):  # as OpenAI answers
            return 400, {"error": {"message": f"Cannot cancel a batch with status {status}."}}
        self.batches[batch_id]["status"] = "cancelling"
        return 200, self.public(batch_id)


def multipart_file(content_type: str, body: bytes) -> str:
    """The ``file`` part of a multipart/form-data body."""
    from email.parser import BytesParser

    message = BytesParser().parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    for part in message.get_payload():
        if part.get_param("name", header="content-disposition") == "file":
            return part.get_payload(decode=True).decode()
    raise ValueError("no file part")


class FakeOpenAI:
    def __init__(self, script=lambda item, attempt: "ok", delay: float = 0.0, hang: float = 3.0,
                 answer=lambda item, attempt: "The numbers add up. So the answer is 42.", batch_fault: str = "ok",
                 batch_polls: int = 2, upload_429: bool = False):
        self.script, self.delay, self.hang, self.answer = script, delay, hang, answer
        self.batch = FakeBatches(answer, batch_fault, batch_polls, upload_429)
        self.requests: Counter = Counter()
        self.bodies: list[dict] = []  # every request body, as sent
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                parts = self.path.split("?")[0].split("/")  # /v1/batches[/ID] or /v1/files/ID/content
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                with server.lock:
                    if parts[2:] == ["batches"]:
                        return self.reply(*server.batch.listing(query))
                    if parts[2] == "batches":
                        return self.reply(*server.batch.status(parts[3]))
                    if parts[2] == "files" and parts[-1] == "content":
                        return self.raw(200, server.batch.files[parts[3]].encode())
                return self.reply(404, {"error": {"message": "no such route"}})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                with server.lock:
                    if self.path == "/v1/files":
                        return self.reply(*server.batch.upload(multipart_file(self.headers["Content-Type"], raw)))
                    if self.path == "/v1/batches":
                        return self.reply(*server.batch.create(json.loads(raw)))
                    if self.path.startswith("/v1/batches/") and self.path.endswith("/cancel"):
                        return self.reply(*server.batch.cancel(self.path.split("/")[3]))
                body = json.loads(raw)
                item = item_of(body)
                with server.lock:
                    server.bodies.append(body)
                    server.requests[item] += 1
                    attempt = server.requests[item]
                action = server.script(item, attempt)
                time.sleep(server.delay)
                if action == "hang":
                    time.sleep(server.hang)
                    action = "ok"
                if action == "429":
                    return self.reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "0.1"})
                if action == "429-day":
                    return self.reply(429, {"error": {"message": "come back tomorrow"}}, {"Retry-After": "86400"})
                if action == "401":
                    return self.reply(401, {"error": {"message": "invalid api key"}})
                if action == "echo-auth":  # a careless server quoting the request's credentials back
                    return self.reply(400, {"error": {"message": f"bad request from {self.headers['Authorization']}"}})
                if action == "trickle":  # a whole reply, one byte every 0.4 s
                    data = b'{"choices": [{"text": "slow"}]}'
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    for byte in data:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.4)
                    return
                if action == "500":
                    return self.reply(500, {"error": {"message": "boom"}})
                if action == "garbage":
                    return self.raw(200, b"<html>this is not json")
                text = server.answer(item, attempt) if action != "huge" else "So the answer is 42. " * 200_000
                payload = completion_body(body, text)
                if action == "truncated":  # promise more bytes than we send, then hang up
                    data = json.dumps(payload).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data) + 50))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                return self.reply(200, payload)

            def reply(self, status, payload, headers=None):
                self.raw(status, json.dumps(payload).encode(), headers)

            def raw(self, status, data, headers=None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
