"""Few-shot chain-of-thought prompts: one editable JSON file per built-in task.

A prompt file holds an instruction, a query template ("Q: {input}\\nA:"), stop sequences that
end the answer before the model invents a next example, and worked exemplars (input + answer in
the task's answer format). The same file renders as a completion prompt or as chat messages.
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
    if path.suffix == ".json" and path.is_file():
        text, where = path.read_text(encoding="utf-8"), str(path)
    else:
        builtin = resources.files("dsbs.tasks") / f"{path_or_task}.json"  # beside the task's module
        if not builtin.is_file():
            raise DataError(f"no built-in prompt for task {path_or_task!r}: pass --prompt-file "
                            "(see dsbs/tasks/*.json)")
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


def exemplars_from_rows(examples, k: int = 8) -> tuple[tuple[str, str], ...]:
    """Exemplars picked from a user's labelled rows that carry a rationale (answer = rationale + label)."""
    from dsbs.tasks.common import SINGLE_TASK_MARKER

    picked = [(e.input, e.rationale + SINGLE_TASK_MARKER + e.label + ".") for e in examples if e.rationale and e.label]
    if not picked:
        raise DataError("no labelled rows with a rationale to use as exemplars: pass --prompt-file")
    return tuple(picked[:k])


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
