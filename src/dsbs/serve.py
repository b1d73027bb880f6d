"""`dsbs serve`: a trained student behind HTTP — its own /predict and OpenAI-compatible chat.

Requests that arrive together are answered in one generation batch: handlers put their inputs
on a queue and a single worker thread drains it, so the model runs one batch at a time and
concurrency turns into batch size rather than contention.

Every request passes a guard first (``Guard``): the Host header, the API key, the body's size as
it arrives (a chunked body has no Content-Length to trust) and an overall deadline. The waiting
queue is bounded (503 with Retry-After when full), and the HTTP protocol itself closes a
connection whose request headers do not arrive in time (uvicorn has no such timeout).
"""

import asyncio
import hmac
import json
import os
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from dsbs.configs import ServeConfig
from dsbs.errors import DataError, MissingDependency

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


class QueueFull(Exception):
    """More inputs are waiting than the service accepts (max_queue)."""


class Batcher:
    """Collects inputs from concurrent requests into batches of at most ``max_batch`` for one model."""

    def __init__(self, predict_fn, max_batch: int, wait_s: float, max_queue: int = 1024):
        self.predict_fn, self.max_batch, self.wait_s, self.max_queue = predict_fn, max_batch, wait_s, max_queue
        self.queue: queue.Queue = queue.Queue()
        self.waiting, self.count_lock = 0, threading.Lock()  # inputs submitted and not yet taken
        self.thread = threading.Thread(target=self._run, daemon=True, name="dsbs-batcher")
        self.thread.start()

    def submit(self, inputs: list[str], rationale: bool) -> Future:
        with self.count_lock:
            if self.waiting + len(inputs) > self.max_queue:
                raise QueueFull(f"{self.waiting} inputs are waiting; the queue holds {self.max_queue} (max_queue)")
            self.waiting += len(inputs)
        future: Future = Future()
        self.queue.put((inputs, rationale, future))
        return future

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)

    def _take(self) -> list | None:
        """The next jobs to run together: what arrives within ``wait_s`` of the first, up to max_batch inputs."""
        job = self.queue.get()
        if job is None:
            return None
        jobs, size = [job], len(job[0])
        deadline = time.perf_counter() + self.wait_s
        while size < self.max_batch:
            try:
                nxt = self.queue.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if nxt is None:
                self.queue.put(None)
                break
            jobs.append(nxt)
            size += len(nxt[0])
        with self.count_lock:
            self.waiting -= size
        return jobs

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            # A request whose client went away (or whose deadline passed) has a cancelled future: drop
            # it. The others are marked running, which makes them uncancellable, so setting their
            # result cannot fail.
            jobs = [j for j in jobs if j[2].set_running_or_notify_cancel()]
            for rationale in (False, True):
                group = [j for j in jobs if j[1] == rationale]
                if group:
                    self._answer(group, rationale)

    def _answer(self, group: list, rationale: bool) -> None:
        texts = [t for inputs, _, _ in group for t in inputs]
        try:
            results = self.predict_fn(texts, rationale)
        except Exception as err:  # the requests fail, the service stays up
            for _, _, future in group:
                future.set_exception(err)
            return
        offset = 0
        for inputs, _, future in group:
            future.set_result(results[offset : offset + len(inputs)])
            offset += len(inputs)


def allowed_hosts(config: ServeConfig) -> set[str] | None:
    """Host names the service answers to; None: any (bound to a public address and none given)."""
    if config.allowed_hosts:
        return {h.strip().lower() for h in config.allowed_hosts.split(",") if h.strip()}
    return set(LOOPBACK_NAMES) if config.host in LOOPBACK_NAMES else None


