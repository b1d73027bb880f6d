"""Atomic writes and one writer per output: torn files and two processes on one directory."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from dsbs.errors import UserError
from dsbs.files import append_line, exclusive, write_atomic
from tests.conftest import run_dsbs


def test_write_atomic_replaces_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a" / "summary.json"
    write_atomic(target, "first")
    write_atomic(target, b"second")
    assert target.read_text() == "second" and os.listdir(target.parent) == ["summary.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    write_atomic(target, "old")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, "new")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["metrics.json"]


def test_appended_lines_from_many_processes_never_interleave(tmp_path):
    path = tmp_path / "results.jsonl"
    code = ("import sys; from dsbs.files import append_line\n"
            "for i in range(200): append_line(sys.argv[1], sys.argv[2] * 3000 + str(i))")
    writers = [subprocess.Popen([sys.executable, "-c", code, str(path), letter]) for letter in "abcd"]
    assert all(w.wait() == 0 for w in writers)
    lines = path.read_text().splitlines()
    assert len(lines) == 800 and all(len(set(line.rstrip("0123456789"))) == 1 for line in lines)
    append_line(path, "last")
    assert path.read_text().endswith("\nlast\n")


def test_a_second_writer_is_told_who_holds_the_output(tmp_path, tiny_causal):
    run_dir, predictions = tmp_path / "run", tmp_path / "out.jsonl"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "x", "output": str(run_dir), "tasks": ["demo"], "methods": ["standard"],
                                      "students": [tiny_causal]}))
    source = tmp_path / "in.jsonl"
    source.write_text('{"input": "2 boxes of 5?"}\n')
    commands = [["train", "--task", "demo", "--student", tiny_causal, "--output", str(run_dir)],
                ["teach", "--task", "demo", "--limit", "1", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1",
                 "--output", str(run_dir)],
                ["experiment", str(recipe)]]
    with exclusive(run_dir, "test"):
        for command in commands:
            result = run_dsbs(*command, check=False)
            assert result.returncode == 2 and f"{run_dir} is in use by pid {os.getpid()}" in result.stderr, command
    with exclusive(predictions, "test"):
        result = run_dsbs("predict", "--model", tiny_causal, "--input", str(source), "--output", str(predictions),
                          check=False)
        assert result.returncode == 2 and "is in use by pid" in result.stderr
    with pytest.raises(UserError, match="in use"), exclusive(run_dir, "a"), exclusive(run_dir, "b"):
        pass


def test_the_lock_dies_with_its_process(tmp_path):
    code = ("import sys, time; from dsbs.files import exclusive\n"
            "with exclusive(sys.argv[1], 'x'):\n print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match=f"in use by pid {holder.pid}"), exclusive(tmp_path, "y"):
        pass
    os.kill(holder.pid, signal.SIGKILL)
    assert holder.wait() == -signal.SIGKILL
    deadline = time.monotonic() + 5
    with exclusive(tmp_path, "z"):
        assert time.monotonic() < deadline
