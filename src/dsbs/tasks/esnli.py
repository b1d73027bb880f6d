"""e-SNLI: natural language inference with human explanations; labels are NLI words."""

from dsbs.tasks.common import (
    DataError,
    Task,
    cut_at_next_example,
    paper_task,
    row_field,
    split_on_marker,
    text_labels_match,
)

NAME = "esnli"
SOURCES = ("the paper's release (google-research/distilling-step-by-step, Apache-2.0) of "
           "e-SNLI (MIT licence) over SNLI (CC BY-SA 4.0)")
NLI_LABELS = ("entailment", "neutral", "contradiction")


def format_input(premise: str, hypothesis: str) -> str:
    return f"Premise: {premise}\nHypothesis: {hypothesis}"


def parse_nli_row(row: dict, where: str) -> dict:
    label = row_field(row, "label", int, where)
    if label not in range(len(NLI_LABELS)):
        raise DataError(f"{where}: field 'label' should be 0, 1 or 2, got {label}")
    premise = row_field(row, "premise", str, where)
    return {"input": format_input(premise, row_field(row, "hypothesis", str, where)), "label": NLI_LABELS[label],
            "cluster": premise}


def nli_label(answer: str | None) -> str | None:
    """The NLI word an answer starts with, or None."""
    words = (answer or "").strip().lower().split()
    word = words[0].strip(".,;:!\"'") if words else ""
    return word if word in NLI_LABELS else None


def nli_labels(text: str) -> tuple[str, ...]:
    return NLI_LABELS


def is_nli_label(answer: str) -> bool:
    return answer.strip() in NLI_LABELS


def parse_nli_completion(completion: str, marker: str) -> tuple[str | None, str | None]:
    """(rationale, NLI word) around ``marker``, in the part before PaLM's invented next example."""
    rationale, answer = split_on_marker(cut_at_next_example(completion, ("\nPremise:",)), marker)
    label = nli_label(answer)
    return (rationale, label) if rationale and label else (None, None)


def parse_completion(completion: str) -> tuple[str | None, str | None]:
    """'rationale\\nAnswer: neutral' -> (rationale, 'neutral')."""
    return parse_nli_completion(completion, "Answer:")


def task(data_dir=None) -> Task:
    return paper_task(NAME, data_dir, parse_nli_row, parse_completion, text_labels_match, label_max_tokens=8,
                      label_is_valid=is_nli_label, label_choices=nli_labels,
                      train_split="valid",  # the released data has no train split
                      sources=SOURCES, teacher_few_shot_accuracy=72.99,
                      paper_t5_base={"standard": 88.38, "dsbs": 89.51})
