"""`dsbs teach` through the openai backend against a real llama.cpp server serving SmolLM2 on loopback."""

import pytest

from dsbs.tasks import TaskConfig, get_task
from dsbs.teach import TeachConfig, teach
from tests.conftest import DATA_DIR, needs_data

pytestmark = [pytest.mark.slow, needs_data]


@pytest.fixture(scope="module", autouse=True)
def llama_cpp_works():
    """Skip when llama.cpp itself cannot answer on this machine: some builds crash on some CPUs (a
    source build of llama-cpp-python 0.3.36 segfaults on every completion on a Xeon with AMX), and that
    is no fault of dsbs. The probe runs in its own process, so a crash cannot take the suite down."""
    import subprocess
    import sys

    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python: pip install -e '.[llama]'")
    probe = ("from dsbs.models import smollm2_gguf_path\nfrom llama_cpp import Llama\n"
             "model = Llama(model_path=str(smollm2_gguf_path()), n_ctx=256, verbose=False)\n"
             "model.create_completion('2+2=', max_tokens=2)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=300)
    if result.returncode != 0:
        pytest.skip(f"llama.cpp cannot complete a prompt on this machine (exit code {result.returncode})")


@pytest.fixture(scope="module")
def llama_server():
    pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server]: pip install -e '.[llama]'")
    from tests.servers import start_llama_server

    process, url = start_llama_server()
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.parametrize("name", ["cqa", "svamp"])
def test_teach_through_a_real_openai_compatible_server(llama_server, name, tmp_path):
    config = TeachConfig(backend="openai", base_url=llama_server, model="smollm2", limit=3, concurrency=2,
                         max_tokens=96, output=str(tmp_path))
    summary = teach(TaskConfig(task=name, data_dir=DATA_DIR), config)
    assert summary["items"] == 3 and summary["failed_items"] == 0 and summary["completion_tokens"] > 0
    examples = get_task(TaskConfig(task=name, data_dir=str(tmp_path))).load("train")
    assert len(examples) == 3 and all(e.completion for e in examples)
    again = teach(TaskConfig(task=name, data_dir=DATA_DIR), config)
    assert again["requests_made"] == 0


def test_local_backend_runs_the_bundled_gguf_in_process(tmp_path):
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python: pip install -e '.[llama]'")
    summary = teach(TaskConfig(task="svamp", data_dir=DATA_DIR),
                    TeachConfig(backend="local", model="smollm2-135m", limit=2, max_tokens=64, output=str(tmp_path)))
    assert summary["items"] == 2 and summary["failed_items"] == 0 and summary["completion_tokens"] > 0
    assert len(get_task(TaskConfig(task="svamp", data_dir=str(tmp_path))).load("train")) == 2
