"""Servers the tests and benchmarks start on this machine: free ports, waiting until they answer, and
llama-cpp-python's OpenAI-compatible server with the bundled SmolLM2 (a real teacher on loopback)."""

import socket
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, wait_s: float, process=None) -> None:
    """Return once GET ``url`` answers; RuntimeError after ``wait_s`` or if ``process`` exits first."""
    deadline = time.time() + wait_s
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if process is not None and process.poll() is not None:
                break
            time.sleep(0.2)
    if process is not None:
        process.kill()
    raise RuntimeError(f"{url} did not answer within {wait_s:.0f} s")


def start_llama_server(model: str = "smollm2-135m", alias: str = "smollm2", wait_s: float = 120.0):
    """llama-cpp-python's OpenAI-compatible server on a free loopback port: (process, base URL)."""
    import subprocess
    import sys

    from dsbs.models import DEFAULT_STUDENT, smollm2_gguf_path

    port = free_port()
    path = str(smollm2_gguf_path()) if model == DEFAULT_STUDENT else model
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", path,
                                "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--model_alias", alias],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    wait_until_up(url + "/models", wait_s, process)
    return process, url


