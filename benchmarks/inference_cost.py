"""Inference cost: a student answering label-only vs the same student writing its rationale first
vs the local teacher answering with few-shot chain-of-thought (SmolLM2 GGUF through llama.cpp).

    python benchmarks/inference_cost.py --model runs/.../model [--items 32] [--batch 32]

Needs DSBS_DATA_DIR; the teacher row needs llama-cpp-python. The last line is machine-readable.
"""

import argparse
import time

TEACHER_PARAMS_PAPER = 540e9  # PaLM, whose rationales the paper's data holds


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a trained dsbs student (model/ of a dsbs run)")
    parser.add_argument("--task", help="test inputs of this task (default: the task the student was trained on)")
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--teacher-items", type=int, default=8)
    args = parser.parse_args()

    from dsbs.batching import RATIONALE_TASK
    from dsbs.checkpoint import read_meta
    from dsbs.inference import generate
    from dsbs.models import load_student
    from dsbs.tasks import TaskConfig, get_task

    meta = read_meta(args.model)
    args.task = args.task or meta["task"]
    model, tokenizer = load_student(args.model, for_inference=True)
    n_params = sum(p.numel() for p in model.parameters())
    inputs = [e.input for e in get_task(TaskConfig(task=args.task)).load("test")[: args.items]]
    limits = {"max_input_tokens": meta["max_input_tokens"], "form": meta.get("prompt_form", "prefix")}

    def label_only(batch: int):
        return generate(model, tokenizer, inputs, max_new_tokens=meta["label_max_tokens"], batch_size=batch, **limits)

    def rationale_first(batch: int):
        rationales = generate(model, tokenizer, inputs, task=RATIONALE_TASK, max_new_tokens=meta["max_target_tokens"],
                              batch_size=batch, **limits)
        return rationales, label_only(batch)

    label_only(args.batch)  # warm-up
    rows = []
    for name, fn in (("student label-only", label_only), ("student rationale-first", rationale_first)):
        for batch in (1, args.batch):
            out, seconds = timed(fn, batch)
            texts = out if name.endswith("only") else out[0] + out[1]
            tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
            rows.append((name, batch, 1000 * seconds / len(inputs), len(inputs) / seconds, tokens / len(inputs)))

    teacher_row = None
    try:
        from dsbs.prompts import completion_prompt, load_prompt
        from dsbs.teach import LocalBackend, TeachConfig

        backend = LocalBackend(TeachConfig(backend="local", model="smollm2-135m"))
        if backend.llama is not None:
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
    label_batched = rows[1][2]
    rationale_batched = rows[3][2]
    print(f"label_vs_rationale_cost={rationale_batched / label_batched:.2f} "
          f"label_inputs_per_s_batched={rows[1][3]:.2f}")


if __name__ == "__main__":
    main()
