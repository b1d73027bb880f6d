"""Each teacher format: the paper's example, a completion that runs on, and malformed ones."""

import pytest

from dsbs.errors import DataError
from dsbs.tasks import anli1, cqa, esnli, svamp
from dsbs.tasks.common import Example, read_teacher_answer


def test_cqa_parses_choice_text_and_cuts_next_example():
    completion = ("The answer must be a place. Only wooded areas fit. So the answer is (c) wooded area.\n\n"
                  "Q: What is the best way?\nAnswer Choices:\n(a) x\nA: ... So the answer is (a) x.")
    assert cqa.parse_completion(completion) == ("The answer must be a place. Only wooded areas fit.", "wooded area")


def test_cqa_teacher_label_must_name_one_of_the_rows_choices():
    row = Example(input="q", label="Fitness center", choices=("gym", "Istanbul", "country club", "Fitness center", "x"))

    def read(text):
        return read_teacher_answer(cqa.parse_completion, cqa.choice_label, text, row)

    assert read("It is a city. So the answer is (b) istanbul.") == ("It is a city.", "Istanbul", "istanbul")
    assert read("Sport. So the answer is either (c) country club or (d) fitness center.") == (
        None, None, "country club or (d) fitness center")
    assert read("Sport. So the answer is (d) Fitness  center.")[1] == "Fitness center"


@pytest.mark.parametrize("bad", ["No conclusion here.", "So the answer is wooded area.", "", "So the answer is (c)"])
def test_cqa_malformed(bad):
    assert cqa.parse_completion(bad) == (None, None)


def test_svamp_parses_equation():
    completion = ("He scored 84 in 2 rounds. 84 / 2 = 42. The answer is (84 / 2).\n\n"
                  "Q: There are 120 students. The answer is (120 / 3).")
    assert svamp.parse_completion(completion) == ("He scored 84 in 2 rounds. 84 / 2 = 42.", "84/2")
    assert svamp.parse_completion("The answer is 42.") == (None, None)
    assert svamp.parse_completion("I do not know (yet)") == (None, None)


def test_svamp_parser_is_linear_in_brackets():
    # 200,000 "(" took minutes with a backtracking regex; the answer is still found, or refused
    assert svamp.parse_completion("Think. The answer is " + "(" * 200_000) == (None, None)
    assert svamp.parse_completion("Think. The answer is " + "(" * 200_000 + "1)") == ("Think.", "(" * 200_000 + "1)")


def test_esnli_parses_word_after_answer():
    completion = ("Not all churches have cracks.\nAnswer: neutral\n\n"
                  "Premise: A church.\nHypothesis: x\nAnswer: entailment")
    assert esnli.parse_completion(completion) == ("Not all churches have cracks.", "neutral")
    assert esnli.parse_completion("Some reasoning.\nAnswer: maybe") == (None, None)
    assert esnli.parse_completion("Answer: neutral") == (None, None)  # no rationale to learn from


def test_anli_parses_after_so_the_answer_is():
    completion = ("London is in Europe. So the answer is entailment.\n\n"
                  "Premise: x\nHypothesis: y\nAnswer: z. So the answer is neutral.")
    assert anli1.parse_completion(completion) == ("London is in Europe.", "entailment")
    assert anli1.parse_completion("London is in Europe. So the answer is yes.") == (None, None)


def test_student_inputs_follow_the_paper():
    assert cqa.format_input("Where?", ["a1", "b1", "c1", "d1", "e1"]) == (
        "Where?\nAnswer Choices:\n(a) a1\n(b) b1\n(c) c1\n(d) d1\n(e) e1")
    assert esnli.format_input("P.", "H.") == "Premise: P.\nHypothesis: H."


def test_a_cqa_input_lists_its_own_choices_and_nli_has_three():
    text = cqa.format_input("Where do you keep milk? (cold)", ["fridge", "new york (city)", "a b", "shelf", "bag"])
    assert cqa.choices_in_input(text) == ("fridge", "new york (city)", "a b", "shelf", "bag")
    with pytest.raises(DataError, match="no answer choices"):
        cqa.choices_in_input("Where do you keep milk?")
    assert esnli.task().label_choices("Premise: a\nHypothesis: b") == ("entailment", "neutral", "contradiction")
    assert anli1.task().label_choices("x") == esnli.NLI_LABELS and svamp.task().label_choices is None


def test_own_labels_that_end_in_a_period_or_hold_a_comma_parse():
    """Before: "U.S." was cut to "U.S" and never matched its label set; a label with a comma could not be named."""
    import pytest

    from dsbs.errors import ConfigError
    from dsbs.tasks import TaskConfig
    from dsbs.tasks.custom import parse_completion

    countries = TaskConfig(task="x.csv", label_set="U.S., U.K.")
    assert parse_completion(countries, "Made in Ohio. So the answer is U.S.") == ("Made in Ohio.", "U.S.")
    assert parse_completion(countries, "Made in Ohio. So the answer is u.s..") == ("Made in Ohio.", "U.S.")
    plain = TaskConfig(task="x.csv", label_set="positive,negative")
    assert parse_completion(plain, "Loved it. So the answer is positive.") == ("Loved it.", "positive")
    hedged = TaskConfig(task="x.csv", label_set='["yes, definitely", "no"]')
    assert parse_completion(hedged, "Sure. So the answer is yes, definitely.") == ("Sure.", "yes, definitely")
    # the instruction lists such labels in quotes (one label, not two), and a quoted answer parses
    from dsbs.prompts import own_instruction

    assert 'one of: "yes, definitely", "no".' in own_instruction("So the answer is", ("yes, definitely", "no"), False)
    assert own_instruction("So the answer is", ("yes", "no"), False).endswith("one of: yes, no.")
    assert parse_completion(hedged, 'Sure. So the answer is "yes, definitely".') == ("Sure.", "yes, definitely")
    with pytest.raises(ConfigError, match="not a JSON list"):
        parse_completion(TaskConfig(task="x.csv", label_set='["yes",'), "A. So the answer is yes.")
