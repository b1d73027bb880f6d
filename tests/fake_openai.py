"""An OpenAI-compatible server on loopback whose reply to each item follows a script of faults."""

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("ok", "429", "500", "hang", "truncated", "garbage", "trickle", "429-day", "401", "echo-auth", "huge")


def item_of(body: dict) -> str:
    """The input being asked about: the last query of the prompt, or the last user turn."""
    if "messages" in body:
        return body["messages"][-1]["content"]
    return body["prompt"].rsplit("\n\n", 1)[-1]


class FakeOpenAI:
    def __init__(self, script=lambda item, attempt: "ok", delay: float = 0.0, hang: float = 3.0,
                 answer=lambda item, attempt: "The numbers add up. So the answer is 42."):
        self.script, self.delay, self.hang, self.answer = script, delay, hang, answer
        self.requests: Counter = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                item = item_of(body)
                with server.lock:
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
                if "messages" in body:
                    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    kind = "chat.completion"
                else:
                    choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
                    kind = "text_completion"
                payload = {"id": "x", "object": kind, "created": 0, "model": body.get("model", "m"),
                           "choices": [choice],
                           "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17}}
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
