"""The HTTP service on loopback: /predict, /health, OpenAPI, limits, and the openai client as caller."""

import dataclasses
import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from tests.servers import free_port, wait_until_up

openai = pytest.importorskip("openai", reason="the OpenAI-compatibility tests use the openai client: "
                                             "pip install -e '.[dev]'")
pytest.importorskip("fastapi", reason="dsbs serve needs: pip install 'dsbs[serve]'")

from dsbs.configs import ServeConfig  # noqa: E402


@pytest.fixture(scope="module")
def service(trained_student):
    with running(ServeConfig(model=trained_student, max_inputs=8, max_input_chars=200)) as url:
        yield url


@contextmanager
def running(config: ServeConfig):
    """The service of ``config`` on a free loopback port, as `dsbs serve` runs it: (base URL)."""
    import uvicorn

    from dsbs.serve import create_app, uvicorn_config

    config = dataclasses.replace(config, port=free_port())
    server = uvicorn.Server(uvicorn_config(create_app(config), config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{config.port}"
    wait_until_up(url + "/health", wait_s=60)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def post(url: str, body, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_predict_health_and_schema(service):
    status, body = post(service + "/predict", {"inputs": ["Ava has 3 apples and gets 2 more. How many?",
                                                          "2 boxes of 4?"]})
    assert status == 200 and len(body["predictions"]) == 2 and all(isinstance(p["label"],
                                                                              str) for p in body["predictions"])
    assert "rationale" not in body["predictions"][0] or body["predictions"][0]["rationale"] is None
    status, body = post(service + "/predict", {"inputs": ["2 boxes of 4?"], "rationale": True})
    assert status == 200 and isinstance(body["predictions"][0]["rationale"], str)
    health = json.loads(urllib.request.urlopen(service + "/health").read())
    assert health["status"] == "ok" and health["method"] == "dsbs"
    schema = json.loads(urllib.request.urlopen(service + "/openapi.json").read())
    assert {"/predict", "/health", "/v1/chat/completions", "/v1/models"} <= set(schema["paths"])


@pytest.mark.parametrize("body, raw", [
    ({"inputs": []}, None), ({"inputs": ["x" * 201]}, None), ({"inputs": ["ok"] * 9}, None), ({"inputs": "text"}, None),
    ({"inputs": [5]}, None), ({}, None), (None, b"{not json"), ({"inputs": ["   "]}, None), (None, b"\xff\xfe"),
])
def test_invalid_bodies_get_4xx_with_a_message(service, body, raw):
    status, payload = post(service + "/predict", body, raw)
    assert 400 <= status < 500 and payload["detail"]


def test_oversized_body_is_413_before_it_is_read(service):
    import http.client
    from urllib.parse import urlparse

    address = urlparse(service)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    connection.putrequest("POST", "/predict")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", "1100000")
    connection.endheaders()  # the body is never sent: the limit answers from the header alone
    response = connection.getresponse()
    assert response.status == 413 and "larger than" in json.loads(response.read())["detail"]
    connection.close()


def test_concurrent_requests_all_answered(service):
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: post(service + "/predict", {"inputs": [f"{i} boxes of 3?"]}), range(16)))
    assert all(status == 200 and len(body["predictions"]) == 1 for status, body in results)


def test_openai_client_talks_to_the_student(service):
    client = openai.OpenAI(base_url=service + "/v1", api_key="none", max_retries=0)
    [model] = client.models.list().data
    reply = client.chat.completions.create(model=model.id, messages=[{"role": "user", "content": "2 boxes of 4?"}])
    assert isinstance(reply.choices[0].message.content, str) and reply.usage.prompt_tokens > 0
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model=model.id, messages=[{"role": "system", "content": "no user turn"}])


def test_batcher_survives_a_request_cancelled_while_it_waits():
    import threading

    from dsbs.serve import Batcher

    release = threading.Event()

    def predict_fn(texts, rationale):
        release.wait(timeout=10)  # the first batch holds the worker while later requests queue up
        return [{"label": t.upper()} for t in texts]

    batcher = Batcher(predict_fn, max_batch=1, wait_s=0)
    first = batcher.submit(["a"], False)
    time.sleep(0.2)
    abandoned = batcher.submit(["b"], False)
    assert abandoned.cancel()  # what asyncio does to the future when the client disconnects
    release.set()
    assert first.result(timeout=10) == [{"label": "A"}]
    assert batcher.submit(["c"], False).result(timeout=10) == [{"label": "C"}]
    batcher.close()


@pytest.fixture(scope="module")
def guarded(trained_student):
    config = ServeConfig(model=trained_student, max_inputs=8, max_input_chars=200, api_key="s3cret-key",
                         max_body_bytes=2000, max_queue=4, header_timeout=1.0)
    with running(config) as url:
        yield url


