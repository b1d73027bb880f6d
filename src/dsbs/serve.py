"""`dsbs serve`: a trained student behind HTTP — its own /predict and OpenAI-compatible chat.

Requests that arrive together are answered in one generation batch: handlers put their inputs
on a queue and a single worker thread drains it, so the model runs one batch at a time and
concurrency turns into batch size rather than contention.
"""

import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from dsbs.errors import MissingDependency


class Batcher:
    """Collects inputs from concurrent requests into batches of at most ``max_batch`` for one model."""

    def __init__(self, predict_fn, max_batch: int, wait_s: float):
        self.predict_fn, self.max_batch, self.wait_s = predict_fn, max_batch, wait_s
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True, name="dsbs-batcher")
        self.thread.start()

    def submit(self, inputs: list[str], rationale: bool) -> Future:
        future: Future = Future()
        self.queue.put((inputs, rationale, future))
        return future

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            jobs = [job]
            size = len(job[0])
            deadline = time.perf_counter() + self.wait_s
            while size < self.max_batch:  # gather what else arrives in the next few milliseconds
                try:
                    nxt = self.queue.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.put(None)
                    break
                jobs.append(nxt)
                size += len(nxt[0])
            # A request whose client went away has a cancelled future: drop it. The others are
            # marked running, which makes them uncancellable, so setting their result cannot fail.
            jobs = [j for j in jobs if j[2].set_running_or_notify_cancel()]
            for rationale in (False, True):
                group = [j for j in jobs if j[1] == rationale]
                if not group:
                    continue
                texts = [t for inputs, _, _ in group for t in inputs]
                try:
                    results = self.predict_fn(texts, rationale)
                except Exception as err:  # the requests fail, the service stays up
                    for _, _, future in group:
                        future.set_exception(err)
                    continue
                offset = 0
                for inputs, _, future in group:
                    future.set_result(results[offset : offset + len(inputs)])
                    offset += len(inputs)


def create_app(model_dir: str, max_batch: int = 32, max_inputs: int = 64, max_input_chars: int = 4000,
               max_body_bytes: int = 1_000_000, batch_wait_ms: float = 5.0):
    """The FastAPI app serving the student in ``model_dir``."""
    try:
        from fastapi import FastAPI, HTTPException, Request
        from fastapi.responses import JSONResponse
        from pydantic import BaseModel, Field
    except ImportError:
        raise MissingDependency("dsbs serve needs FastAPI and uvicorn: pip install 'dsbs[serve]'") from None
    import asyncio
    from contextlib import asynccontextmanager
    from typing import Annotated

    from dsbs.checkpoint import read_meta
    from dsbs.inference import predict
    from dsbs.models import load_student

    meta = read_meta(model_dir)
    model, tokenizer = load_student(model_dir, for_inference=True)
    name = Path(model_dir).resolve().parent.name if Path(model_dir).name == "model" else Path(model_dir).name
    lock = threading.Lock()

    def predict_fn(texts: list[str], rationale: bool) -> list[dict]:
        with lock:
            return predict(model, tokenizer, meta, texts, with_rationale=rationale, batch_size=max_batch)

    batcher = Batcher(predict_fn, max_batch, batch_wait_ms / 1000)

    @asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()  # graceful shutdown: finish the batch in hand, then stop

    class PredictRequest(BaseModel):
        inputs: list[Annotated[str, Field(min_length=1, max_length=max_input_chars)]] = Field(
            min_length=1, max_length=max_inputs, description="texts to label")
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

    app = FastAPI(title="dsbs student", version="1", lifespan=lifespan,
                  description=f"{meta['method']} student for {meta['task']}: label-only answers, no rationale tokens")

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            return JSONResponse({"detail": f"request body larger than {max_body_bytes} bytes"}, status_code=413)
        return await call_next(request)

    async def answer(inputs: list[str], rationale: bool) -> list[dict]:
        for i, item in enumerate(inputs):
            if not item.strip() or len(item) > max_input_chars:
                raise HTTPException(422, f"inputs[{i}] must be 1 to {max_input_chars} characters")
        return await asyncio.wrap_future(batcher.submit(inputs, rationale))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": name, "method": meta["method"], "task": meta["task"]}

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
        prompt_tokens = len(tokenizer(users[-1])["input_ids"])
        completion_tokens = len(tokenizer(result["label"])["input_ids"])
        return {
            "id": f"dsbs-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()), "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result["label"]},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    return app


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, **limits) -> None:
    import uvicorn

    uvicorn.run(create_app(model_dir, **limits), host=host, port=port, timeout_graceful_shutdown=30)
