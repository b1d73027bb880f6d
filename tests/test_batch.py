"""The batch route of `dsbs teach` against a fake OpenAI Files/Batches API: every fault, no item paid twice."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dsbs.configs import TeachConfig
from dsbs.tasks import TaskConfig
from dsbs.teach import teach
from tests.fake_openai import FakeOpenAI

pytest.importorskip("httpx")
DEMO = TaskConfig(task="demo")
LIMIT = 8


def batch_config(server, tmp_path, **overrides) -> TeachConfig:
    settings = dict(backend="openai", base_url=server.url, model="fake", limit=LIMIT, batch=True, batch_poll=0.01,
                    batch_poll_max=0.05, max_retries=3, output=str(tmp_path / "teach"))
    return TeachConfig(**{**settings, **overrides})


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def live_outputs(tmp_path) -> tuple[dict, list[dict]]:
    """What a live run of the same items writes, for comparison with the batch route's."""
    with FakeOpenAI() as server:
        summary = teach(DEMO, TeachConfig(backend="openai", base_url=server.url, model="fake", limit=LIMIT,
                                          output=str(tmp_path / "live")))
    return summary, read_jsonl(tmp_path / "live" / "train.jsonl")


def test_a_batch_run_writes_what_a_live_run_writes(tmp_path):
    with FakeOpenAI(batch_fault="messy", upload_429=True) as server:  # results out of order, doubled, unknown
        summary = teach(DEMO, batch_config(server, tmp_path))
        assert set(server.batch.submitted.values()) == {1} and len(server.batch.submitted) == LIMIT
        assert not server.requests  # not one live request: exemplars come from the demo's rows
        teach(DEMO, batch_config(server, tmp_path))  # everything is cached: a rerun submits nothing
        assert len(server.batch.batches) == 1
    _, live_rows = live_outputs(tmp_path)
    assert read_jsonl(tmp_path / "teach" / "train.jsonl") == live_rows
    assert summary["route"] == "batch" and summary["failed_items"] == 0 and summary["items"] == LIMIT
    state = json.loads((tmp_path / "teach" / "batches.json").read_text())
    assert state["batches"][0]["counts"] == {"stored": LIMIT, "already_stored": 0, "errors": 0, "unknown": 1,
                                             "duplicates": 1, "cut_off": 0}
    assert "batch route" in (tmp_path / "teach" / "README.md").read_text()
    lines = server.batch.files[state["batches"][0]["input_file_id"]].splitlines()
    assert {json.loads(line)["url"] for line in lines} == {"/v1/completions"}


