"""The training methods, one record each: what a method trains on, how its losses mix, how it answers.

Training (dsbs.train), inference (dsbs.inference), reports and experiments read these records and
nothing else, so a new method is one more record in METHODS.
"""

from dataclasses import dataclass
from typing import Literal

from dsbs.errors import ConfigError

LABEL_TASK, RATIONALE_TASK = 0, 1
TASK_NAMES = {LABEL_TASK: "label", RATIONALE_TASK: "rationale"}


@dataclass(frozen=True)
class Method:
    """One way of training a student."""

    name: str
    help: str
    # the label it learns: gold, the teacher's, or chosen by --label-source (gold or teacher)
    labels: Literal["gold", "teacher", "chosen"]
    # the teacher's rationale: unused, a second task beside the label (dsbs), or written before the
    # label in one target (single_task)
    rationale: Literal["none", "task", "target"]

    @property
    def answers_with_rationale(self) -> bool:
        """A student that writes its rationale before its label must generate both at inference."""
        return self.rationale == "target"

    def loss_weights(self, alpha: float, rationale_weight: float | None = None) -> dict[int, float]:
        """Weight of each task's mean token loss in the step's loss.

        dsbs mixes them as alpha * label + (1 - alpha) * rationale, as the paper does; with
        ``rationale_weight`` (lambda) the label keeps standard fine-tuning's weight and the
        rationale is added on top: label + lambda * rationale.
        """
        if self.rationale != "task":
            return {LABEL_TASK: 1.0}
        if rationale_weight is not None:
            return {LABEL_TASK: 1.0, RATIONALE_TASK: rationale_weight}
        return {LABEL_TASK: alpha, RATIONALE_TASK: 1.0 - alpha}


METHODS = (
    Method("standard", "gold labels only (standard fine-tuning)", labels="gold", rationale="none"),
    Method("distill", "the teacher's labels only (standard distillation)", labels="teacher", rationale="none"),
    Method("dsbs", "label and rationale as two tasks; answers with the label alone (distilling step-by-step)",
           labels="chosen", rationale="task"),
    Method("single_task", "one target: the rationale, then the label; writes both at inference", labels="chosen",
           rationale="target"),
)
METHOD_NAMES = tuple(m.name for m in METHODS)
MethodName = Literal["standard", "distill", "dsbs", "single_task"]


def get_method(name: str) -> Method:
    for method in METHODS:
        if method.name == name:
            return method
    raise ConfigError(f"unknown method {name!r}: choose one of {', '.join(METHOD_NAMES)}")
