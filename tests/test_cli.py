import subprocess
import sys


def test_help_imports_nothing_heavy():
    code = "import sys; from dsbs.cli import build_parser; build_parser(); print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_user_error_is_a_message_not_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dsbs", "data", "inspect", "--task", "svamp", "--data-dir", str(tmp_path / "nowhere")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_invalid_setting_is_reported(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dsbs", "train", "--task", "demo", "--method", "magic", "--output", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "method must be one of standard, distill, dsbs, single_task" in result.stderr
