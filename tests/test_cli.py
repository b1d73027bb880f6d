"""The command line: instant help, user errors as one line, internal bugs with their traceback."""

import sys

from tests.conftest import run_dsbs


def test_help_imports_nothing_heavy():
    import subprocess

    code = ("import sys; from dsbs.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_user_error_is_a_message_not_a_traceback(tmp_path):
    result = run_dsbs("data", "inspect", "--task", "svamp", "--data-dir", str(tmp_path / "nowhere"), check=False)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_choices_come_from_the_configs(tmp_path):
    result = run_dsbs("train", "--task", "demo", "--method", "magic", "--output", str(tmp_path), check=False)
    assert result.returncode == 2
    assert "invalid choice: 'magic' (choose from 'standard', 'distill', 'dsbs', 'single_task')" in result.stderr
    assert "--task TASK" in run_dsbs("train", "--help").stdout and "svamp" in run_dsbs("train", "--help").stdout


def test_an_internal_bug_keeps_its_traceback(monkeypatch, capsys):
    from dsbs import cli

    def broken(args):
        raise ValueError("an internal bug")

    monkeypatch.setitem(cli.COMMANDS, "report", (broken, "x", []))
    try:
        cli.main(["report"])
    except ValueError as err:
        assert str(err) == "an internal bug"
    else:
        raise AssertionError("a ValueError from dsbs's own code must not be shown as a user error")


def test_a_system_error_is_one_line(tmp_path, trained_student):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run_dsbs("evaluate", "--model", trained_student, "--task", "demo", "--limit", "2",
                      "--output", str(blocker / "eval"), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("dsbs: error: NotADirectoryError")
