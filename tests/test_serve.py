"""The HTTP service on loopback: /predict, /health, OpenAPI, limits, and the openai client as caller."""

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.servers import free_port, wait_until_up

openai = pytest.importorskip("openai", reason="the OpenAI-compatibility tests use the openai client: "
                                             "pip install -e '.[dev]'")
pytest.importorskip("fastapi", reason="dsbs serve needs: pip install 'dsbs[serve]'")


@pytest.fixture(scope="module")
def service(trained_student):
    import uvicorn

    from dsbs.serve import create_app

    app = create_app(trained_student, max_inputs=8, max_input_chars=200)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url + "/health", wait_s=60)
    yield url
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
