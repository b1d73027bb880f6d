"""What a teach run will cost, before it starts (`dsbs teach --dry-run`): requests, tokens, money.

Prompt tokens are counted with the teacher's own tokenizer where one is known and loads here
(tiktoken for OpenAI models, the local model's tokenizer in-process), otherwise with the default
student's, and then labelled an estimate. Completion tokens are bounded by ``--max-tokens`` per
request and estimated from the exemplars' answers (or a stated default where there are none).
A chat request is counted as the text of its messages: the few tokens a chat template adds per
message are not in the count.
"""

import statistics

from dsbs.names import DEFAULT_STUDENT, default_cache_dir

COMPLETION_DEFAULT = 64  # tokens per answer assumed where no exemplar shows how long answers run
BATCH_DISCOUNT = 0.5  # the providers' batch route: half the price of input and output tokens


def prompt_text(request: dict) -> str:
    """The text a request asks the teacher to read (a chat request: its messages' contents, one per line)."""
    if "messages" in request:
        return "\n".join(m["content"] for m in request["messages"])
    return request["prompt"]


def token_counter(config, build_student: bool = True):
    """(count(text) -> tokens, the tokenizer's description, exact?) for the teacher of ``config``."""
    if config.tokenizer:
        return hf_counter(config.tokenizer), f"the tokenizer {config.tokenizer} (--tokenizer)", True
    if config.backend == "openai":
        try:
            import tiktoken

            encoding = tiktoken.encoding_for_model(config.model)
            return (lambda text: len(encoding.encode(text, disallowed_special=()))), f"tiktoken {encoding.name}", True
        except ImportError:
            note = "tiktoken is not installed (pip install 'dsbs[tiktoken]')"
        except Exception as err:  # noqa: BLE001 - an unknown model, or no network for tiktoken's files
            note = f"tiktoken has no encoding here for {config.model} ({type(err).__name__})"
    elif config.model != DEFAULT_STUDENT and not config.model.endswith(".gguf"):
        return local_counter(config.model), f"the teacher's own tokenizer ({config.model})", True
    elif config.model == DEFAULT_STUDENT:  # the bundled teacher's tokenizer is the default student's
        if build_student or student_is_built():
            return local_counter(DEFAULT_STUDENT), f"the teacher's own tokenizer ({config.model})", True
        return None, "the bundled teacher's tokenizer is not built yet", False
    else:
        note = "the teacher is a GGUF file"
    if not build_student and not student_is_built():
        return None, note, False
    return local_counter(DEFAULT_STUDENT), f"an estimate with the {DEFAULT_STUDENT} tokenizer: {note}", False


def student_is_built() -> bool:
    return (default_cache_dir() / "models" / DEFAULT_STUDENT / "config.json").is_file()


def hf_counter(name: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def local_counter(model: str):
    from dsbs.models import resolve_student

    return hf_counter(resolve_student(model))


def estimate(requests: list[dict], cached: int, exemplar_answers: list[str], config, count, tokenizer: str,
             exact: bool, live_only: list[dict] = ()) -> dict:
    """Tokens and cost of the requests still to send (``requests``; ``cached`` others the cache answers);
    ``live_only`` requests (the teacher writing exemplars, before any batch) are sent live whatever the route."""
    live_only = list(live_only)
    requests = list(requests) + live_only
    prompts = [count(prompt_text(r)) for r in requests]
    prompt_tokens = sum(prompts)
    per_answer = (statistics.fmean(count(a) for a in exemplar_answers) if exemplar_answers else COMPLETION_DEFAULT)
    each = min(per_answer, config.max_tokens)
    completion = round(each * len(requests))
    result = {"requests": len(requests), "answers_in_cache": cached, "prompt_tokens": prompt_tokens,
              "prompt_tokens_counted_with": tokenizer, "prompt_tokens_exact": exact,
              "completion_tokens_estimate": completion,
              "completion_tokens_estimated_from": "the exemplars' answers" if exemplar_answers else
              f"a default of {COMPLETION_DEFAULT} tokens per answer (no exemplars)",
              "completion_tokens_bound": config.max_tokens * len(requests)}
    if config.price_in is not None and config.price_out is not None:
        live = (prompt_tokens * config.price_in + completion * config.price_out) / 1e6
        bound = (prompt_tokens * config.price_in + result["completion_tokens_bound"] * config.price_out) / 1e6
        always_live = (sum(prompts[len(requests) - len(live_only):]) * config.price_in
                       + each * len(live_only) * config.price_out) / 1e6
        batch = (live - always_live) * BATCH_DISCOUNT + always_live
        result |= {"cost_live": round(live, 6), "cost_batch": round(batch, 6),
                   "cost_live_at_most": round(bound, 6), "currency_per_million_tokens": [config.price_in,
                                                                                         config.price_out]}
    return result

