"""`dsbs report RESULTS`: accuracy tables with paired intervals, minimum resources, and plots.

Per cell (task, student, method, fraction): mean ± std over seeds, the seeds and the test n. Each
method is compared with standard fine-tuning at the same task, student and fraction, item by item
(dsbs.stats), and a method trained on the teacher's labels with standard distillation too; the
paper's "minimum resources" question is answered per method; where a method ran at several training
lengths (recipe variants that change only its length), a budget curve compares the methods at each
length. Everything is computed from results.jsonl alone: each line carries its per-item test
correctness.
"""

import functools
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from dsbs.configs import NOT_RESULT_SETTINGS
from dsbs.errors import DataError
from dsbs.methods import METHOD_NAMES
from dsbs.tasks import built_in_names, built_in_task
from dsbs.tasks.common import read_appended_jsonl

REACH_RULE = ("a method reaches a reference at the smallest data fraction whose mean test accuracy over seeds is "
              "at least the reference's on the same test items; the paired 95% interval of the difference there "
              "is shown")
BUDGET_SETTINGS = ("max_steps", "epochs", "eval_interval", "save_interval")  # what a budget variant may change


def references(task: str) -> tuple[float | None, dict]:
    """(teacher's few-shot accuracy, the paper's T5-Base accuracies) in percent, where known."""
    if task not in built_in_names():
        return None, {}
    spec = built_in_task(task)
    return spec.teacher_few_shot_accuracy, spec.paper_t5_base


def row_parts(row: str) -> tuple[str, str, str]:
    """(method, " [variant]" or "", " (settings)" or "") of a row's name."""
    method, _, rest = row.partition(" ")
    variant = rest[: rest.index("]") + 1] if rest.startswith("[") else ""
    settings = rest[len(variant):].strip()
    return method, f" {variant}" if variant else "", f" {settings}" if settings else ""


def method_rank(row: str) -> tuple:
    """Rows in the order of dsbs.methods (a name from an older results file last), variants after."""
    method, variant, settings = row_parts(row)
    return (METHOD_NAMES.index(method) if method in METHOD_NAMES else len(METHOD_NAMES)), variant, settings


def label(result: dict) -> str:
    """A row of the tables: the method, and the recipe variant it ran in, if any."""
    return result["method"] + (f" [{result['variant']}]" if result.get("variant") else "")


TASK_RECORDED = "task settings recorded"


def settings_of(result: dict) -> dict:
    """What a result line was trained with beyond its cell: the recipe's settings, the split order, the task's
    settings and its data (a regenerated teach output is other data: its runs are not more seeds)."""
    order = (result.get("protocol") or {}).get("split_order") or "pool (old)"
    settings = {k: v for k, v in (result.get("train_settings") or {}).items() if k not in NOT_RESULT_SETTINGS}
    # lines before 2026-12-07 record neither; a recorded line leaves out the task fields it keeps at their default
    task = {f"task.{k}": v for k, v in (result.get("task_settings") or {}).items()}
    recorded = {TASK_RECORDED: True} if "task_settings" in result else {}
    data = {"data": result["data_digest"]} if result.get("data_digest") else {}
    return {**settings, **task, **recorded, "split": order, "test_limit": result.get("test_limit"), **data}


def settings_labels(results: list[dict]) -> dict[int, str]:
    """For lines whose row holds runs of different settings (a recipe changed and ran again), the settings
    that tell them apart, by line: such runs are different rows, never seeds of one."""
    by_row = defaultdict(list)
    for r in results:
        by_row[(r["task"], r["student"], label(r))].append(r)
    names = {}
    for lines in by_row.values():
        kinds = [settings_of(r) for r in lines]
        keys = sorted({k for kind in kinds for k in kind if any(differ(kind, other, k) for other in kinds)})
        for r, kind in zip(lines, kinds, strict=True):
            if keys:
                names[id(r)] = ", ".join(f"{k}={kind.get(k)}" for k in keys)
    return names


def differ(one: dict, other: dict, key: str) -> bool:
    """Whether two lines' settings differ in ``key``; the task's settings and data, which lines before
    2026-12-07 do not record, differ only where both lines record them."""
    if key == TASK_RECORDED:
        return False
    if key.startswith("task."):
        return TASK_RECORDED in one and TASK_RECORDED in other and one.get(key) != other.get(key)
    if key == "data":
        return key in one and key in other and one[key] != other[key]
    return one.get(key) != other.get(key)