def call(url: str, path: str, body: bytes | None = None, headers: dict | None = None, chunked: bool = False):
    """(status, parsed body, response headers) of one request sent exactly as given."""
    from urllib.parse import urlparse

    address = urlparse(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    try:
        connection.request("POST" if body is not None else "GET", path,
                           body=iter([body[i : i + 500] for i in range(0, len(body), 500)]) if chunked else body,
                           headers={"Content-Type": "application/json", **(headers or {})}, encode_chunked=chunked)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the service answered (413) and closed before the whole body was sent: its answer is still there
    response = connection.getresponse()
    status, payload, got = response.status, response.read(), dict(response.getheaders())
    connection.close()
    return status, json.loads(payload), got


KEY = {"Authorization": "Bearer s3cret-key"}


def test_the_api_key_guards_every_route_but_health(guarded):
    body = json.dumps({"inputs": ["2 boxes of 4?"]}).encode()
    assert call(guarded, "/health")[0] == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}):
        status, payload, got = call(guarded, "/predict", body, headers)
        assert status == 401 and "API key" in payload["detail"] and got.get("www-authenticate") == "Bearer"
    assert call(guarded, "/v1/models")[0] == 401
    assert call(guarded, "/predict", body, KEY)[0] == 200


def test_a_chunked_body_is_counted_as_it_arrives(guarded):
    big = json.dumps({"inputs": ["x" * 150] * 20}).encode()  # 3 kB, past the 2 kB limit, with no Content-Length
    status, payload, _ = call(guarded, "/predict", big, KEY, chunked=True)
    assert status == 413 and "max_body_bytes" in payload["detail"]
    small = json.dumps({"inputs": ["2 boxes of 4?"]}).encode()
    assert call(guarded, "/predict", small, KEY, chunked=True)[0] == 200


def test_only_local_host_names_are_answered_on_loopback(guarded):
    assert call(guarded, "/health", headers={"Host": "evil.example"})[0] == 400
    assert call(guarded, "/health", headers={"Host": "localhost:8000"})[0] == 200


def test_a_full_queue_answers_503_with_retry_after(guarded):
    body = json.dumps({"inputs": ["one", "two", "three", "four", "five"]}).encode()  # 5 inputs, the queue holds 4
    status, payload, got = call(guarded, "/predict", body, KEY)
    assert status == 503 and "max_queue" in payload["detail"] and got["retry-after"] == "1"


def test_a_request_past_its_deadline_gets_504(trained_student):
    with running(ServeConfig(model=trained_student, request_timeout=0.001)) as url:
        status, payload, _ = call(url, "/predict", json.dumps({"inputs": ["2 boxes of 4?"]}).encode())
    assert status == 504 and "request_timeout" in payload["detail"]


def test_a_client_trickling_its_headers_is_cut_off(guarded):
    from urllib.parse import urlparse

    def closed_by_server(s) -> bool:
        try:
            s.sendall(b"X")  # one more header byte, as slowloris sends them
            return s.recv(1, socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    address = urlparse(guarded)
    open_sockets = [socket.create_connection((address.hostname, address.port), timeout=10) for _ in range(5)]
    for s in open_sockets:
        s.sendall(b"POST /predict HTTP/1.1\r\n")
    started = time.monotonic()
    while open_sockets and time.monotonic() - started < 8:
        time.sleep(0.3)
        open_sockets = [s for s in open_sockets if not closed_by_server(s)]
    assert not open_sockets, "header_timeout is 1 s: every trickling connection must be closed"


def test_a_service_with_choices_answers_from_each_inputs_options(trained_student, tmp_path):
    import shutil

    from dsbs.tasks import cqa

    student = tmp_path / "cqa-student"  # the tiny student, as if trained on CQA: its label set is a row's options
    shutil.copytree(trained_student, student)
    meta = json.loads((student / "dsbs.json").read_text())
    (student / "dsbs.json").write_text(json.dumps({**meta, "task": "cqa", "task_config": {"task": "cqa"}}))
    options = ["fridge", "shelf", "bag", "car", "oven"]
    with running(ServeConfig(model=str(student), choices=True)) as url:
        status, body = post(url + "/predict", {"inputs": [cqa.format_input("Where is milk kept?", options)]})
        assert status == 200 and body["predictions"][0]["label"] in options
        status, body = post(url + "/predict", {"inputs": ["Where is milk kept?"]})
        assert status == 422 and "inputs[0]: no answer choices" in body["detail"]


def test_a_row_makes_its_text_as_in_training_and_health_says_how(trained_student, tmp_path):
    """Before: serve took texts only, so a client of a student trained with --input-template had to know the
    template, which nothing published."""
    import shutil

    student = tmp_path / "templated"
    shutil.copytree(trained_student, student)
    meta = json.loads((student / "dsbs.json").read_text())
    meta["task_config"] = {**(meta.get("task_config") or {}), "input_template": "{what} in {boxes} boxes?"}
    (student / "dsbs.json").write_text(json.dumps(meta))
    with running(ServeConfig(model=str(student), max_inputs=8, max_input_chars=200)) as url:
        health = json.loads(urllib.request.urlopen(url + "/health").read())
        assert health["input"] == {"template": "{what} in {boxes} boxes?"}
        status, by_row = post(url + "/predict", {"inputs": [{"what": "3 apples", "boxes": 4}], "rationale": True})
        _, by_text = post(url + "/predict", {"inputs": ["3 apples in 4 boxes?"], "rationale": True})
        assert status == 200 and by_row["predictions"] == by_text["predictions"]
        status, refused = post(url + "/predict", {"inputs": ["ok", {"what": "3 apples"}]})
        assert status == 422 and "inputs[1]: missing field 'boxes' used by --input-template" in refused["detail"]
