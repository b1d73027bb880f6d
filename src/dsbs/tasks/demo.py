"""The built-in offline demo: small arithmetic word problems the package generates itself.

It exists so the whole pipeline runs on a fresh machine with no internet and no data. The
"teacher" here is a script that writes a correct step-by-step rationale for each problem; the
label is the number itself (scored by value), so a student has to compute it, which is what the
rationale teaches. It stands in for an LLM's answers and says nothing about how the method does
on real benchmarks.
"""

import random

from dsbs.equation import equations_equal, evaluate_equation, is_equation
from dsbs.errors import DataError
from dsbs.tasks.common import Example, Task, cut_at_next_example, split_on_marker

NAME = "demo"
SPLIT_SIZES = {"train": 400, "test": 100}
SPLIT_SEEDS = {"train": 1, "test": 2}
NAMES = ("Ava", "Ben", "Chloe", "Dan", "Ella", "Finn", "Grace", "Hugo", "Ivy", "Jack")
ITEMS = ("apples", "marbles", "stickers", "books", "pencils", "cookies", "stamps", "shells")


def _problem(rng: random.Random) -> tuple[str, str, str]:
    """(question, equation, rationale) for one random problem of one of four shapes."""
    who, what = rng.choice(NAMES), rng.choice(ITEMS)
    shape = rng.randrange(4)
    if shape == 0:
        a, b, c = rng.randint(5, 60), rng.randint(2, 40), rng.randint(1, 20)
        question = (f"{who} has {a} {what}. {who} gets {b} more and then gives away {c}. "
                    f"How many {what} does {who} have now?")
        return question, f"( ( {a} + {b} ) - {c} )", (
            f"{who} starts with {a} {what} and gets {b} more, so {a} + {b} = {a + b}. "
            f"Giving away {c} leaves {a + b} - {c} = {a + b - c}."
        )
    if shape == 1:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        question = f"There are {a} boxes with {b} {what} in each box. How many {what} are there?"
        return question, f"( {a} * {b} )", f"There are {a} boxes of {b} {what}, so {a} * {b} = {a * b}."
    if shape == 2:
        b = rng.randint(2, 9)
        total = b * rng.randint(2, 12)
        question = f"{who} shares {total} {what} equally among {b} friends. How many {what} does each friend get?"
        rationale = f"{total} {what} split among {b} friends is {total} / {b} = {total // b}."
        return question, f"( {total} / {b} )", rationale
    a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 30)
    question = (f"{who} buys {a} packs of {what} with {b} in each pack and already had {c}. "
                f"How many {what} does {who} have?")
    return question, f"( ( {a} * {b} ) + {c} )", (
        f"{a} packs of {b} is {a} * {b} = {a * b}. With the {c} {who} already had, {a * b} + {c} = {a * b + c}."
    )


def load(split: str) -> list[Example]:
    if split not in SPLIT_SIZES:
        raise DataError(f"the demo task has splits {sorted(SPLIT_SIZES)}, not {split!r}")
    rng = random.Random(SPLIT_SEEDS[split])
    seen = {e.input for e in load("train")} if split == "test" else set()  # no test item seen in training
    examples = []
    while len(examples) < SPLIT_SIZES[split]:
        question, equation, rationale = _problem(rng)
        if question in seen:
            continue
        seen.add(question)
        i = len(examples)
        answer = f"{evaluate_equation(equation):g}"
        examples.append(Example(input=question, label=answer, rationale=rationale, teacher_label=answer,
                                id=f"{split}-{i}"))
    return examples


def parse_completion(completion: str) -> tuple[str | None, str | None]:
    """'... 40 - 10 = 30. So the answer is 30.' -> (rationale, '30'), for a real teacher's answers."""
    rationale, answer = split_on_marker(cut_at_next_example(completion, ("\nQ:",)), "So the answer is")
    answer = (answer or "").split("\n")[0].strip().rstrip(".").strip()
    return (rationale, answer) if rationale and is_equation(answer) else (None, None)


def task(data_dir=None) -> Task:  # generated rows: no data directory
    return Task(
        name=NAME,
        load=load,
        parse_completion=parse_completion,
        labels_match=equations_equal,
        label_max_tokens=8,
        label_is_valid=is_equation,
        config={"task": NAME},
        origin="the demo's scripted rationales",
    )
