"""`dsbs data download` against a real HTTP server on loopback that breaks its first transfer."""

import hashlib
import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dsbs.data import MANIFEST, download, inspect
from dsbs.tasks import TaskConfig
from dsbs.tasks.common import DataError, resolve_data_dir


def make_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("datasets/svamp/svamp_test.json", json.dumps({"input": "1 and 2?", "label": "( 1 + 2 )"}) + "\n")
        zf.writestr("datasets/svamp/llm/test_CoT_0.json", json.dumps(["1 plus 2. The answer is (1 + 2)."]))
        zf.writestr("datasets/padding.bin", bytes(range(256)) * 400)  # big enough to break mid-way
    return buffer.getvalue()


@pytest.fixture
def server():
    state = {"body": make_archive(), "requests": [], "break_first": True}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body, start = state["body"], 0
            state["requests"].append(self.headers.get("Range"))
            if self.headers.get("Range"):
                start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            if state["break_first"]:  # send half, then drop the connection
                state["break_first"] = False
                self.wfile.write(body[start : start + len(body) // 2])
                self.wfile.flush()
                self.connection.close()
                return
            self.wfile.write(body[start:])

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}/datasets.zip"
    yield state
    httpd.shutdown()


def test_broken_download_resumes_verifies_and_unpacks(server, tmp_path, monkeypatch):
    digest = hashlib.sha256(server["body"]).hexdigest()
    target = download(url=server["url"], cache_dir=str(tmp_path), sha256=digest)
    assert server["requests"][0] is None and server["requests"][1] == f"bytes={len(server['body']) // 2}-"
    assert (target / MANIFEST).is_file() and not (tmp_path / "datasets.zip.part").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".unpack-")]
    report = inspect(TaskConfig(task="svamp", data_dir=str(target)))
    assert report["rows"] == 1 and report["teacher_accuracy"] == 1.0
    monkeypatch.delenv("DSBS_DATA_DIR", raising=False)
    monkeypatch.setenv("DSBS_CACHE_DIR", str(tmp_path))
    assert resolve_data_dir(None) == target  # later commands find the download by themselves
    requests_before = len(server["requests"])
    download(url=server["url"], cache_dir=str(tmp_path))
    assert len(server["requests"]) == requests_before


def test_checksum_mismatch_leaves_nothing_half_done(server, tmp_path):
    server["break_first"] = False
    with pytest.raises(DataError, match="checksum mismatch"):
        download(url=server["url"], cache_dir=str(tmp_path), sha256="0" * 64)
    assert not (tmp_path / "datasets").exists() and not (tmp_path / "datasets.zip.part").exists()


def test_not_a_zip_is_rejected(server, tmp_path):
    server["break_first"], server["body"] = False, b"<html>rate limited</html>"
    with pytest.raises(DataError, match="did not return a zip"):
        download(url=server["url"], cache_dir=str(tmp_path))
    assert not (tmp_path / "datasets").exists()


def test_an_archive_that_unpacks_too_large_is_refused_before_writing(server, tmp_path):
    server["break_first"] = False
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("datasets/zeros.bin", bytes(50_000_000))  # 50 MB of zeros: a few kB on the wire
    server["body"] = bomb.getvalue()
    assert len(server["body"]) < 100_000
    with pytest.raises(DataError, match=r"unpacks to 50,000,000 bytes, more than the limit of 10,000,000 "
                                        r"\(max_unpacked_bytes\)"):
        download(url=server["url"], cache_dir=str(tmp_path), max_unpacked_bytes=10_000_000)
    assert not (tmp_path / "datasets").exists() and not list(tmp_path.glob(".unpack-*"))
