"""SVAMP: arithmetic word problems; the label is an equation, scored by its value.

Labels, gold and teacher's alike, are kept in their compact form (``10-(6+3)`` for the released
``( 10.0 - ( 6.0 + 3.0 ) )``): the same value in fewer tokens, and at inference a label-only
student pays for every token it writes.
"""


from dsbs.equation import EquationError, compact_equation, equations_equal, is_equation
from dsbs.tasks.common import DataError, Task, cut_at_next_example, paper_task, row_field, split_on_marker

NAME = "svamp"
SOURCES = ("the paper's release (google-research/distilling-step-by-step, Apache-2.0) of "
           "SVAMP (MIT licence)")


def parse_row(row: dict, where: str) -> dict:
    """The released rows already join body and question with a newline, as the paper's input."""
    text, label = row_field(row, "input", str, where), row_field(row, "label", str, where)
    try:
        return {"input": text, "label": compact_equation(label)}
    except EquationError as err:
        raise DataError(f"{where}: field 'label' is not an arithmetic expression we can score ({err})") from None


def parse_completion(completion: str) -> tuple[str | None, str | None]:
    """'... The answer is (84 / 2).' -> (rationale, '84/2')."""
    rationale, answer = split_on_marker(cut_at_next_example(completion, ("\nQ:",)), "The answer is")
    equation = bracketed(answer or "")
    if rationale is None or equation is None:
        return None, None
    try:
        return rationale, compact_equation(equation)
    except EquationError:
        return rationale, equation  # kept as written: scoring will count it unparsable


def bracketed(text: str) -> str | None:
    """From the first "(" to the last ")" (a regex doing this is quadratic in the number of "(")."""
    start, end = text.find("("), text.rfind(")")
    return text[start : end + 1] if start != -1 and end > start else None


def task(data_dir=None) -> Task:
    return paper_task(NAME, data_dir, parse_row, parse_completion, equations_equal, label_max_tokens=32,
                      label_is_valid=is_equation,
                      sources=SOURCES, teacher_few_shot_accuracy=74.0,
                      paper_t5_base={"standard": 62.63, "dsbs": 65.5})