def group_results(results: list[dict]) -> dict:
    """(task, student) -> method [variant] (settings) -> fraction -> the result lines of its seeds, in seed order."""
    groups = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    apart = settings_labels(results)
    for r in sorted(results, key=lambda r: r["seed"]):
        row = label(r) + (f" ({apart[id(r)]})" if id(r) in apart else "")
        groups[(r["task"], r["student"])][row][r["fraction"]].append(r)
    return groups


def reference_row(cells: dict, row: str, method: str) -> str | None:
    """The row of ``method`` a row is compared with: of its variant and settings, else its variant's, else the
    plain one (where runs of other settings split a row, a comparison stays within the same settings)."""
    _, variant, settings = row_parts(row)
    for candidate in (f"{method}{variant}{settings}", f"{method}{variant}", f"{method}{settings}", method):
        if candidate in cells and candidate != row:
            return candidate
    return None


def baseline(cells: dict, row: str) -> str | None:
    return reference_row(cells, row, "standard")


def matrix(lines: list[dict], seeds: list[int] | None = None):
    """Seeds x items correctness of a cell (only ``seeds`` if given), or None without per-item data."""
    import numpy as np

    from dsbs.stats import correctness

    chosen = [r for r in lines if seeds is None or r["seed"] in seeds]
    if not chosen or any(not r.get("test_correct") for r in chosen):
        return None
    vectors = [correctness(r["test_correct"]) for r in chosen]
    return np.stack(vectors) if len({v.size for v in vectors}) == 1 else None


def item_clusters(lines: list[dict]) -> list | None:
    """Each test item's cluster: from the result lines, or (older lines) from the built-in task's test rows."""
    for r in lines:
        if r.get("test_clusters"):
            return r["test_clusters"]
    return benchmark_clusters(lines[0].get("task"), lines[0].get("test_n"))


@functools.lru_cache(maxsize=16)
def benchmark_clusters(task: str | None, n: int | None) -> list | None:
    """The clusters of a built-in benchmark's first ``n`` test rows, read once (None without its data)."""
    if task not in built_in_names() or not built_in_task(task).paper_layout:
        return None
    try:
        from dsbs.evaluate import cluster_indices

        rows = built_in_task(task).load(built_in_task(task).test_split)[:n]
    except DataError:  # the paper's data is not here: items count as independent
        return None
    return cluster_indices(rows) if len(rows) == n else None


def paired(a_lines: list[dict], b_lines: list[dict]):
    """Difference of a over b on the seeds both have, or None; a seedless b (the teacher's answers,
    one row) is compared with every seed of a. Items of one cluster count once."""
    from dsbs.stats import compare

    if all(r["seed"] is None for r in b_lines):
        a, b = matrix(a_lines), matrix(b_lines)
        if a is None or b is None or a.shape[1] != b.shape[1]:
            return None
        return compare(a, b, clusters=item_clusters(a_lines))
    shared = sorted({r["seed"] for r in a_lines} & {r["seed"] for r in b_lines})
    a, b = matrix(a_lines, shared), matrix(b_lines, shared)
    if a is None or b is None or a.shape != b.shape:
        return None
    return compare(a, b, clusters=item_clusters(a_lines))


def teacher_lines(cells: dict) -> list[dict] | None:
    """The teacher's per-item correctness on these test rows, as a one-row pseudo cell with no seed."""
    for fractions in cells.values():
        for lines in fractions.values():
            for r in lines:
                if r.get("teacher_test_correct"):
                    return [{"seed": None, "test_correct": r["teacher_test_correct"]}]
    return None


def accuracy(lines: list[dict]) -> float:
    return statistics.fmean(100 * r["test_accuracy"] for r in lines)


def cell_text(lines: list[dict]) -> str:
    accs = [100 * r["test_accuracy"] for r in lines]
    spread = f" ± {statistics.stdev(accs):.1f}" if len(accs) > 1 else ""
    return f"{statistics.fmean(accs):.1f}{spread} ({len(accs)} seed{'s' if len(accs) > 1 else ''})"


FEW_SEEDS = 3  # below it an interval says little about the method: its seed-to-seed spread is barely known
FEW_SEEDS_NOTE = (f"† from fewer than {FEW_SEEDS} paired seeds: the seed-to-seed spread is barely known (with one "
                  "seed, not at all: the interval is about one trained model), so this is not a method comparison")


def p_text(d) -> str:
    return f"{d.p_value:.3g}" if d.p_value >= 1e-4 else "<0.0001"


def difference_text(d) -> str:
    return f"{d.diff:+.1f} [{d.low:+.1f}, {d.high:+.1f}]" + ("†" if d.seeds < FEW_SEEDS else "")


