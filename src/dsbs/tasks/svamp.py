"""SVAMP: arithmetic word problems; the label is an equation, scored by its value."""

import re
from dsbs.equation import equations_equal, is_equation
from dsbs.tasks.common import Task, cut_at_next_example, field, paper_task, split_on_marker

NAME = "svamp"
# Reference points for reports: PaLM 540B few-shot CoT accuracy on the full test set (scored from the
# released completions) and the paper's T5-Base students on full data (Table 1), in percent.
TEACHER_FEW_SHOT_ACCURACY = 74.0
PAPER_T5_BASE = {"standard": 62.63, "dsbs": 65.5}
_EQUATION = re.compile(r"\(.*\)", re.DOTALL)


def parse_row(row: dict, where: str) -> tuple[str, str]:
    """The released rows already join body and question with a newline, as the paper's input."""
    return field(row, "input", str, where), field(row, "label", str, where)


def parse_completion(completion: str) -> tuple[str | None, str | None]:
    """'... The answer is (84 / 2).' -> (rationale, '(84 / 2)')."""
    rationale, answer = split_on_marker(cut_at_next_example(completion, ("\nQ:",)), "The answer is")
    match = _EQUATION.search(answer or "")
    if rationale is None or match is None:
        return None, None
    return rationale, match.group(0)


def task(data_dir=None) -> Task:
    return paper_task(NAME, data_dir, parse_row, parse_completion, equations_equal, label_max_tokens=32,
                      label_is_valid=is_equation)
