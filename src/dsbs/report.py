"""`dsbs report RESULTS`: a markdown table (mean ± std over seeds) and accuracy-vs-data plots."""

import importlib
import statistics
from collections import defaultdict
from pathlib import Path

from dsbs.tasks import BENCHMARKS
from dsbs.tasks.common import DataError, read_appended_jsonl

METHOD_ORDER = ("standard", "distill", "dsbs", "single_task")


def references(task: str) -> tuple[float | None, dict]:
    """(teacher's few-shot accuracy, the paper's T5-Base accuracies) in percent, where known."""
    if task not in BENCHMARKS:
        return None, {}
    module = importlib.import_module(f"dsbs.tasks.{task}")
    return module.TEACHER_FEW_SHOT_ACCURACY, module.PAPER_T5_BASE


def aggregate(results: list[dict]) -> dict:
    """(task, student, method, fraction) -> accuracies in percent, one per seed."""
    groups = defaultdict(list)
    for r in results:
        groups[(r["task"], r["student"], r["method"], r["fraction"])].append(100 * r["test_accuracy"])
    return groups


def markdown_table(groups: dict, results: list[dict]) -> str:
    test_n = {(r["task"], r["student"]): r["test_n"] for r in results}
    lines = []
    for task, student in sorted({(t, s) for t, s, _, _ in groups}):
        teacher, paper = references(Path(task).stem)
        fractions = sorted({f for t, s, _, f in groups if (t, s) == (task, student)})
        lines += [f"### {task} — student {student} (test n = {test_n[(task, student)]})", ""]
        lines += ["| method | " + " | ".join(f"{f:.1%} data" for f in fractions) + " |",
                  "|---|" + "---|" * len(fractions)]
        for method in sorted({m for t, s, m, _ in groups if (t, s) == (task, student)}, key=METHOD_ORDER.index):
            cells = []
            for fraction in fractions:
                accs = groups.get((task, student, method, fraction))
                if not accs:
                    cells.append("—")
                    continue
                spread = f" ± {statistics.stdev(accs):.1f}" if len(accs) > 1 else ""
                cells.append(f"{statistics.fmean(accs):.1f}{spread} (n={len(accs)})")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        if teacher is not None:
            lines += ["", f"Teacher (PaLM 540B few-shot CoT): {teacher:.2f}. Paper's T5-Base (220M) on 100% data: "
                      + ", ".join(f"{m} {v:.2f}" for m, v in paper.items()) + "."]
        lines.append("")
    return "\n".join(lines)


def plot(groups: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for task, student in sorted({(t, s) for t, s, _, _ in groups}):
        fig, ax = plt.subplots(figsize=(6, 4))
        colors = {}
        for method in METHOD_ORDER:
            points = sorted((f, accs) for (t, s, m, f), accs in groups.items() if (t, s, m) == (task, student, method))
            if not points:
                continue
            xs = [100 * f for f, _ in points]
            means = [statistics.fmean(a) for _, a in points]
            errs = [statistics.stdev(a) if len(a) > 1 else 0.0 for _, a in points]
            line = ax.errorbar(xs, means, yerr=errs, marker="o", capsize=3, label=method)
            colors[method] = line[0].get_color()
        teacher, paper = references(Path(task).stem)
        if teacher is not None:
            ax.axhline(teacher, color="gray", linestyle="--", label="teacher few-shot (PaLM 540B)")
            for method, value in paper.items():
                ax.plot([100], [value], marker="*", markersize=12, linestyle="none", color=colors.get(method),
                        label=f"paper T5-Base {method}")
        ax.set_xlabel("training data used (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{task} — {Path(student).name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        path = out / f"{Path(task).stem}-{Path(student).name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        files.append(str(path))
    return files


def report(results: str, output: str | None = None) -> dict:
    """Write report.md and one PNG per task and student next to ``results`` (or into ``output``)."""
    path = Path(results)
    if path.is_dir():
        path = path / "results.jsonl"
    rows = read_appended_jsonl(path)
    if not rows:
        raise DataError(f"{path}: no results yet (run `dsbs experiment` first)")
    out = Path(output) if output else path.parent
    out.mkdir(parents=True, exist_ok=True)
    groups = aggregate(rows)
    text = f"# Results: {rows[0].get('recipe', path.parent.name)}\n\n" + markdown_table(groups, rows)
    (out / "report.md").write_text(text)
    return {"report": str(out / "report.md"), "plots": plot(groups, out), "runs": len(rows), "markdown": text}
