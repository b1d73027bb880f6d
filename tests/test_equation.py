import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsbs.equation import EquationError, equations_equal, evaluate_equation, is_equation


@pytest.mark.parametrize("text, value", [
    ("( 84.0 / 2.0 )", 42.0), ("( 10.0 - ( 6.0 + 3.0 ) )", 1.0), ("-(-3)", 3.0), ("2 × 3 ÷ 4", 1.5), ("7", 7.0),
    ("( 5. 0 - 3. 0 )", 2.0), ("( 2 . 5 * 2 )", 5.0),  # as a WordPiece (BERT-vocabulary) student decodes them
])
def test_values(text, value):
    assert evaluate_equation(text) == pytest.approx(value)


@pytest.mark.parametrize("hostile", [
    "__import__('os').system('echo hi')", "9**9**9", "2**10", "(1).__class__", "x + 1", "[1, 2]", "1 if 1 else 2",
    "1e308 * 1e308", "1/0", "", "   ", "(" * 300 + "1" + ")" * 300, "1+" * 400 + "1", "lambda: 1", "'a' * 3", "True + 1", "5 . . 0", "1 .5 .5",
])
def test_hostile_strings_raise_own_error(hostile):
    with pytest.raises(EquationError):
        evaluate_equation(hostile)


def test_equations_compared_by_value():
    assert equations_equal("(84 / 2)", "( 84.0 / 2.0 )")
    assert equations_equal("( 6 + 3 ) * 2", "18")
    assert not equations_equal("(84 / 3)", "( 84.0 / 2.0 )")
    assert not equations_equal("garbage", "1")
    assert is_equation("( 1 + 2 )") and not is_equation("one plus two")


@settings(max_examples=500, deadline=200)
@given(st.text(alphabet="0123456789.+-*/() eE_xj*%<>=!'\"[]abc", max_size=80) | st.text(max_size=80))
def test_fuzz_never_raises_anything_else(text):
    try:
        value = evaluate_equation(text)
    except EquationError:
        return
    assert isinstance(value, float)
