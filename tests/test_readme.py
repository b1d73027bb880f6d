"""The README's own-task walkthrough, run command for command as a user would (on a tiny student)."""

import json
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import run_dsbs
from tests.fake_openai import FakeOpenAI
from tests.servers import free_port, wait_until_up
from tests.test_own_task import sentiment_teacher

ROOT = Path(__file__).parent.parent
SMALL_TRAINING = ["--max-steps", "2", "--batch-size", "4", "--precision", "fp32", "--max-input-tokens", "64",
                  "--max-target-tokens", "32", "--eval-limit", "4"]


def walkthrough() -> list[list[str]]:
    """The commands of the README's "Your own task, end to end" block."""
    section = (ROOT / "README.md").read_text().split("## Your own task, end to end", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def ask_service(curl: list[str], port: int) -> dict:
    """What the README's curl line asks, sent to the service on ``port``."""
    url = next(a for a in curl if a.startswith("localhost:")).replace("localhost:8000", f"127.0.0.1:{port}")
    body = curl[curl.index("-d") + 1].encode()
    request = urllib.request.Request("http://" + url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def run_walkthrough(workdir: Path, extra: dict[str, list[str]]) -> dict:
    """Each command in ``workdir`` (where examples/ is), with ``extra`` flags per subcommand; the service's answer."""
    (workdir / "examples").symlink_to(ROOT / "examples")
    service, answer, port = None, None, 0
    try:
        for argv in walkthrough():
            if argv[0] == "curl":
                answer = ask_service(argv, port)
            elif argv[1] == "serve":
                port = free_port()
                service = subprocess.Popen([sys.executable, "-m", "dsbs", *argv[1:], "--port", str(port)], cwd=workdir,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                wait_until_up(f"http://127.0.0.1:{port}/health", wait_s=120)
            else:
                assert argv[0] == "dsbs"
                run_dsbs(*argv[1:], *extra.get(argv[1], []), cwd=workdir)
    finally:
        if service is not None:
            service.terminate()
            service.wait(timeout=30)
    return answer


def check_outputs(workdir: Path, answer: dict) -> None:
    runs = workdir / "runs"
    assert json.loads((runs / "reviews" / "model" / "dsbs.json").read_text())["task"] == "reviews"
    metrics = json.loads((runs / "reviews" / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 12 and metrics["task_config"]["input_field"] == "text"
    answers = [json.loads(line) for line in (runs / "reviews" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 12 and {a["label"] for a in answers} <= {"positive", "negative"}
    assert answer["predictions"][0]["label"] in ("positive", "negative")


@pytest.mark.slow  # seven CLI processes, 40 s: the pieces are in tests/test_own_task.py, which runs by default
def test_the_walkthrough_runs_as_written(tmp_path, tiny_causal):
    """With a fake OpenAI-compatible teacher standing in for a real one (the README names that route)."""
    pytest.importorskip("fastapi")
    with FakeOpenAI(answer=sentiment_teacher) as server:
        answer = run_walkthrough(tmp_path, {"teach": ["--backend", "openai", "--base-url", server.url, "--model", "m"],
                                            "train": ["--student", tiny_causal, *SMALL_TRAINING]})
    check_outputs(tmp_path, answer)
    summary = json.loads((tmp_path / "runs" / "reviews-teach" / "teach_summary.json").read_text())
    assert summary["items"] == 40 and summary["prompt"].startswith("exemplars written by the teacher")


@pytest.mark.slow
def test_the_walkthrough_runs_with_the_offline_teacher(tmp_path, tiny_causal):
    """Exactly the README's teacher (the bundled SmolLM2); only the student is a tiny one."""
    answer = run_walkthrough(tmp_path, {"train": ["--student", tiny_causal, *SMALL_TRAINING]})
    check_outputs(tmp_path, answer)
