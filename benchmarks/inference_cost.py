"""Inference cost: a student answering label-only vs the same student writing its rationale first
vs the local teacher answering with few-shot chain-of-thought (SmolLM2 GGUF through llama.cpp).

    python benchmarks/inference_cost.py --model runs/.../model [--items 32] [--batch 32]
    python benchmarks/inference_cost.py --model runs/.../model-ct2 --reference runs/.../model   # an exported student
    python benchmarks/inference_cost.py --model runs/.../model --precision bf16 --reference runs/.../model
    python benchmarks/inference_cost.py --model runs/.../model --choices --reference runs/.../model  # CQA, NLI

--model may be an exported student (`dsbs export`): its engine is read from the directory. With
--reference (the transformers student it came from) both answer the whole test set: the share of
the same answers (by the task's own comparison) and both accuracies with the paired interval of
their difference (the reference answers in fp32, generating). --choices: label-only chooses from
the task's label set (dsbs.inference.choose). The "first token only" rows time the prompt's
prefill and one decoding step: the rest of label-only is decoding. Needs DSBS_DATA_DIR; the
teacher row needs llama-cpp-python. The last line is
machine-readable: engine=... label_inputs_per_s_batched=... label_inputs_per_s_batch1=... same_answers=...
"""

import argparse
import time
import typing

from dsbs.configs import InferencePrecision

TEACHER_PARAMS_PAPER = 540e9  # PaLM, whose rationales the paper's data holds


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a trained dsbs student (model/ of a dsbs run)")
    parser.add_argument("--task", help="test inputs of this task (default: the task the student was trained on)")
    parser.add_argument("--reference", help="the transformers student an exported --model came from")
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--teacher-items", type=int, default=8)
    parser.add_argument("--precision", choices=typing.get_args(InferencePrecision), default="fp32",
                        help="a transformers student's arithmetic, as in dsbs evaluate")
    parser.add_argument("--choices", action="store_true", help="label-only chooses from the task's label set")
    parser.add_argument("--skip-rationale", action="store_true", help="leave out the rationale-first rows")
    args = parser.parse_args()

    from dsbs.batching import RATIONALE_TASK
    from dsbs.checkpoint import read_meta
    from dsbs.inference import choose, generate, label_choices
    from dsbs.models import load_student
    from dsbs.tasks import TaskConfig, get_task

    meta = read_meta(args.model)
    args.task = args.task or meta["task"]
    from dsbs.engines import engine_of
    from dsbs.hardware import cpu_name

    engine = engine_of(args.model) or "transformers"
    model, tokenizer = load_student(args.model, for_inference=True, precision=args.precision)
    n_params = float("nan")  # an export's own weights are the engine's, not a torch model's
    if engine == "transformers" or args.reference:
        counted = model if engine == "transformers" else load_student(args.reference)[0]
        n_params = sum(p.numel() for p in counted.parameters())
    task = get_task(TaskConfig(task=args.task))
    inputs = [e.input for e in task.load("test")[: args.items]]
    limits = {"max_input_tokens": meta["max_input_tokens"], "form": meta.get("prompt_form", "prefix"),
              "markers": meta.get("markers", "dsbs")}

    def label_only(batch: int):
        if args.choices:
            return choose(model, tokenizer, inputs, label_choices(task, inputs), batch_size=batch,
                          max_target_tokens=meta["max_target_tokens"], **limits)
        return generate(model, tokenizer, inputs, max_new_tokens=meta["label_max_tokens"], batch_size=batch, **limits)

    def first_token(batch: int):
        return generate(model, tokenizer, inputs, max_new_tokens=1, batch_size=batch, **limits)

    def rationale_first(batch: int):
        rationales = generate(model, tokenizer, inputs, task=RATIONALE_TASK, max_new_tokens=meta["max_target_tokens"],
                              batch_size=batch, **limits)
        return rationales, label_only(batch)

    label_only(args.batch)  # warm-up
    rows = []
    settings = {"student label-only": label_only, "label-only, first token only": first_token}
    if not args.skip_rationale:
        settings["student rationale-first"] = rationale_first
    for name, fn in settings.items():
        for batch in (1, args.batch):
            out, seconds = timed(fn, batch)
            texts = out[0] + out[1] if name.endswith("first") else out
            tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
            rows.append((name, batch, 1000 * seconds / len(inputs), len(inputs) / seconds, tokens / len(inputs)))
    ms = {(row[0], row[1]): row[2] for row in rows}

    teacher_row = None
    try:
        from dsbs.prompts import completion_prompt, load_prompt
        from dsbs.teach import LocalBackend, TeachConfig

        backend = LocalBackend(TeachConfig(backend="local", model="smollm2-135m"))
        if backend.llama is not None and args.teacher_items:
            spec = load_prompt(args.task)
            prompts = [completion_prompt(spec, x) for x in inputs[: args.teacher_items]]
            request = {"temperature": 0.0, "max_tokens": 128, "stop": list(spec.stop)}
            replies, seconds = timed(lambda: [backend({"prompt": p, **request}) for p in prompts])
            tokens = sum(r["completion_tokens"] or 0 for r in replies) / len(prompts)
            teacher_row = ("teacher few-shot CoT (llama.cpp)", 1, 1000 * seconds / len(prompts),
                           len(prompts) / seconds, tokens)
    except ImportError:
        pass

    print(f"student: {meta['method']} on {meta['task']}, {n_params / 1e6:.1f}M parameters "
          f"({TEACHER_PARAMS_PAPER / n_params:,.0f}x fewer than the 540B teacher of the paper's data)")
    print(f"{'setting':>34} {'batch':>5} {'ms/input':>9} {'inputs/s':>9} {'tokens out/input':>17}")
    for row in rows + ([teacher_row] if teacher_row else []):
        print(f"{row[0]:>34} {row[1]:>5} {row[2]:>9.1f} {row[3]:>9.2f} {row[4]:>17.1f}")
    label_batched = ms["student label-only", args.batch]
    rationale_batched = ms.get(("student rationale-first", args.batch), float("nan"))
    print(f"cpu: {cpu_name()}; label_vs_rationale_cost={rationale_batched / label_batched:.2f}; prefill and first "
          f"token against label-only: {ms['label-only, first token only', args.batch] / label_batched:.0%} at "
          f"batch {args.batch}, {ms['label-only, first token only', 1] / ms['student label-only', 1]:.0%} at batch 1")
    same = compare_with_reference(args, task, meta, model, tokenizer) if args.reference else None
    kind = meta["engine"]["quantization"] if engine != "transformers" else args.precision + "-choices" * args.choices
    print(f"engine={engine}-{kind} "
          f"label_inputs_per_s_batched={rows[1][3]:.2f} label_inputs_per_s_batch1={rows[0][3]:.2f} "
          f"same_answers={'n/a' if same is None else f'{same:.3f}'}")


