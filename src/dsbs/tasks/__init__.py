"""Tasks: the paper's four benchmarks, a built-in demo, and a user's own JSONL/CSV file."""

from dataclasses import dataclass, field

from dsbs.tasks.common import DataError, Example, Task

BENCHMARKS = ("cqa", "svamp", "esnli", "anli1")
BUILTIN = BENCHMARKS + ("demo",)


@dataclass
class TaskConfig:
    """Which task to load and, for a user's own file, how to read it."""

    task: str = field(default="svamp", metadata={"help": "cqa, svamp, esnli, anli1, demo, or a JSONL/CSV file of your own (its training pool)"})
    data_dir: str | None = field(default=None, metadata={"help": "the paper's data directory (default: $DSBS_DATA_DIR, then `dsbs data download`'s cache)"})
    test_file: str | None = field(default=None, metadata={"help": "own task: JSONL/CSV file of the test split"})
    input_field: str = field(default="input", metadata={"help": "own task: field holding the student input"})
    input_template: str | None = field(default=None, metadata={"help": "own task: a str.format template over several fields, e.g. '{question} Options: {options}' (overrides --input-field)"})
    label_field: str = field(default="label", metadata={"help": "own task: field holding the gold label (may be absent in unlabeled rows)"})
    rationale_field: str = field(default="rationale", metadata={"help": "own task: field holding the teacher's rationale (optional)"})
    teacher_label_field: str = field(default="teacher_label", metadata={"help": "own task: field holding the teacher's label (optional)"})
    metric: str = field(default="exact", metadata={"help": "own task: exact (text match after light normalisation) or equation (arithmetic compared by value)"})
    answer_marker: str = field(default="So the answer is", metadata={"help": "own task: the phrase before the label in a teacher's answer"})
    label_set: str | None = field(default=None, metadata={"help": "own task: comma-separated allowed labels; a teacher answer outside them counts as unparsable"})

    def __post_init__(self):
        if self.metric not in ("exact", "equation"):
            raise ValueError(f"metric must be 'exact' or 'equation', got {self.metric!r}")


def get_task(config: TaskConfig) -> Task:
    if config.task in BENCHMARKS:
        import importlib

        return importlib.import_module(f"dsbs.tasks.{config.task}").task(config.data_dir)
    if config.task == "demo":
        from dsbs.tasks import demo

        return demo.task()
    from dsbs.tasks import custom

    return custom.task(config)


__all__ = ["BENCHMARKS", "BUILTIN", "DataError", "Example", "Task", "TaskConfig", "get_task"]