@pytest.mark.parametrize("fault", ["expire-half", "failed"])
def test_an_expired_or_failed_batch_keeps_its_answers_and_asks_only_the_missing(fault, tmp_path):
    with FakeOpenAI(batch_fault=fault) as server:
        summary = teach(DEMO, batch_config(server, tmp_path))
        second = server.batch.batches["batch-1"]["lines"]
        assert len(second) == (LIMIT // 2 if fault == "expire-half" else LIMIT)  # only what has no answer yet
        assert set(server.batch.answered.values()) == {1} and len(server.batch.answered) == LIMIT  # none paid twice
    assert summary["failed_items"] == 0


def test_error_lines_are_failed_items_asked_again_by_a_rerun(tmp_path):
    with FakeOpenAI(batch_fault="error-lines") as server:
        summary = teach(DEMO, batch_config(server, tmp_path))
        assert summary["failed_items"] == 3 and len(server.batch.batches) == 1  # lines 0, 3 and 6 of 8
        details = read_jsonl(tmp_path / "teach" / "llm" / "train_teacher.jsonl")
        assert sum("batch request failed" in " ".join(d["errors"]) for d in details) == 3
        summary = teach(DEMO, batch_config(server, tmp_path))
        assert len(server.batch.batches["batch-1"]["lines"]) == 3 and summary["failed_items"] == 0


def test_a_batch_whose_create_reply_was_lost_is_found_not_paid_twice(tmp_path):
    """Before: a 5xx after the provider made the batch was retried into a second, paid, batch."""
    from dsbs.errors import UserError

    with FakeOpenAI(batch_fault="create-lost") as server:
        summary = teach(DEMO, batch_config(server, tmp_path))
        assert len(server.batch.batches) == 1 and set(server.batch.submitted.values()) == {1}
    assert summary["failed_items"] == 0
    with FakeOpenAI(batch_fault="create-lost") as server:  # no retry left: the run stops as a kill would
        with pytest.raises(UserError, match="batches.json: the same command collects it"):
            teach(DEMO, batch_config(server, tmp_path / "again", max_retries=0))
        state = json.loads((tmp_path / "again" / "teach" / "batches.json").read_text())
        assert "id" not in state["batches"][0] and state["batches"][0]["input_file_id"] == "file-0"
        summary = teach(DEMO, batch_config(server, tmp_path / "again"))
        assert len(server.batch.batches) == 1 and set(server.batch.submitted.values()) == {1}
    assert summary["failed_items"] == 0


def other_batches(server, count: int) -> None:
    """Batches of other work on the same account, made after ours: ours is no longer on the list's first page."""
    for n in range(count):
        server.batch.files[f"other-{n}"] = json.dumps({"custom_id": f"o{n}-0"}) + "\n"
        server.batch.create({"input_file_id": f"other-{n}"})


def test_a_lost_create_is_found_past_the_first_page_and_cancel_reaches_it(tmp_path):
    """Before: only the newest 100 batches were searched (a second, paid, batch), and --cancel skipped a
    recorded file whose create's reply was lost, though its batch ran at the provider."""
    from dsbs.errors import UserError

    with FakeOpenAI(batch_fault="create-lost", batch_polls=10**6) as server:
        with pytest.raises(UserError, match="the same command collects it"):
            teach(DEMO, batch_config(server, tmp_path, max_retries=0))
        other_batches(server, 150)
        assert teach(DEMO, batch_config(server, tmp_path, batch=False, cancel=True)) == {"cancelled": ["batch-0"]}
        assert server.batch.batches["batch-0"]["status"] == "cancelling"
        server.batch.polls = 0
        teach(DEMO, batch_config(server, tmp_path))
        ours = [b for b in server.batch.batches.values() if not b["input_file_id"].startswith("other")]
        assert [len(b["lines"]) for b in ours] == [LIMIT, LIMIT // 2]  # the cancelled half asked again, once
        assert set(server.batch.answered.values()) == {1}


def test_a_refused_create_is_not_retried_by_every_rerun(tmp_path):
    """Before: a file the provider would not make a batch of stayed recorded, and each rerun failed on it."""
    from dsbs.errors import UserError

    with FakeOpenAI(batch_fault="create-400") as server:
        with pytest.raises(UserError, match="no longer listed in .*batches.json.*--batch-max-requests"):
            teach(DEMO, batch_config(server, tmp_path))
        assert json.loads((tmp_path / "teach" / "batches.json").read_text()) == {"batches": []}
        server.batch.fault = "ok"
        summary = teach(DEMO, batch_config(server, tmp_path, batch_max_requests=4))
        assert len(server.batch.batches) == 2 and summary["failed_items"] == 0


def test_a_reply_without_text_is_a_failed_item_not_a_crash_on_every_rerun(tmp_path):
    from dsbs.batch import ingest_lines

    line = {"custom_id": "k-0", "response": {"status_code": 200, "body": {
        "choices": [{"message": {"content": None, "refusal": "no"}, "finish_reason": "content_filter"}]}}}
    counts = ingest_lines([json.dumps(line)], {"k"}, None, 1000, "results.jsonl")
    assert counts["errors"] == 1 and "without text" in counts["error_details"]["k-0"]


def test_an_answer_beats_an_error_line_for_the_same_request_wherever_it_stands(tmp_path):
    """Before: the first line of a custom_id won, so a retry's answer after the first run's error line was
    dropped as a duplicate and the item stayed failed on every rerun."""
    from dsbs.batch import ingest_lines
    from dsbs.teach import AnswerCache

    def result(cid: str, text: str | None) -> str:
        if text is None:
            return json.dumps({"custom_id": cid, "response": None, "error": {"message": "server overloaded"}})
        body = {"choices": [{"message": {"content": text}}], "usage": {}}
        return json.dumps({"custom_id": cid, "response": {"status_code": 200, "body": body}, "error": None})

    cache = AnswerCache(tmp_path / "cache.sqlite")
    lines = [result("a-0", None), result("a-0", "Yes. So the answer is 1."), result("b-0", "So the answer is 2."),
             result("b-0", None), result("c-0", None), result("c-0", None)]
    counts = ingest_lines(lines, {"a", "b", "c"}, cache, 1000, "results.jsonl")
    assert cache.get("a")["text"] == "Yes. So the answer is 1." and cache.get("b")["text"] == "So the answer is 2."
    assert counts["stored"] == 2 and counts["errors"] == 1 and list(counts["error_details"]) == ["c-0"]


def start_and_kill_while_polling(server, tmp_path) -> None:
    """A batch run in another process, killed once its batch is recorded and it is polling."""
    code = ("from dsbs.configs import TeachConfig; from dsbs.tasks import TaskConfig; from dsbs.teach import teach; "
            f"teach(TaskConfig(task='demo'), TeachConfig(backend='openai', base_url={server.url!r}, model='fake', "
            f"limit={LIMIT}, batch=True, batch_poll=0.05, batch_poll_max=0.05, output={str(tmp_path / 'teach')!r}))")
    process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not server.batch.batches or server.batch.batches["batch-0"]["reads"] < 2:
        assert time.time() < deadline and process.poll() is None, "the batch run never polled"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_a_kill_while_polling_then_a_rerun_submits_nothing_new(tmp_path):
    with FakeOpenAI(batch_polls=10**6) as server:  # the batch does not end while the first run waits
        start_and_kill_while_polling(server, tmp_path)
        server.batch.polls = 0  # the provider finishes it now
        summary = teach(DEMO, batch_config(server, tmp_path))
        assert len(server.batch.batches) == 1 and set(server.batch.submitted.values()) == {1}
    assert summary["failed_items"] == 0 and summary["route"] == "batch"


def test_cancel_stops_the_recorded_batches_and_a_rerun_keeps_their_partial_results(tmp_path):
    with FakeOpenAI(batch_polls=10**6) as server:
        start_and_kill_while_polling(server, tmp_path)
        assert teach(DEMO, batch_config(server, tmp_path, batch=False, cancel=True)) == {"cancelled": ["batch-0"]}
        server.batch.polls = 0
        summary = teach(DEMO, batch_config(server, tmp_path))
        assert len(server.batch.batches["batch-1"]["lines"]) == LIMIT // 2  # the half the cancel left unanswered
        assert set(server.batch.answered.values()) == {1} and len(server.batch.answered) == LIMIT
    assert summary["failed_items"] == 0


def test_cancel_goes_on_past_a_batch_that_ended_meanwhile(tmp_path):
    """Before: the provider's 400 for a batch that had just completed stopped --cancel, the next batch ran on."""
    from dsbs.batch import BatchAPI, write_state

    with FakeOpenAI(batch_polls=10**6) as server:
        config = batch_config(server, tmp_path, batch=False, cancel=True)
        api, batches = BatchAPI(config), []
        for n in range(2):
            line = {"custom_id": f"k{n}-0", "method": "POST", "url": "/v1/completions", "body": {"prompt": "Q: x\nA:"}}
            file_id = api.upload([json.dumps(line)])
            made = api.create(file_id, "/v1/completions")
            batches.append({"id": made["id"], "input_file_id": file_id, "requests": 1, "status": made["status"],
                            "keys": [f"k{n}"]})
        write_state(tmp_path / "teach", {"batches": batches})
        server.batch.batches["batch-0"]["status"] = "completed"
        result = teach(DEMO, config)
        assert result["cancelled"] == ["batch-1"] and "Cannot cancel" in result["not_cancelled"]["batch-0"]
        assert server.batch.batches["batch-1"]["status"] == "cancelling"


def write_vllm_results(path, requests) -> None:
    """What `vllm run-batch` writes for these request lines."""
    with open(path, "w") as f:
        for n, line in enumerate(requests):
            body = {"id": f"cmpl-{n}", "object": "text_completion", "model": "m",
                    "choices": [{"index": 0, "text": " Count them. So the answer is 7.", "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}}
            f.write(json.dumps({"id": f"vllm-{n}", "custom_id": line["custom_id"],
                                "response": {"status_code": 200, "request_id": f"r{n}", "body": body},
                                "error": None}) + "\n")


def test_an_offline_request_file_runs_through_ingest(tmp_path):
    """--batch-file writes what vllm run-batch reads; --ingest reads back what it writes."""
    requests = tmp_path / "requests.jsonl"
    config = TeachConfig(backend="openai", model="m", limit=LIMIT, output=str(tmp_path / "teach"))
    import dataclasses

    written = teach(DEMO, dataclasses.replace(config, batch_file=str(requests)))
    assert written["requests_written"] == LIMIT
    lines = read_jsonl(requests)
    assert {line["method"] for line in lines} == {"POST"} and len({line["custom_id"] for line in lines}) == LIMIT
    results = tmp_path / "results.jsonl"  # in another order
    write_vllm_results(results, reversed(lines))
    from dsbs.errors import DataError

    with pytest.raises(DataError, match="none of its 8 answers is for a request of this run"):
        teach(DEMO, dataclasses.replace(config, ingest=str(results), model="another-model"))
    partial = tmp_path / "partial.jsonl"  # two answers missing, ingested twice: the second is not refused
    partial.write_text("".join(results.read_text().splitlines(keepends=True)[2:]))
    for _ in range(2):
        assert teach(DEMO, dataclasses.replace(config, ingest=str(partial)))["failed_items"] == 2
    summary = teach(DEMO, dataclasses.replace(config, ingest=str(results)))
    rows = read_jsonl(tmp_path / "teach" / "train.jsonl")
    assert summary["route"] == "ingest" and summary["failed_items"] == 0 and summary["completion_tokens"] == 8 * LIMIT
    assert summary["answers_from_cache"] == LIMIT - 2
    assert all(r["teacher_label"] == "7" and r["rationale"] == "Count them." for r in rows)


def test_a_results_file_cut_off_mid_line_keeps_its_whole_lines_and_asks_the_cut_one_again(tmp_path, capsys):
    """A killed `vllm run-batch` leaves a last line without its end: before, the ingest stopped there and
    wrote nothing."""
    import dataclasses

    from dsbs.errors import DataError

    config = TeachConfig(backend="openai", model="m", limit=LIMIT, output=str(tmp_path / "teach"))
    requests = tmp_path / "requests.jsonl"
    teach(DEMO, dataclasses.replace(config, batch_file=str(requests)))
    results = tmp_path / "results.jsonl"
    write_vllm_results(results, read_jsonl(requests))
    whole = results.read_text()
    cut = whole[: whole.rindex("\n", 0, -1) + 40].encode() + "é".encode()[:1]  # cut inside a character, too
    results.write_bytes(cut)
    summary = teach(DEMO, dataclasses.replace(config, ingest=str(results)))
    assert summary["failed_items"] == 1 and summary["ingest_lines"]["cut_off"] == 1
    assert f"{results}:{LIMIT}: the last line is cut off" in capsys.readouterr().err
    again = teach(DEMO, dataclasses.replace(config, batch_file=str(tmp_path / "rest.jsonl")))
    assert again["requests_written"] == 1  # only the cut one is asked again
    lines = whole.splitlines(keepends=True)
    results.write_text("".join(lines[:2]) + lines[2][:40] + "\n" + "".join(lines[3:]))  # a broken line inside
    with pytest.raises(DataError, match=f"{results}:3: not a batch result line"):
        teach(DEMO, dataclasses.replace(config, ingest=str(results)))
