"""e-SNLI: natural language inference with human explanations; labels are NLI words."""

from functools import partial

from dsbs.tasks.common import (
    DataError, Task, cut_at_next_example, field, load_paper_split, resolve_data_dir, split_on_marker,
    text_labels_match,
)

NAME = "esnli"
NLI_LABELS = ("entailment", "neutral", "contradiction")


def format_input(premise: str, hypothesis: str) -> str:
    return f"Premise: {premise}\nHypothesis: {hypothesis}"


def parse_nli_row(row: dict, where: str) -> tuple[str, str]:
    label = field(row, "label", int, where)
    if label not in range(len(NLI_LABELS)):
        raise DataError(f"{where}: field 'label' should be 0, 1 or 2, got {label}")
    return format_input(field(row, "premise", str, where), field(row, "hypothesis", str, where)), NLI_LABELS[label]


def nli_label(answer: str | None) -> str | None:
    """The NLI word an answer starts with, or None."""
    words = (answer or "").strip().lower().split()
    word = words[0].strip(".,;:!\"'") if words else ""
    return word if word in NLI_LABELS else None


def parse_completion(completion: str) -> tuple[str | None, str | None]:
    """'rationale\\nAnswer: neutral' -> (rationale, 'neutral')."""
    rationale, answer = split_on_marker(cut_at_next_example(completion, ("\nPremise:",)), "Answer:")
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
        train_split="valid",  # only a sample of valid/test ships with the paper's data here
    )
