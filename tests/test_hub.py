"""Teach outputs as a `datasets` dataset with a card, and what `dsbs push` would upload (offline)."""

import json

import pytest
import yaml

from dsbs.tasks import TaskConfig
from dsbs.teach import TeachConfig, teach
from tests.conftest import DATA_DIR, needs_data
from tests.fake_openai import FakeOpenAI

datasets = pytest.importorskip("datasets")


@needs_data
def test_teach_writes_a_parquet_dataset_and_a_card_naming_the_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-teacher-key-0000")

    def answer(item, attempt):
        return "Half of 84 is 42. The answer is (84 / 2)."

    with FakeOpenAI(answer=answer) as server:
        teach(TaskConfig(task="svamp", data_dir=DATA_DIR),
              TeachConfig(backend="openai", base_url=server.url, model="fake-teacher", limit=4, max_tokens=64,
                          output=str(tmp_path / "teach")))
    out = tmp_path / "teach"
    loaded = datasets.load_dataset("parquet", data_files=str(out / "data" / "train-*.parquet"))["train"]
    assert len(loaded) == 4 and loaded[0]["teacher_label"] == "84/2" and loaded[0]["rationale"] == "Half of 84 is 42."
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["dsbs"]["teacher"] == {"backend": "openai", "model": "fake-teacher", "base_url": server.url,
                                       "api": "completion"}
    assert meta["dsbs"]["counts"]["items"] == 4 and meta["dsbs"]["tokens"]["completion"] == 4 * 7
    assert "SVAMP (MIT licence)" in card and "Apache-2.0" in card and "Exemplars:" in card
    assert meta["configs"][0]["data_files"][0]["path"] == "data/train-*.parquet"


def test_push_uploads_the_card_and_never_checkpoints_caches_or_secrets(trained_student, tmp_path, monkeypatch):
    import shutil

    from huggingface_hub import HfApi

    from dsbs.hub import push

    student = tmp_path / "student"
    shutil.copytree(trained_student, student)
    (student / "checkpoints" / "step-000003").mkdir(parents=True)
    (student / "checkpoints" / "step-000003" / "training_state.pt").write_bytes(b"x")
    (student / "notes.json").write_text(json.dumps({"auth": "Bearer abcdefghijklmnop"}))
    (student / ".dsbs.lock").write_text("1")
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    result = push(str(student), "me/tiny-student", private=True)
    assert calls[0] == ("create", "me/tiny-student", {"repo_type": "model", "private": True, "exist_ok": True})
    uploaded = calls[1][1]["allow_patterns"]
    assert "README.md" in uploaded and "dsbs.json" in uploaded and "model.safetensors" in uploaded
    assert not [f for f in uploaded if f.startswith("checkpoints") or "lock" in f or f == "notes.json"]
    assert "notes.json (holds something like a credential)" in result["left_out"]