def accuracy_table(cells: dict, fractions: list[float]) -> list[str]:
    lines = ["| method | " + " | ".join(f"{f:.1%} data" for f in fractions) + " |", "|---|" + "---|" * len(fractions)]
    for method in sorted(cells, key=method_rank):
        row = [cell_text(cells[method][f]) if cells[method].get(f) else "—" for f in fractions]
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return lines


def comparison_row(row: str, reference: str, fraction: float, a_lines: list[dict], b_lines: list[dict]) -> str:
    d = paired(a_lines, b_lines)
    return (f"| {row} | {reference} | {fraction:.1%} | {difference_text(d) if d else 'no per-item data'} | "
            f"{p_text(d) if d else '—'} | {d.seeds if d else '—'} |")


def comparison_table(intro: str, first_column: str, rows: list[str]) -> list[str]:
    if not rows:
        return []
    note = [FEW_SEEDS_NOTE] if any("†" in row for row in rows) else []
    return ["", intro, "", f"| {first_column} | against | data | difference [95% interval] | p | paired seeds |",
            "|---|---|---|---|---|---|", *rows, *([""] + note if note else [])]


def against_standard(cells: dict, fractions: list[float]) -> list[str]:
    """Each row minus standard fine-tuning at the same data (its variant's standard, else the plain one), paired."""
    rows = []
    for row in sorted(cells, key=method_rank):
        reference = baseline(cells, row)
        if reference is None or row_parts(row)[0] == "standard":
            continue
        rows += [comparison_row(row, reference, f, cells[row][f], cells[reference][f]) for f in fractions
                 if cells[row].get(f) and cells[reference].get(f)]
    return comparison_table("Against standard fine-tuning at the same data (accuracy points, paired by seed and test "
                            "item; 95% t interval whose variance counts seed-to-seed spread and test items, items of "
                            "one cluster once (dsbs.stats); p: the same t-test, two-sided):", "method", rows)


def teacher_labelled(lines: list[dict]) -> bool:
    return all((r.get("train_settings") or {}).get("label_source") == "teacher" for r in lines)


def against_distill(cells: dict, fractions: list[float]) -> list[str]:
    """The paper's unlabeled setting: each row trained on the teacher's labels (``label_source: teacher``)
    minus standard distillation (``distill``, also the teacher's labels; its variant's own, else the plain
    one) at the same data, paired."""
    rows = []
    for row in sorted(cells, key=method_rank):
        reference = reference_row(cells, row, "distill")
        if reference is None or row_parts(row)[0] == "distill":
            continue
        rows += [comparison_row(row, reference, f, cells[row][f], cells[reference][f]) for f in fractions
                 if cells[row].get(f) and cells[reference].get(f) and teacher_labelled(cells[row][f])]
    return comparison_table("Without gold labels (the paper's unlabeled setting): against standard distillation on "
                            "the same teacher labels (same statistics):", "method", rows)


def against_plain(cells: dict, fractions: list[float]) -> list[str]:
    """Each variant's row minus its method's plain row (e.g. "dsbs [prefix]" against "dsbs"), paired."""
    rows = []
    for row in sorted(cells, key=method_rank):
        method, _, settings = row_parts(row)
        plain = next((c for c in (f"{method}{settings}", method) if c in cells and c != row), row)
        if plain == row:
            continue
        rows += [comparison_row(row, plain, f, cells[row][f], cells[plain][f]) for f in fractions
                 if cells[row].get(f) and cells[plain].get(f)]
    return comparison_table("Each variant against its method's plain runs (same statistics):", "variant", rows)


def without_budget(lines: list[dict]) -> dict:
    settings = lines[0].get("train_settings") or {}
    return {k: v for k, v in settings.items() if k not in BUDGET_SETTINGS}


def budget_curves(cells: dict, fraction: float) -> dict:
    """method (in method_rank order) -> optimizer steps -> result lines: a method's plain row and those of its
    variants whose settings differ from the plain row's only in training length (the first row of each length
    wins), where there are at least two lengths."""
    curves = {}
    for row in sorted(cells, key=method_rank):
        method = row_parts(row)[0]
        lines, plain = cells[row].get(fraction), cells.get(method, {}).get(fraction)
        if lines and plain and lines[0].get("steps") and without_budget(lines) == without_budget(plain):
            curves.setdefault(method, {}).setdefault(lines[0]["steps"], lines)
    return {method: dict(sorted(curve.items())) for method, curve in curves.items() if len(curve) > 1}