def host_name(value: str) -> str:
    """The name of a Host header without its port ("[::1]:8000" -> "::1")."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class BodyTooLarge(Exception):
    pass


class Guard:
    """ASGI middleware in front of the app: Host, API key, body size as it arrives, overall deadline."""

    def __init__(self, app, config: ServeConfig, api_key: str | None):
        self.app, self.config, self.api_key = app, config, api_key
        self.hosts = allowed_hosts(config)
        self.too_large = f"request body larger than {config.max_body_bytes} bytes (max_body_bytes)"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self.refusal(scope, headers)
        if refusal:
            return await respond(send, *refusal)
        started = {"response": False}

        async def tracked_send(message):
            started["response"] |= message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.run(scope, receive, tracked_send), self.config.request_timeout)
        except BodyTooLarge:
            await respond(send, 413, self.too_large)
        except TimeoutError:
            if not started["response"]:
                await respond(send, 504, f"no answer within {self.config.request_timeout:g} s (request_timeout)")

    async def run(self, scope, receive, send):
        """The app on the whole body, read first and counted as it arrives (chunked or not)."""
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.config.max_body_bytes:
                raise BodyTooLarge
        replay = [{"type": "http.request", "body": body, "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)

    def refusal(self, scope, headers: dict) -> tuple | None:
        """(status, message, extra headers) of a request refused before it runs, or None."""
        if self.hosts is not None and host_name(headers.get("host", "")) not in self.hosts:
            return 400, "invalid Host header (allowed_hosts)", {}
        if self.api_key and scope["path"] != "/health":
            given = headers.get("authorization", "")
            token = given[7:] if given[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), self.api_key.encode()):
                return 401, "missing or wrong API key (Authorization: Bearer KEY)", {"www-authenticate": "Bearer"}
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.config.max_body_bytes):
            return 413, self.too_large, {}
        return None


async def respond(send, status: int, detail: str, headers: dict | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *extra]})
    await send({"type": "http.response.body", "body": body})


def request_models(max_inputs: int, max_input_chars: int):
    """The pydantic request and response bodies (their limits appear in the published schema)."""
    from typing import Annotated, Any

    from pydantic import BaseModel, Field

    class PredictRequest(BaseModel):
        inputs: list[Annotated[str, Field(min_length=1, max_length=max_input_chars)] | dict[str, Any]] = Field(
            min_length=1, max_length=max_inputs, description=(
                "texts to label as they are, or rows (objects) whose fields make the text as in training and "
                "`dsbs predict` (the student's input field or template: GET /health)"))
        rationale: bool = Field(default=False, description="also generate the rationale (slower)")

    class Prediction(BaseModel):
        label: str
        rationale: str | None = None

    class PredictResponse(BaseModel):
        model: str
        predictions: list[Prediction]

    class ChatMessage(BaseModel):
        role: str = Field(max_length=32)
        content: str = Field(max_length=max_input_chars)

    class ChatRequest(BaseModel):
        model: str | None = Field(default=None, max_length=256)
        messages: list[ChatMessage] = Field(min_length=1, max_length=64)
        max_tokens: int | None = Field(default=None, ge=1)
        temperature: float | None = Field(default=None, ge=0)

    return PredictRequest, PredictResponse, ChatRequest


def row_text(row: dict, fields, i: int) -> str:
    """The text a row of a request makes, as training and `dsbs predict` made it; a bad row is a 422."""
    from fastapi import HTTPException

    from dsbs.tasks.custom import student_input

    try:
        return student_input(row, fields, f"inputs[{i}]")
    except DataError as err:
        raise HTTPException(422, str(err)) from None


def create_app(config: ServeConfig):
    """The FastAPI app serving the student in ``config.model``, behind its Guard."""
    try:
        from fastapi import FastAPI, HTTPException
    except ImportError:
        raise MissingDependency("dsbs serve needs FastAPI and uvicorn: pip install 'dsbs[serve]'") from None
    from contextlib import asynccontextmanager

    from dsbs.checkpoint import read_meta
    from dsbs.inference import choice_task, label_choices, predict
    from dsbs.models import load_student
    from dsbs.predict import input_fields

    meta = read_meta(config.model)
    fields = input_fields(meta, None, None)
    task = choice_task(meta) if config.choices else None
    model, tokenizer = load_student(config.model, for_inference=True, precision=config.precision)
    path = Path(config.model)
    name = path.resolve().parent.name if path.name == "model" else path.name
    lock = threading.Lock()

    def predict_fn(texts: list[str], rationale: bool) -> list[dict]:
        with lock:
            return predict(model, tokenizer, meta, texts, with_rationale=rationale, batch_size=config.max_batch,
                           choices=label_choices(task, texts) if task else None)

    batcher = Batcher(predict_fn, config.max_batch, config.batch_wait_ms / 1000, config.max_queue)

    @asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()  # graceful shutdown: finish the batch in hand, then stop

    PredictRequest, PredictResponse, ChatRequest = request_models(config.max_inputs, config.max_input_chars)
    app = FastAPI(title="dsbs student", version="1", lifespan=lifespan,
                  description=f"{meta['method']} student for {meta['task']}: label-only answers, no rationale tokens")

    async def answer(inputs: list[str | dict], rationale: bool) -> list[dict]:
        inputs = [item if isinstance(item, str) else row_text(item, fields, i) for i, item in enumerate(inputs)]
        for i, item in enumerate(inputs):
            if not item.strip() or len(item) > config.max_input_chars:
                raise HTTPException(422, f"inputs[{i}] must be 1 to {config.max_input_chars} characters")
            try:
                if task:
                    task.label_choices(item)
            except DataError as err:
                raise HTTPException(422, f"inputs[{i}]: {err}") from None
        try:
            future = batcher.submit(inputs, rationale)
        except QueueFull as err:
            raise HTTPException(503, str(err), headers={"Retry-After": "1"}) from None
        return await asyncio.wrap_future(future)  # a deadline cancels it, and the batcher then skips it

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": name, "method": meta["method"], "task": meta["task"],
                "input": {"field": fields.input_field or "input"} if not fields.input_template else
                {"template": fields.input_template},
                "choices": task.label_choices("") if task and task.label_choices is not None and not
                task.paper_layout else None}

    @app.post("/predict", response_model=PredictResponse)
    async def predict_endpoint(request: PredictRequest) -> dict:
        return {"model": name, "predictions": await answer(request.inputs, request.rationale)}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "dsbs"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: ChatRequest) -> dict:
        users = [m.content for m in request.messages if m.role == "user"]
        if not users:
            raise HTTPException(422, "messages need at least one user message: its content is the input")
        [result] = await answer([users[-1]], False)
        return chat_completion(name, result["label"], len(tokenizer(users[-1])["input_ids"]),
                               len(tokenizer(result["label"])["input_ids"]))

    return Guard(app, config, config.api_key or os.environ.get("DSBS_API_KEY"))


def chat_completion(name: str, label: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "id": f"dsbs-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()), "model": name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": label}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def header_deadline_protocol(seconds: float):
    """uvicorn's h11 protocol, closing a connection whose request headers take longer than ``seconds``.

    The timer is armed when a connection opens and after each response (keep-alive), and disarmed
    when a request's headers are complete; the body is bounded by the Guard's request deadline.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def _arm(self):
            self.header_timer = self.loop.call_later(seconds, self._expire)

        def _expire(self):
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()

        def handle_events(self):
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self.header_timer.cancel()

        def on_response_complete(self):
            super().on_response_complete()
            if not self.transport.is_closing():
                self.header_timer.cancel()
                self._arm()

        def connection_lost(self, exc):
            self.header_timer.cancel()
            super().connection_lost(exc)

    return HeaderDeadline


def uvicorn_config(app, config: ServeConfig):
    import uvicorn

    return uvicorn.Config(app, host=config.host, port=config.port, http=header_deadline_protocol(config.header_timeout),
                          limit_concurrency=config.limit_concurrency, timeout_keep_alive=config.keep_alive_timeout,
                          timeout_graceful_shutdown=30, log_level="info")


def serve(config: ServeConfig) -> None:
    import uvicorn

    if config.api_key:
        print("warning: --api-key on the command line is visible to other users of this machine (ps); "
              "prefer $DSBS_API_KEY")
    if allowed_hosts(config) is None:
        print(f"note: bound to {config.host} with no --allowed-hosts: any Host header is accepted")
    if not (config.api_key or os.environ.get("DSBS_API_KEY")) and config.host not in LOOPBACK_NAMES:
        print(f"note: no API key: anyone who reaches {config.host}:{config.port} can use the model "
              "(set $DSBS_API_KEY)")
    uvicorn.Server(uvicorn_config(create_app(config), config)).run()
