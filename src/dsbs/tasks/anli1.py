"""ANLI round 1: adversarial NLI; same rows and labels as e-SNLI, another answer format."""

from functools import partial

from dsbs.tasks.common import Task, cut_at_next_example, load_paper_split, resolve_data_dir, split_on_marker, text_labels_match
from dsbs.tasks.esnli import NLI_LABELS, nli_label, parse_nli_row

NAME = "anli1"


def parse_completion(completion: str) -> tuple[str | None, str | None]:
    """'rationale. So the answer is contradiction.' -> (rationale, 'contradiction')."""
    rationale, answer = split_on_marker(cut_at_next_example(completion, ("\nPremise:",)), "So the answer is")
    label = nli_label(answer)
    return (rationale, label) if rationale and label else (None, None)


def task(data_dir=None) -> Task:
    root = resolve_data_dir(data_dir)
    return Task(
        name=NAME,
        load=partial(load_paper_split, root, NAME, parse_row=parse_nli_row, parse_completion=parse_completion),
        parse_completion=parse_completion,
        labels_match=text_labels_match,
        label_max_tokens=8,
        label_is_valid=lambda answer: answer.strip() in NLI_LABELS,
        train_split="valid",
    )
