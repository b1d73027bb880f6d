"""CommonsenseQA with CoS-E: five-way multiple choice; the label is the chosen answer's text."""

import re

from dsbs.tasks.common import (
    DataError,
    Example,
    Task,
    cut_at_next_example,
    normalize_text_label,
    paper_task,
    row_field,
    split_on_marker,
    text_labels_match,
)

NAME = "cqa"
SOURCES = ("the paper's release (google-research/distilling-step-by-step, Apache-2.0) of "
           "CommonsenseQA (MIT licence) with CoS-E (BSD-3-Clause)")
CHOICE_LETTERS = "abcde"
_CHOICE = re.compile(r"\(([a-e])\)\s*(.*)", re.DOTALL)
_CHOICE_LINE = re.compile(r"^\([a-e]\) (.*)$", re.MULTILINE)


def format_input(question: str, choices: list[str]) -> str:
    """The paper's student input: the question, then "Answer Choices:" and (a)..(e)."""
    lines = [question, "Answer Choices:"]
    lines += [f"({letter}) {choice}" for letter, choice in zip(CHOICE_LETTERS, choices, strict=True)]
    return "\n".join(lines)


def choices_in_input(text: str) -> tuple[str, ...]:
    """The options a student input lists after "Answer Choices:" (format_input's lines)."""
    options = _CHOICE_LINE.findall(text.rpartition("Answer Choices:")[2])
    if not options:
        raise DataError(f"no answer choices in the input {text[:80]!r}: expected lines '(a) ...' after "
                        "'Answer Choices:'")
    return tuple(options)


def parse_row(row: dict, where: str) -> dict:
    question = row_field(row, "question", str, where)
    choices = row_field(row, "choices", list, where)
    if len(choices) != 5 or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where}: field 'choices' should be a list of 5 strings")
    return {"input": format_input(question, choices), "label": row_field(row, "answer", str, where),
            "choices": tuple(choices)}


def choice_label(label: str, example: Example) -> str | None:
    """The row's own choice text that the teacher's label names, matched case-insensitively.

    PaLM sometimes names two choices ("(c) country club or (d) fitness center") or changes case
    ("istanbul"); the first matches no choice and is no label to train on, the second is the
    choice "Istanbul".
    """
    wanted = normalize_text_label(label).casefold()
    matches = [c for c in example.choices or () if normalize_text_label(c).casefold() == wanted]
    return matches[0] if matches else None


def parse_completion(completion: str) -> tuple[str | None, str | None]:
    """'... So the answer is (c) wooded area.' -> (rationale, 'wooded area')."""
    rationale, answer = split_on_marker(cut_at_next_example(completion, ("\nQ:",)), "So the answer is")
    match = _CHOICE.search(answer or "")
    if rationale is None or match is None:
        return None, None
    label = match.group(2).strip().rstrip(".").strip()
    return rationale, (label or None)


def task(data_dir=None) -> Task:
    return paper_task(NAME, data_dir, parse_row, parse_completion, text_labels_match, label_max_tokens=16,
                      canonical_label=choice_label, label_choices=choices_in_input,
                      sources=SOURCES, teacher_few_shot_accuracy=77.23,
                      paper_t5_base={"standard": 62.19, "dsbs": 63.29})