def budget_table(cells: dict, fraction: float) -> list[str]:
    """Accuracy by training length for each method with a budget curve, and each one against standard."""
    curves = budget_curves(cells, fraction)
    if not curves:
        return []
    methods = list(curves)
    others = [m for m in methods if m != "standard"] if "standard" in curves else []
    header = "| steps | " + " | ".join(methods) + "".join(f" | {m} − standard [95% interval] | p" for m in others)
    rows = ["", f"Budget curve at {fraction:.1%} data (each method's runs that differ only in training length; "
            "differences paired as above):", "", header + " |", "|---|" + "---|" * (len(methods) + 2 * len(others))]
    for steps in sorted({s for curve in curves.values() for s in curve}):
        row = [cell_text(curves[m][steps]) if steps in curves[m] else "—" for m in methods]
        for m in others:
            both = steps in curves[m] and steps in curves["standard"]
            d = paired(curves[m][steps], curves["standard"][steps]) if both else None
            row += [difference_text(d), p_text(d)] if d else ["—", "—"]
        rows.append(f"| {steps} | " + " | ".join(row) + " |")
    return rows


def reach(cells: dict, method: str, reference: list[dict], target: float) -> str:
    """The smallest fraction at which ``method`` reaches ``target`` accuracy, with its paired interval."""
    for fraction in sorted(cells[method]):
        lines = cells[method][fraction]
        if accuracy(lines) >= target - 1e-9:
            d = paired(lines, reference)
            return f"{fraction:.1%}" + (f" ({difference_text(d)})" if d else "")
    return "not reached"


def minimum_resources(cells: dict, teacher: list[dict] | None) -> list[str]:
    """The paper's question: how little data does each method need to pass standard (100%) and the teacher?"""
    full_standard = cells.get("standard", {}).get(1.0)
    if not full_standard and not teacher:
        return []
    header, columns = ["| method |"], []
    if full_standard:
        target = accuracy(full_standard)
        header.append(f" reaches standard fine-tuning on 100% ({target:.1f}) at |")
        columns.append((full_standard, target))
    if teacher:
        from dsbs.stats import correctness

        target = 100 * float(correctness(teacher[0]["test_correct"]).mean())
        header.append(f" reaches the teacher's few-shot accuracy on these items ({target:.1f}) at |")
        columns.append((teacher, target))
    rows = ["".join(header), "|---|" + "---|" * len(columns)]
    for method in sorted(cells, key=method_rank):
        rows.append(f"| {method} | " + " | ".join(reach(cells, method, ref, target) for ref, target in columns) + " |")
    return ["", f"Minimum resources ({REACH_RULE}):", "", *rows]


def caveats(lines: list[dict]) -> str:
    """What separates these runs from the paper's setting, read from their settings."""
    first = lines[0]
    notes = []
    if any(not r.get("protocol") for r in lines):
        notes.append("some runs predate the paper's split order (validation held out of the whole pool, selected on "
                     "gold labels also in the unlabeled setting): they stay, labelled, until rerun")
    clusters = len(set(item_clusters(lines) or []))
    if clusters > 1:
        notes.append(f"{clusters} clusters of test items (counted once each)")
    elif clusters == 1:
        notes.append("every test item in one cluster: counted as independent items (is the cluster field right?)")
    pool = (first.get("train_settings") or {}).get("pool_size")
    if pool:
        notes.append(f"training pool capped at {pool} rows")
    if first.get("test_limit"):
        notes.append(f"first {first['test_limit']} test rows")
    return "; ".join(notes)


def markdown(groups: dict) -> str:
    out = []
    for (task, student), cells in sorted(groups.items()):
        every = [r for fractions in cells.values() for lines in fractions.values() for r in lines]
        fractions = sorted({f for fractions in cells.values() for f in fractions})
        note = caveats(every)
        out += [f"### {task} — student {student} (test n = {every[0]['test_n']}{'; ' + note if note else ''})", ""]
        out += accuracy_table(cells, fractions)
        out += against_standard(cells, fractions)
        out += against_distill(cells, fractions)
        out += against_plain(cells, fractions)
        for fraction in fractions:
            out += budget_table(cells, fraction)
        teacher = teacher_lines(cells)
        out += minimum_resources(cells, teacher)
        full_teacher, paper = references(Path(task).stem)
        if full_teacher is not None:
            scores = ", ".join(f"{m} {v:.2f}" for m, v in paper.items())
            out += ["", "For orientation, not comparable: the teacher (PaLM 540B few-shot CoT) scores "
                    f"{full_teacher:.2f} on the full test set; the paper's T5-Base (220M, another student) trained on "
                    f"the full training set scores {scores} on the full test set."]
        out.append("")
    return "\n".join(out)


