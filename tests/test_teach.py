"""The teacher path against real HTTP servers on loopback: faults, retries, cache, kill -9."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from dsbs.prompts import completion_prompt, load_prompt
from dsbs.tasks import TaskConfig, benchmarks, demo, get_task
from dsbs.teach import RetryableError, TeachConfig, TeacherStopped, call_with_retries, teach
from tests.conftest import DATA_DIR, needs_data, run_dsbs
from tests.fake_openai import FakeOpenAI

DEMO = TaskConfig(task="demo")
ROWS = demo.load("train")


def query(row) -> str:
    return f"Q: {row.input}\nA:"


def config(server, tmp_path, **overrides) -> TeachConfig:
    settings = dict(backend="openai", base_url=server.url, model="fake", limit=6, concurrency=3, timeout=0.5,
                    max_retries=2, output=str(tmp_path / "teach"))
    return TeachConfig(**{**settings, **overrides})


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def test_retry_policy_honours_retry_after_and_gives_up():
    delays, calls = [], []

    def flaky():
        calls.append(1)
        raise RetryableError("429", retry_after=0.25 if len(calls) == 1 else None)

    with pytest.raises(RetryableError):
        call_with_retries(flaky, max_retries=3, sleep=delays.append)
    assert len(calls) == 4 and delays[0] == 0.25
    assert all(0 <= d <= 0.5 * 2 ** (i + 1) for i, d in enumerate(delays[1:]))


def test_every_fault_is_retried_or_recorded(tmp_path):
    plans = {query(ROWS[0]): ["429"], query(ROWS[1]): ["500", "500"], query(ROWS[2]): ["hang"],
             query(ROWS[3]): ["truncated"], query(ROWS[4]): ["garbage"], query(ROWS[5]): ["500"] * 10}

    def script(item, attempt):
        return (plans[item] + ["ok"])[attempt - 1] if attempt <= len(plans[item]) else "ok"

    with FakeOpenAI(script=script, hang=2.0) as server:
        summary = teach(DEMO, config(server, tmp_path))
    assert [server.requests[query(r)] for r in ROWS[:6]] == [2, 3, 2, 2, 2, 3]
    assert summary["failed_items"] == 1 and summary["items"] == 6 and summary["requests_made"] == 6
    rows = read_jsonl(tmp_path / "teach" / "train.jsonl")
    assert [r["teacher_label"] for r in rows] == ["42"] * 5 + [None]
    details = read_jsonl(tmp_path / "teach" / "llm" / "train_teacher.jsonl")
    assert details[5]["errors"] and "500" in details[5]["errors"][0]
    assert details[0]["completions"] == ["The numbers add up. So the answer is 42."]
    assert details[0]["completion_tokens"] == 7
    # the output is a task dsbs train reads as it is
    loaded = get_task(TaskConfig(task=str(tmp_path / "teach"))).load("train")
    assert loaded[0].rationale == "The numbers add up." and loaded[0].teacher_label == "42"


def test_cached_rerun_makes_no_request_and_chat_api_works(tmp_path):
    with FakeOpenAI() as server:
        first = teach(DEMO, config(server, tmp_path, api="chat"))
        assert first["requests_made"] == 6 and sum(server.requests.values()) == 6
        again = teach(DEMO, config(server, tmp_path, api="chat"))
        assert sum(server.requests.values()) == 6
        assert again["requests_made"] == 0 and again["answers_from_cache"] == 6
        teach(DEMO, config(server, tmp_path, api="completion"))  # another prompt is another key
        assert sum(server.requests.values()) == 12


def test_samples_vote_and_keep_agreeing_rationales(tmp_path):
    answers = {1: "Add them. So the answer is 42.", 2: "Guess. So the answer is 41.", 3: "Count. So the answer is 42."}
    with FakeOpenAI(answer=lambda item, attempt: answers[attempt]) as server:
        summary = teach(DEMO, config(server, tmp_path, limit=2, samples=3, temperature=0.7, concurrency=1))
    details = read_jsonl(tmp_path / "teach" / "llm" / "train_teacher.jsonl")
    assert summary["requests_made"] == 6
    assert details[0]["teacher_label"] == "42" and details[0]["agreeing_rationales"] == ["Add them.", "Count."]


def test_samples_at_temperature_zero_are_refused_and_duplicated_rows_are_asked_once(tmp_path):
    """Before: --samples 3 at temperature 0 paid three times for one answer; two equal rows paid twice."""
    from dsbs.errors import ConfigError

    with pytest.raises(ConfigError, match="--samples 3 at --temperature 0"):
        TeachConfig(samples=3)
    path = tmp_path / "rows.csv"
    path.write_text("text,sentiment\nGreat fit,positive\nGreat fit,positive\nBroke at once,negative\n")
    with FakeOpenAI(answer=lambda item, attempt: "It says so. So the answer is positive.") as server:
        task = TaskConfig(task=str(path), input_field="text", label_field="sentiment")
        dry = teach(task, config(server, tmp_path, zero_shot=True, dry_run=True))
        summary = teach(task, config(server, tmp_path, zero_shot=True))
        assert sum(server.requests.values()) == 2 and summary["failed_items"] == 0
    # counted as sent and billed: once per request (before: 3 requests and every row's copy of its tokens)
    assert dry["requests"] == summary["requests_made"] == summary["this_run"]["requests"] == 2
    assert summary["completion_tokens"] == summary["this_run"]["completion_tokens"] == 2 * 7
    assert teach(task, config(server, tmp_path, zero_shot=True, dry_run=True))["answers_in_cache"] == 2
    # the teacher writing exemplars for equal labelled rows: asked once each, counted once each
    path.write_text(path.read_text() + "Broke at once,negative\n")
    with FakeOpenAI(answer=lambda item, attempt: "It says so. So the answer is positive.") as server:
        dry = teach(task, config(server, tmp_path / "shots", exemplars=2, dry_run=True))
        summary = teach(task, config(server, tmp_path / "shots", exemplars=2))
        sent = sum(server.requests.values())
    assert sent == 4 and dry["requests"] == summary["requests_made"] == 4
    assert dry["exemplar_requests"] == summary["this_run"]["exemplar_requests"] == 2
    # a failed request says nothing of the teacher: its row is a failed item, not a wrong answer (before: 2/3)
    with FakeOpenAI(script=lambda item, attempt: "500" if "Broke" in item else "ok",
                    answer=lambda item, attempt: "It says so. So the answer is positive.") as server:
        summary = teach(task, config(server, tmp_path / "failing", zero_shot=True, max_retries=0))
    assert summary["failed_items"] == 2 and summary["teacher_accuracy"] == 1.0  # both "Broke at once" rows
    assert summary["teacher_accuracy_rows"] == 2
    rows = read_jsonl(tmp_path / "teach" / "train.jsonl")
    assert [r["rationale"] for r in rows] == ["It says so."] * 3


def test_a_limit_pilot_sends_the_prompt_of_the_full_run(tmp_path):
    """Before: exemplars came from the first --limit rows, so a pilot on a file sorted by label had one-label
    exemplars, and the full run, with another prompt, paid again for every row the pilot had answered."""
    path = tmp_path / "sorted.csv"
    path.write_text("text,sentiment\n" + "".join(f"good {n},positive\n" for n in range(6))
                    + "".join(f"bad {n},negative\n" for n in range(6)))
    task = TaskConfig(task=str(path), input_field="text", label_field="sentiment", label_set="positive,negative")

    def answer(item: str, attempt: int) -> str:  # explains the label it is given, else says positive
        given = re.search(r"\(The correct answer: (\w+)\.\)", item)
        return f"It says so. So the answer is {given.group(1) if given else 'positive'}."

    with FakeOpenAI(answer=answer) as server:
        teach(task, config(server, tmp_path, limit=6, exemplars=2))
        pilot = sum(server.requests.values())
        teach(task, config(server, tmp_path, limit=None, exemplars=2))
        assert sum(server.requests.values()) - pilot == 6  # only the rows the pilot left, under the same prompt
    labels = [e["answer"].rsplit(" ", 1)[1] for e in json.loads((tmp_path / "teach" / "prompt.json").read_text())
              ["exemplars"]]
    assert sorted(labels) == ["negative.", "positive."]


@needs_data
def test_samples_write_a_completion_whose_parsed_label_won(tmp_path):
    # labels are compacted (84/2) and completions are not ((84 / 2)): the choice is by parsed label
    answers = {1: "Double it. The answer is (84 * 2).", 2: "Halve it. The answer is (84 / 2).",
               3: "Split it. The answer is ( 84.0 / 2.0 )."}
    with FakeOpenAI(answer=lambda item, attempt: answers[attempt]) as server:
        teach(TaskConfig(task="svamp", data_dir=DATA_DIR),
              config(server, tmp_path, limit=1, samples=3, temperature=0.7, concurrency=1))
    [example] = get_task(TaskConfig(task="svamp", data_dir=str(tmp_path / "teach"))).load("train")
    assert example.teacher_label == "84/2" and example.rationale == "Halve it."


def test_kill_9_then_rerun_answers_every_item_once(tmp_path):
    n, concurrency = 40, 4
    with FakeOpenAI(delay=0.05) as server:
        command = [sys.executable, "-m", "dsbs", "teach", "--task", "demo", "--limit", str(n), "--backend", "openai",
                   "--base-url", server.url, "--model", "fake", "--concurrency", str(concurrency),
                   "--output", str(tmp_path / "teach")]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while sum(server.requests.values()) < n // 3 and time.time() < deadline:
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        seen_before_kill = sum(server.requests.values())
        assert seen_before_kill < n, "the run finished before it could be killed"
        subprocess.run(command, check=True, capture_output=True)
        total = sum(server.requests.values())
        rows = read_jsonl(tmp_path / "teach" / "train.jsonl")
        assert len(rows) == n and all(r["teacher_label"] == "42" for r in rows)
        assert total <= n + concurrency  # at most the requests in flight at the kill are asked again
        assert max(server.requests.values()) <= 2
        subprocess.run(command, check=True, capture_output=True)
        assert sum(server.requests.values()) == total  # a finished run is all cache


@pytest.mark.parametrize("name", benchmarks())
def test_builtin_prompts_parse_to_their_own_labels(name):
    spec = load_prompt(name)
    assert 6 <= len(spec.exemplars) <= 10
    task = get_task(TaskConfig(task=name))
    for _, answer in spec.exemplars:
        rationale, label = task.parse_completion(answer)
        assert rationale and label, answer
    prompt = completion_prompt(spec, "NEW INPUT")
    assert prompt.endswith(spec.query_template.format(input="NEW INPUT"))


@needs_data
@pytest.mark.parametrize("name", benchmarks())
def test_builtin_exemplars_come_from_the_training_pool(name):
    task = get_task(TaskConfig(task=name, data_dir=DATA_DIR))
    pool = {e.input: e.label for e in task.load(task.train_split)}
    for text, answer in load_prompt(name).exemplars:
        assert text in pool
        assert task.labels_match(task.parse_completion(answer)[1], pool[text])


@needs_data
def test_benchmark_output_is_a_data_dir_the_loader_reads(tmp_path):

    def answer(item, attempt):
        return "Half of 84 is 42. The answer is (84 / 2).\n\nQ: invented next example"

    with FakeOpenAI(answer=answer) as server:
        teach(TaskConfig(task="svamp", data_dir=DATA_DIR), config(server, tmp_path, limit=5))
    out = tmp_path / "teach"
    examples = get_task(TaskConfig(task="svamp", data_dir=str(out))).load("train")
    assert len(examples) == 5 and examples[0].teacher_label == "84/2" and examples[0].rationale == "Half of 84 is 42."
    assert len(get_task(TaskConfig(task="svamp", data_dir=str(out))).load("test")) == 200  # other splits come along


def test_local_transformers_backend_records_unparsable_answers(tiny_causal, tmp_path):
    summary = teach(DEMO, TeachConfig(backend="local", model=tiny_causal, limit=2, max_tokens=8, output=str(tmp_path)))
    details = read_jsonl(tmp_path / "llm" / "train_teacher.jsonl")
    assert summary["items"] == 2 and summary["failed_items"] == 0
    assert all(len(d["completions"]) == 1 and d["completion_tokens"] > 0 for d in details)
    assert summary["parse_failures"] == sum(d["teacher_label"] is None for d in details)


def test_a_trickling_server_cannot_hold_a_request_past_its_deadline(tmp_path):
    with FakeOpenAI(script=lambda item, attempt: "trickle") as server:
        started = time.monotonic()
        summary = teach(DEMO, config(server, tmp_path, limit=1, timeout=1.0, max_retries=0))
        assert time.monotonic() - started < 3.5  # the whole reply would take 12 s
    [details] = read_jsonl(tmp_path / "teach" / "llm" / "train_teacher.jsonl")
    assert summary["failed_items"] == 1 and "deadline" in details["errors"][0]


def test_retry_after_is_capped_and_counted(tmp_path):
    with FakeOpenAI(script=lambda item, attempt: "429-day" if attempt == 1 else "ok") as server:
        started = time.monotonic()
        summary = teach(DEMO, config(server, tmp_path, limit=2, max_retry_after=0.2))
        assert time.monotonic() - started < 5
    assert summary["retry_after_capped"] == 2 and summary["failed_items"] == 0


def test_oversized_replies_are_cut_before_they_are_stored(tmp_path):
    long_text = "Step. " * 2000 + "So the answer is 42."
    script = {query(ROWS[0]): "huge", query(ROWS[1]): "ok"}
    with FakeOpenAI(script=lambda item, attempt: script[item], answer=lambda item, attempt: long_text) as server:
        summary = teach(DEMO, config(server, tmp_path, limit=2, max_tokens=16, max_retries=0))
    details = read_jsonl(tmp_path / "teach" / "llm" / "train_teacher.jsonl")
    assert summary["cut_replies"] == 2 and server.requests[query(ROWS[0])] == 1  # a 4 MB reply is not asked again
    assert "reply larger than" in details[0]["errors"][0] and not details[0]["completions"]
    assert len(details[1]["completions"][0]) == 32 * 16  # max_reply_chars: 32 x max_tokens
    assert (tmp_path / "teach" / "cache.sqlite").stat().st_size < 200_000


def test_a_refused_key_stops_the_run_at_once_and_nothing_stores_it(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-very-secret-key-123")
    with FakeOpenAI(script=lambda item, attempt: "401") as server:
        with pytest.raises(TeacherStopped, match=r"refused the request \(HTTP 401\).*OPENAI_API_KEY"):
            teach(DEMO, config(server, tmp_path, limit=30, concurrency=2))
        assert sum(server.requests.values()) <= 2 + 2  # what was in flight, not all 30
    with FakeOpenAI(script=lambda item, attempt: "echo-auth") as server:
        url = server.url.replace("http://", "http://admin:hunter2@")
        summary = teach(DEMO, config(server, tmp_path / "echo", limit=2, base_url=url))
    stored = "".join(p.read_text(errors="replace") for p in (tmp_path / "echo").rglob("*") if p.is_file())
    assert "very-secret" not in stored and "hunter2" not in stored and "[redacted]" in stored
    assert summary["config"]["base_url"].startswith("http://127.0.0.1:")


def test_a_full_disk_stops_the_run_cleanly_and_keeps_what_was_stored(tmp_path):
    import resource

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (96_000, 96_000))

    with FakeOpenAI() as server:
        args = ["teach", "--task", "demo", "--limit", "200", "--backend", "openai", "--base-url", server.url,
                "--model", "fake", "--concurrency", "2", "--output", str(tmp_path / "teach")]
        full = subprocess.run([sys.executable, "-m", "dsbs", *args], capture_output=True, text=True,
                              preexec_fn=small_disk)
        assert full.returncode == 2 and "cannot store the teacher's answers" in full.stderr
        assert "Traceback" not in full.stderr
        assert not list((tmp_path / "teach").rglob(".tmp-*")) and not (tmp_path / "teach" / "train.jsonl").exists()
        asked = sum(server.requests.values())
        summary = json.loads(run_dsbs(*args).stdout)
    assert summary["items"] == 200 and summary["failed_items"] == 0
    assert 0 < summary["answers_from_cache"] < 200 and sum(server.requests.values()) <= asked + 200 - summary[
        "answers_from_cache"]


def test_ctrl_c_cancels_requests_not_yet_sent(tmp_path):
    # Slow answers give a loaded machine a whole second to deliver the signal before request 8 could start.
    with FakeOpenAI(delay=0.5) as server:
        args = ["teach", "--task", "demo", "--limit", "40", "--backend", "openai", "--base-url", server.url,
                "--model", "fake", "--concurrency", "2", "--output", str(tmp_path)]
        # a terminal's Ctrl-C: the signal at its default, whatever this process has (a job started with & ignores it)
        process = subprocess.Popen([sys.executable, "-m", "dsbs", *args], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 60
        while sum(server.requests.values()) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130 and "interrupted" in process.stderr.read()
        time.sleep(0.3)
        sent = sum(server.requests.values())
        assert sent <= 4 + 2 + 1  # what had started; the 34 others were never sent
        server.delay = 0.0
        summary = json.loads(run_dsbs(*args).stdout)
    assert summary["answers_from_cache"] >= 4 and summary["items"] == 40


def test_a_dry_run_counts_the_prompts_a_live_run_sends_and_sends_nothing(tiny_causal, tmp_path):
    """The dry run's prompt tokens are the same tokenizer's count over the exact prompts of the live run."""
    import dataclasses

    from transformers import AutoTokenizer

    from dsbs.cost import prompt_text

    settings = dict(backend="openai", model="fake", limit=6, tokenizer=tiny_causal, price_in=2.0, price_out=8.0,
                    output=str(tmp_path / "teach"))
    with FakeOpenAI() as server:
        live = TeachConfig(base_url=server.url, **settings)
        dry = teach(DEMO, dataclasses.replace(live, dry_run=True))
        assert not server.bodies and not (tmp_path / "teach").exists()  # nothing sent, nothing written
        summary = teach(DEMO, live)
        tokenizer = AutoTokenizer.from_pretrained(tiny_causal)
        sent = sum(len(tokenizer(prompt_text(body), add_special_tokens=False)["input_ids"]) for body in server.bodies)
    assert dry["requests"] == 6 and dry["prompt_tokens"] == sent and dry["prompt_tokens_exact"]
    assert dry["cost_batch"] == pytest.approx(dry["cost_live"] / 2)
    assert dry["cost_live"] == pytest.approx((sent * 2.0 + dry["completion_tokens_estimate"] * 8.0) / 1e6, rel=1e-3)
    assert summary["estimate"]["prompt_tokens"] == sent  # the live run's summary keeps the estimate beside its use
    again = teach(DEMO, dataclasses.replace(live, dry_run=True))
    assert again["requests"] == 0 and again["answers_in_cache"] == 6
