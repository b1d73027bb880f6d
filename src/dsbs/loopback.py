"""A server started on this machine: a free port to give it, and waiting until it answers."""

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