def compare_with_reference(args, task, meta: dict, model, tokenizer) -> float:
    """Both students on the whole test set: share of the same answers, both accuracies, paired difference."""
    import numpy as np

    from dsbs.checkpoint import read_meta
    from dsbs.inference import label_choices, predict, same_answer
    from dsbs.models import load_student
    from dsbs.stats import compare

    rows = task.load(task.test_split)
    inputs = [e.input for e in rows]
    ours = [p["label"] for p in predict(model, tokenizer, meta, inputs, batch_size=args.batch,
                                        choices=label_choices(task, inputs) if args.choices else None)]
    ref_model, ref_tokenizer = load_student(args.reference, for_inference=True)
    theirs = [p["label"] for p in predict(ref_model, ref_tokenizer, read_meta(args.reference), inputs,
                                          batch_size=args.batch)]
    same = sum(same_answer(task, a, b) for a, b in zip(ours, theirs, strict=True)) / len(rows)
    correct = [np.array([task.labels_match(p, e.label) for p, e in zip(answers, rows, strict=True)], dtype=int)
               for answers in (ours, theirs)]
    d = compare(correct[0], correct[1])
    print(f"whole test set (n={len(rows)}): accuracy {100 * correct[0].mean():.1f} here, "
          f"{100 * correct[1].mean():.1f} with transformers; difference {d.diff:+.1f} [{d.low:+.1f}, {d.high:+.1f}]; "
          f"same answers {same:.3f}")
    return same


if __name__ == "__main__":
    main()