def cell_interval(lines: list[dict]) -> tuple[float, float, float]:
    """(mean, minus, plus) for an error bar: the 95% interval (cut to 0-100), or ± std without per-item data."""
    from dsbs.stats import mean_interval

    m = matrix(lines)
    if m is not None:
        mean, low, high = mean_interval(m, clusters=item_clusters(lines))
        return mean, mean - max(low, 0.0), min(high, 100.0) - mean
    accs = [100 * r["test_accuracy"] for r in lines]
    spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
    return statistics.fmean(accs), spread, spread


def plot(groups: dict, out: Path) -> list[str]:
    try:
        import matplotlib
    except ImportError:
        print("no plots: matplotlib is not installed (pip install 'dsbs[plot]')", file=sys.stderr)
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for (task, student), cells in sorted(groups.items()):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        colors = {}
        for method in sorted(cells, key=method_rank):
            points = sorted(cells[method].items())
            xs = [100 * f for f, _ in points]
            bars = [cell_interval(lines) for _, lines in points]
            line = ax.errorbar(xs, [b[0] for b in bars], yerr=[[b[1] for b in bars], [b[2] for b in bars]],
                               marker="o", capsize=3, label=method)
            colors[method] = line[0].get_color()
            few = [(x, b[0]) for x, b, (_, lines) in zip(xs, bars, points, strict=True) if len(lines) < FEW_SEEDS]
            if few:  # hollow: fewer than 3 seeds, an interval that says little
                ax.plot(*zip(*few, strict=True), "o", color=colors[method], markerfacecolor="white", zorder=5)
        draw_teacher(ax, cells)
        _, paper = references(Path(task).stem)
        for method, value in paper.items():
            ax.plot([100], [value], marker="*", markersize=12, linestyle="none", color=colors.get(method, "black"),
                    alpha=0.5, label=f"paper: T5-Base {method} (full data, full test set)")
        ax.set_xscale("log", base=2)
        fractions = sorted({100 * f for points in cells.values() for f in points})
        ax.set_xticks(fractions, [f"{f:g}%" for f in fractions])
        ax.minorticks_off()
        ax.set_xlabel("training data used (% of the pool)")
        ax.set_ylabel(f"test accuracy (%), 95% interval\n(hollow: fewer than {FEW_SEEDS} seeds)", fontsize=9)
        ax.set_title(f"{task} — {Path(student).name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        path = out / f"{Path(task).stem}-{Path(student).name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        files.append(str(path))
        for fraction in sorted({f for points in cells.values() for f in points}):
            curves = budget_curves(cells, fraction)
            if curves:
                files.append(plot_budget(plt, cells, curves, fraction, out / f"{path.stem}-budget-f{fraction:g}.png",
                                         f"{task} — {Path(student).name}"))
    return files


def draw_teacher(ax, cells: dict) -> None:
    teacher = teacher_lines(cells)
    if teacher:
        from dsbs.stats import correctness

        ax.axhline(100 * correctness(teacher[0]["test_correct"]).mean(), color="gray", linestyle="--",
                   label="teacher few-shot (PaLM 540B), same test items")


def plot_budget(plt, cells: dict, curves: dict, fraction: float, path: Path, title: str) -> str:
    """Accuracy against optimizer steps, one line per method of ``curves`` (budget_curves)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, curve in curves.items():
        bars = [cell_interval(lines) for lines in curve.values()]
        ax.errorbar(list(curve), [b[0] for b in bars], yerr=[[b[1] for b in bars], [b[2] for b in bars]],
                    marker="o", capsize=3, label=method)
    draw_teacher(ax, cells)
    ax.set_xlabel(f"optimizer steps ({fraction:.0%} of the pool)")
    ax.set_ylabel("test accuracy (%), 95% interval")
    ax.set_title(f"{title}: training length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def report(results: str, output: str | None = None) -> dict:
    """Write report.md and one PNG per task and student next to ``results`` (or into ``output``)."""
    path = Path(results)
    if path.is_dir():
        path = path / "results.jsonl"
    rows = read_appended_jsonl(path, repair=False) if path.is_file() else []
    if not rows:
        raise DataError(f"{path}: no results yet (run `dsbs experiment` first)")
    from dsbs.files import write_atomic

    out = Path(output) if output else path.parent
    out.mkdir(parents=True, exist_ok=True)
    groups = group_results(rows)
    text = f"# Results: {rows[0].get('recipe', path.parent.name)}\n\n" + markdown(groups)
    write_atomic(out / "report.md", text)
    return {"report": str(out / "report.md"), "plots": plot(groups, out), "runs": len(rows), "markdown": text}
