"""Few-shot chain-of-thought prompts: one editable JSON file per built-in task, or one of a user's own.

A prompt file (``--prompt-file``) is a JSON object::

    {"instruction": "Classify the review's sentiment: reason briefly, then end with 'So the answer is' and the label.",
     "query_template": "Q: {input}\\nA:",
     "stop": ["\\nQ:"],
     "exemplars": [{"input": "Great battery, awful screen.",
                    "answer": "It praises one part and blames another. So the answer is mixed."}]}

``instruction`` (optional) comes first; ``query_template`` renders each exemplar's input and the
asked input (``{input}`` is the student input); ``stop`` (optional) ends the answer before the
model invents a next example; each exemplar's ``answer`` is a worked answer in the task's format:
a rationale, then the answer marker and the label. ``exemplars`` may be empty (zero-shot). The
same file renders as a completion prompt or as chat messages; every teach output holds the prompt
it used as ``prompt.json``, in this format.
"""

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from dsbs.tasks.common import DataError


@dataclass(frozen=True)
class PromptSpec:
    instruction: str
    query_template: str
    stop: tuple[str, ...]
    exemplars: tuple[tuple[str, str], ...]  # (input, answer)


def load_prompt(path_or_task: str) -> PromptSpec:
    """A prompt file by path, or the built-in one of a task."""
    path = Path(path_or_task)
    if path.suffix == ".json":
        if not path.is_file():
            raise DataError(f"{path}: prompt file not found")
        text, where = path.read_text(encoding="utf-8"), str(path)
    else:
        builtin = resources.files("dsbs.tasks") / f"{path_or_task}.json"  # beside the task's module
        if not builtin.is_file():
            raise DataError(f"no built-in prompt for task {path_or_task!r}, and no prompt file of that name: pass "
                            "--prompt-file (its format: dsbs teach --help)")
        text, where = builtin.read_text(encoding="utf-8"), f"built-in prompt {path_or_task}"
    try:
        raw = json.loads(text)
        exemplars = tuple((e["input"], e["answer"]) for e in raw["exemplars"])
        spec = PromptSpec(raw.get("instruction", ""), raw["query_template"], tuple(raw.get("stop", [])), exemplars)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}:{err.lineno}: invalid JSON ({err.msg})") from None
    except (KeyError, TypeError) as err:
        raise DataError(f"{where}: prompt file needs query_template and exemplars of {{input, answer}} "
                        f"({err!r})") from None
    if "{input}" not in spec.query_template:
        raise DataError(f"{where}: query_template must contain {{input}}")
    return spec


def worked_answer(rationale: str, marker: str, label: str) -> str:
    """An exemplar's answer in an own task's format: the rationale, then the marker and the label."""
    return f"{rationale.strip()} {marker} {label}."


def exemplars_from_rows(examples, marker: str, k: int = 8) -> tuple[tuple[str, str], ...]:
    """Up to ``k`` exemplars from a user's labelled rows that carry a rationale (none: an empty tuple)."""
    picked = [(e.input, worked_answer(e.rationale, marker, e.label)) for e in examples if e.rationale and e.label]
    return tuple(picked[:k])


def own_instruction(marker: str, labels: tuple[str, ...] | None, equation: bool) -> str:
    """The instruction of an own task's prompt: how to answer, and what an answer may be."""
    text = f"Answer the question. Reason step by step, then end with '{marker}' and the answer."
    if labels:  # in quotes where a label holds a comma, so that it reads as one label
        quoted = any("," in label or '"' in label for label in labels)
        named = (json.dumps(label, ensure_ascii=False) if quoted else label for label in labels)
        text += f" The answer is one of: {', '.join(named)}."
    elif equation:
        text += " The answer is an arithmetic expression of numbers, + - * / and parentheses."
    return text


def prompt_json(spec: PromptSpec) -> str:
    """``spec`` as a prompt file (``--prompt-file`` reads it back)."""
    return json.dumps({"instruction": spec.instruction, "query_template": spec.query_template, "stop": list(spec.stop),
                       "exemplars": [{"input": x, "answer": a} for x, a in spec.exemplars]}, indent=2,
                      ensure_ascii=False)


def completion_prompt(spec: PromptSpec, text: str) -> str:
    shots = "".join(spec.query_template.format(input=x) + " " + a + "\n\n" for x, a in spec.exemplars)
    head = spec.instruction + "\n\n" if spec.instruction else ""
    return head + shots + spec.query_template.format(input=text)


def chat_messages(spec: PromptSpec, text: str) -> list[dict]:
    """The exemplars as earlier user/assistant turns, for backends that speak only chat."""
    messages = [{"role": "system", "content": spec.instruction}] if spec.instruction else []
    for x, a in spec.exemplars:
        messages += [{"role": "user", "content": spec.query_template.format(input=x)},
                     {"role": "assistant", "content": a}]
    return messages + [{"role": "user", "content": spec.query_template.format(input=text)}]
