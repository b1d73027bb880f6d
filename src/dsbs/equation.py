"""Safe arithmetic for SVAMP-style equations such as ``( 84.0 / 2.0 )``.

Model output is untrusted text, so it is parsed with ``ast`` and only numbers, + - * /,
unary minus and parentheses are accepted; ``eval`` is never called. Size limits keep a
hostile string from costing more than a few microseconds.
"""

import ast
import math
import operator
import re

MAX_CHARS = 512
MAX_NODES = 200
MAX_MAGNITUDE = 1e15

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
# WordPiece students (BERT-style vocabularies) decode "5.0" as "5. 0" or "5 . 0"; in arithmetic a
# dot between two digits can only be a decimal point.
_SPLIT_DECIMAL = re.compile(r"(\d) ?\. ?(\d)")
# Decimal numbers, + - * /, brackets and spaces: Python's other number syntax (0x10, 1_000, 0o17,
# 1e3, 2j), comments and line continuations are not arithmetic a teacher or student writes.
_ALLOWED = re.compile(r"[0-9.+\-*/()\s]*")


class EquationError(ValueError):
    """The text is not a small arithmetic expression we are willing to evaluate."""


def _parse(text: str) -> ast.expr:
    """The checked syntax tree of an arithmetic expression; raises EquationError for anything else."""
    if not isinstance(text, str):
        raise EquationError(f"expected a string, got {type(text).__name__}")
    text = text.strip().replace("×", "*").replace("÷", "/").replace("−", "-")
    if not text:
        raise EquationError("empty expression")
    if len(text) > MAX_CHARS:
        raise EquationError(f"expression longer than {MAX_CHARS} characters")
    text = _SPLIT_DECIMAL.sub(r"\1.\2", text)
    if not _ALLOWED.fullmatch(text):
        raise EquationError(f"not an arithmetic expression of decimal numbers: {text[:60]!r}")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as err:
        raise EquationError(f"not an arithmetic expression: {text!r}") from err
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise EquationError(f"expression has more than {MAX_NODES} parts")
    return tree.body


def evaluate_equation(text: str) -> float:
    """Value of an arithmetic expression; raises EquationError for anything else."""
    return _checked_value(_parse(text), text)


def _checked_value(tree: ast.expr, text: str) -> float:
    try:
        value = _eval_node(tree)
    except (ZeroDivisionError, OverflowError, RecursionError) as err:
        raise EquationError(f"cannot evaluate {text!r}: {err}") from err
    if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise EquationError(f"value out of range for {text!r}")
    return value


def compact_equation(text: str) -> str:
    """The same expression in its fewest characters: ``( 10.0 - ( 6.0 + 3.0 ) )`` -> ``10-(6+3)``.

    A student pays for every label token at inference, and SmolLM2's tokenizer spends one per
    digit: SVAMP's released labels average 14.4 tokens, their compact form 5.4. The tree is
    unchanged (only redundant brackets, spaces and ``.0`` go), so the value is exactly the same.
    """
    tree = _parse(text)
    _checked_value(tree, text)  # a label we could not score is no label
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, float) \
                and node.value.is_integer() and abs(node.value) < MAX_MAGNITUDE:
            node.value = int(node.value)
    return ast.unparse(tree).replace(" ", "")


def _eval_node(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_eval_node(node.left), _eval_node(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval_node(node.operand))
    raise EquationError(f"unsupported syntax: {type(node).__name__}")


def equations_equal(predicted: str, gold: str, rel_tol: float = 1e-9) -> bool:
    """True when both expressions evaluate to the same number (an unparsable one never matches).

    Equal up to float rounding only: ``610769+590796+22`` is not ``610769+590796``, though the two
    differ by less than 1e-4 of their value (a looser tolerance once scored such answers right).
    """
    try:
        return math.isclose(evaluate_equation(predicted), evaluate_equation(gold), rel_tol=rel_tol, abs_tol=1e-12)
    except EquationError:
        return False


def is_equation(text: str) -> bool:
    try:
        evaluate_equation(text)
    except EquationError:
        return False
    return True
