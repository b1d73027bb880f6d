"""ANLI round 1: adversarial NLI; same rows and labels as e-SNLI, another answer format."""

from dsbs.tasks.common import Task, paper_task, text_labels_match
from dsbs.tasks.esnli import is_nli_label, nli_labels, parse_nli_completion, parse_nli_row

NAME = "anli1"
SOURCES = ("the paper's release (google-research/distilling-step-by-step, Apache-2.0) of "
           "ANLI round 1 (CC BY-NC 4.0)")


def parse_completion(completion: str) -> tuple[str | None, str | None]:
    """'rationale. So the answer is contradiction.' -> (rationale, 'contradiction')."""
    return parse_nli_completion(completion, "So the answer is")


def task(data_dir=None) -> Task:
    return paper_task(NAME, data_dir, parse_nli_row, parse_completion, text_labels_match, label_max_tokens=8,
                      label_is_valid=is_nli_label, label_choices=nli_labels, train_split="valid",
                      sources=SOURCES, teacher_few_shot_accuracy=65.6,
                      paper_t5_base={"standard": 43.58, "dsbs": 49.58})
