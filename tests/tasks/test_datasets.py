"""Hugging Face `datasets` sources as --task: parquet and arrow files, save_to_disk directories."""

import pytest

from dsbs.errors import DataError
from dsbs.tasks import TaskConfig, get_task

datasets = pytest.importorskip("datasets")

ROWS = [{"question": f"{a} plus {b}?", "answer": str(a + b), "why": f"{a} and {b} make {a + b}.",
         "teacher": str(a + b)} for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]
MAPPING = {"input_field": "question", "label_field": "answer", "rationale_field": "why",
           "teacher_label_field": "teacher", "metric": "equation"}


def test_a_parquet_file_and_a_saved_dataset_load_like_jsonl(tmp_path):
    parquet = tmp_path / "sums.parquet"
    datasets.Dataset.from_list(ROWS).to_parquet(str(parquet))
    task = get_task(TaskConfig(task=str(parquet), **MAPPING))
    rows = task.load("train")
    assert task.name == "sums" and [(e.input, e.label, e.rationale) for e in rows][:1] == [
        ("1 plus 2?", "3", "1 and 2 make 3.")]

    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:3]),
                          "test": datasets.Dataset.from_list(ROWS[3:])}).save_to_disk(str(saved))
    task = get_task(TaskConfig(task=str(saved), **MAPPING))
    assert [e.input for e in task.load("test")] == ["7 plus 8?"] and len(task.load("train")) == 3
    with pytest.raises(DataError, match=r"saved: no split 'valid' \(it has train, test\)"):
        task.load("valid")


def test_errors_name_the_dataset_split_row_and_field(tmp_path):
    arrow_dir = tmp_path / "bad"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"question": "ok?"}, {"prompt": "no question"}])}
                         ).save_to_disk(str(arrow_dir))
    with pytest.raises(DataError, match=r"bad \[train\] row 1: empty field 'question'"):
        get_task(TaskConfig(task=str(arrow_dir), input_field="question")).load("train")


def test_training_reads_a_dataset_source(tmp_path, tiny_causal):
    from dsbs.configs import TrainConfig
    from dsbs.train import train

    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS * 3)}).save_to_disk(str(saved))
    summary = train(TaskConfig(task=str(saved), **MAPPING),
                    TrainConfig(student=tiny_causal, output=str(tmp_path / "run"), max_steps=2, batch_size=2,
                                eval_limit=2, precision="fp32", max_input_tokens=32, max_target_tokens=16))
    assert summary["steps"] == 2 and summary["train_examples"] == 11  # 12 rows, one held out for validation
