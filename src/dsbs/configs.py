"""Every command's settings as a typed dataclass: the command line, recipes and Python callers share them.

No torch here (TRL's `*_config.py` modules): `dsbs --help` builds its whole parser from these in
milliseconds. Choices are `Literal` types, so the parser lists them and `check_choices` enforces
them for recipes and Python callers too. Each field's help is its `help` metadata.
"""

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Literal

from dsbs.errors import ConfigError
from dsbs.methods import METHOD_NAMES
from dsbs.names import BUILT_IN_STUDENT_NAMES, DEFAULT_STUDENT, PAPER_DATA_URL

MethodName = Literal[METHOD_NAMES]


def option(default=dataclasses.MISSING, help: str = "", **metadata):
    """A dataclass field with its help text (no default: a required option)."""
    return field(default=default, metadata={"help": help, **metadata})


def literal_choices(kind) -> tuple | None:
    """The allowed values of a Literal type (or of an optional Literal), else None."""
    if typing.get_origin(kind) is Literal:
        return typing.get_args(kind)
    for arg in typing.get_args(kind):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return None


def check_choices(config) -> None:
    """Every Literal-typed field of ``config`` holds one of its choices."""
    for f in dataclasses.fields(config):
        choices = literal_choices(f.type)
        value = getattr(config, f.name)
        if choices and value is not None and value not in choices:
            raise ConfigError(f"{f.name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_at_least(config, minimum: int, *names: str) -> None:
    for name in names:
        if getattr(config, name) < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {getattr(config, name)}")


@dataclass
class TrainConfig:
    """How to train: method, student, data size, optimisation, evaluation and checkpoints."""

    method: MethodName = option("dsbs", "standard (gold labels), distill (teacher labels), dsbs (label + rationale "
                                "as two tasks), single_task (target = rationale, then label)")
    student: str = option(DEFAULT_STUDENT, "local directory, hub name, or a built-in student: "
                          + ", ".join(BUILT_IN_STUDENT_NAMES))
    output: str = option("runs/train", "run directory: checkpoints/, model/ (see --keep-model), log.jsonl, "
                         "train_config.json")
    label_source: Literal["gold", "teacher"] = option("gold", "labels for dsbs and single_task: gold (fine-tuning "
                                                      "setting) or teacher (unlabeled setting)")
    alpha: float = option(0.5, "dsbs loss = alpha * label loss + (1 - alpha) * rationale loss")
    rationales: Literal["all", "agreeing", "all-agreeing"] = option(
        "all", "which teacher rationales a row learns from: all (the paper), agreeing (only where the teacher's "
        "label is the gold one; dsbs's label task keeps every row, single_task leaves the others out) or all-agreeing "
        "(dsbs: every sample's rationale whose label is the gold one, from teach --samples k); gold labels needed")
    rationale_weight: float | None = option(None, "dsbs: loss = label loss + RATIONALE_WEIGHT * rationale loss "
                                            "instead of the alpha mix (the label keeps standard fine-tuning's weight)")
    prompt_form: Literal["suffix", "prefix"] = option("suffix", "where the task marker goes: suffix (after the input: "
                                                      "dsbs reads each input once for both tasks) or prefix (the "
                                                      "paper's '[label] x')")
    markers: Literal["dsbs", "paper"] = option("dsbs", "the words that name each task: dsbs ([label], [rationale]) "
                                               "or paper (predict:, explain:, as the paper's code writes them)")
    shared_pass: bool = option(True, "dsbs in the suffix form: one pass over each input for both tasks (off: a "
                                     "pass per task, as the paper's code does)")
    pack: bool = option(True, "decoder-only students: pack several examples into each row (block-diagonal "
                              "attention, positions restarting per example) instead of padding each to the longest")
    data_fraction: float = option(1.0, "fraction of the training pool to use, drawn with --seed")
    pool_size: int | None = option(None, "cap the training pool at N rows, one fixed draw for every seed, so that "
                                   "fractions are of a pool a CPU can afford")
    train_split: str | None = option(None, "split used as the training pool (default: the task's; e-SNLI/ANLI "
                                     "samples here use valid)")
    val_fraction: float = option(0.1, "fraction held out (fixed seed 0) for model selection: of the run's "
                                      "subsample (--split-order paper) or of the whole pool (pool)")
    seed: int = option(0, "seed for subsampling, data order and initialisation of new weights")
    max_steps: int = option(1000, "optimizer steps (ignored when --epochs is set)")
    epochs: float | None = option(None, "train for this many passes over the training examples instead")
    batch_size: int = option(8, "examples per micro-batch (a dsbs example brings its label and rationale items)")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    lr: float = option(5e-5, "peak learning rate of AdamW")
    warmup_steps: int = option(0, "linear warm-up steps, then linear decay to 0")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_input_tokens: int = option(512, "prompt tokens kept per item")
    max_target_tokens: int = option(256, "target tokens kept per item (rationales are the long ones)")
    eval_interval: int = option(0, "validate every N steps (0: only at the end)")
    eval_limit: int | None = option(None, "validate on at most N of the held-out examples (the others train "
                                    "neither: the limit leaves the training rows as they are)")
    keep_model: Literal["auto", "best", "last"] = option(
        "auto", "which step model/ holds: best (the highest validation accuracy, ties keeping the earlier step), last, "
        "or auto: best from 100 validation rows up, else last (the best of fewer rows is mostly noise)")
    split_order: Literal["paper", "pool"] = option(
        "paper", "paper: cap the pool, take the fraction, then hold out --val-fraction of it for validation (the "
        "paper's order: a run selects on no more labelled rows than its budget); pool: hold validation out of the "
        "whole pool first (dsbs before 0.2: every fraction selects on the same, larger set)")
    eval_batch_size: int = option(32, "inputs per generation batch during validation")
    save_interval: int | None = option(None, "checkpoint every N steps (default: the eval interval, else every "
                                       "10% of the run)")
    log_interval: int = option(10, "log losses, lr and tokens/s every N steps")
    lora_rank: int = option(0, "0: train every weight; N: train rank-N LoRA adapters on every linear layer (the "
                            "peft package) and save the merged model")
    lora_alpha: float = option(16.0, "LoRA scaling numerator (the update is scaled by lora_alpha / lora_rank)")
    fsdp: bool = option(False, "under accelerate launch/torchrun: shard weights, gradients and optimizer state over "
                        "the processes (FSDP2), for students too large for one device")
    precision: Literal["auto", "fp32", "bf16"] = option("auto", "bf16 (autocast, fp32 master weights), fp32, or auto: "
                                                        "bf16 on GPUs that support it; on a CPU whichever a short "
                                                        "matmul measurement, cached per machine, finds faster")
    report_to: Literal["none", "tensorboard", "trackio", "wandb", "mlflow"] = option(
        "none", "log losses, lr, tokens/s, validation accuracy, the resolved config and (dsbs evaluate/experiment) "
        "test metrics to a tracker; a resumed run continues its tracker run")
    tracker_project: str = option("dsbs", "the tracker's project (trackio, wandb, mlflow experiment)")
    resume: bool = option(False, "continue from the latest checkpoint in --output")
    keep_checkpoints: bool = option(False, "keep the last checkpoint (weights + optimizer state, 3x the model's size) "
                                    "after the run ends; by default only model/ stays (a killed run still resumes: its "
                                    "checkpoint goes only once model/ is complete)")
    allow_missing_rationales: bool = option(False, "dsbs and single_task: train even when fewer than half of the "
                                            "training rows have a rationale (dsbs: those rows learn the label alone; "
                                            "single_task: they are skipped); without it such a run stops")
    phase_times: bool = option(False, "log where each step's time goes (collate, forward, backward, optimizer: "
                               "seconds per step); waits for the GPU between phases, so a step runs a little slower")

    def __post_init__(self):
        check_choices(self)
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.rationale_weight is not None and self.rationale_weight < 0:
            raise ConfigError(f"rationale_weight must be 0 or more, got {self.rationale_weight}")
        if self.lora_rank < 0:
            raise ConfigError("lora_rank must be 0 (off) or a positive rank")
        if self.fsdp and self.lora_rank:
            raise ConfigError("--fsdp and --lora-rank do not combine here: LoRA's frozen base is light enough "
                              "to replicate")
        if self.rationales != "all" and self.method in ("standard", "distill"):
            raise ConfigError(f"--rationales {self.rationales} chooses the rationales a method learns from, and "
                              f"{self.method} learns none: leave --rationales at all")
        if self.rationales != "all" and self.label_source == "teacher":
            raise ConfigError(f"--rationales {self.rationales} compares the teacher's label with the gold one; the "
                              "unlabeled setting has no gold labels to compare with: use --rationales all")
        if self.label_source == "teacher" and self.method == "standard":
            raise ConfigError("--label-source teacher: standard fine-tuning learns gold labels; on the teacher's "
                              "labels alone that is --method distill")
        if self.rationales == "all-agreeing" and self.method == "single_task":
            raise ConfigError("--rationales all-agreeing: single_task has one target per row (its rationale, then "
                              "its label), so it cannot learn several; use --rationales agreeing")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1) (0: no validation), got {self.val_fraction}")
        if self.pool_size is not None and self.pool_size < 1:
            raise ConfigError("pool_size must be at least 1")
        check_at_least(self, 1, "max_steps", "batch_size", "grad_accum", "log_interval")


# TrainConfig fields that change how a run is watched or stored, not what it trains: not part of a run's identity
NOT_RESULT_SETTINGS = ("resume", "output", "report_to", "tracker_project", "log_interval", "phase_times",
                       "keep_checkpoints", "save_interval", "eval_batch_size")


@dataclass
class TeachConfig:
    """Which teacher to ask, how, and where to put its answers."""

    split: str | None = option(None, "split to annotate (default: the task's training pool)")
    limit: int | None = option(None, "annotate the first N rows only")
    backend: Literal["local", "openai"] = option("local", "openai (any OpenAI-compatible server) or local "
                                                 "(in-process: llama-cpp-python for GGUF, else transformers)")
    model: str = option(DEFAULT_STUDENT, "openai: the served model's name; local: smollm2-135m, a .gguf file, or a "
                        "transformers model dir/name")
    base_url: str | None = option(None, "openai: server URL, e.g. http://127.0.0.1:8000/v1 (default: OpenAI's)")
    api_key_env: str = option("OPENAI_API_KEY", "openai: environment variable holding the API key")
    api: Literal["auto", "completion", "chat"] = option("auto", "completion (one few-shot text prompt), chat "
                                                        "(exemplars as earlier turns), or auto: chat for the local "
                                                        "backend (instruction-tuned models answer in turns), "
                                                        "completion for openai")
    prompt_file: str | None = option(None, "a prompt JSON file: {\"instruction\": \"...\", \"query_template\": \"Q: "
                                     "{input}\\nA:\", \"stop\": [\"\\nQ:\"], \"exemplars\": [{\"input\": \"...\", "
                                     "\"answer\": \"RATIONALE So the answer is LABEL.\"}]} (default: a benchmark's "
                                     "built-in prompt; an own task's exemplars come from labelled rows with a "
                                     "rationale, else the teacher writes them for labelled rows given their labels; "
                                     "every output holds the prompt it used as prompt.json)")
    zero_shot: bool = option(False, "no exemplars: an instruction and the input alone (fewer prompt tokens per "
                                    "request, usually weaker answers)")
    exemplars: int = option(8, "own task: labelled rows used as few-shot exemplars")
    temperature: float = option(0.0, "sampling temperature (use > 0 with --samples > 1)")
    max_tokens: int = option(160, "most tokens per answer")
    samples: int = option(1, "answers per input; the majority label wins and only rationales that agree are kept")
    concurrency: int = option(4, "requests in flight at once")
    timeout: float = option(120.0, "seconds a request may take from start to last byte before it counts as failed "
                            "and is retried")
    max_retries: int = option(5, "retries per request after timeouts, 429, 5xx or unreadable replies")
    max_retry_after: float = option(60.0, "longest pause a server's Retry-After can impose before a retry")
    max_reply_chars: int | None = option(None, "characters of completion kept per reply, and (x8, plus 64 kB) "
                                         "bytes read (default: 32 x max_tokens); longer ones are cut and counted")
    output: str = option("runs/teach", "output directory; train on it with dsbs train --task OUTPUT")
    batch: bool = option(False, "the provider's batch route (OpenAI's Batch API and compatible servers): half the "
                                "price, answers within 24 hours; batch ids go to OUTPUT/batches.json, and the same "
                                "command run again collects them instead of paying twice")
    batch_file: str | None = option(None, "write the requests not yet answered to this JSONL file in the batch format "
                                          "(for vllm run-batch or a provider's upload) and stop")
    ingest: str | None = option(None, "read a batch results file (OpenAI's output format, or vllm run-batch's) into "
                                      "the answer cache, then write the outputs; nothing is sent")
    cancel: bool = option(False, "cancel the batches recorded in OUTPUT/batches.json that have not ended")
    batch_max_requests: int = option(50_000, "requests per batch file (the provider's limit)")
    batch_max_bytes: int = option(200_000_000, "bytes per batch file (the provider's limit)")
    batch_poll: float = option(10.0, "seconds between the first polls of a batch (doubling up to --batch-poll-max)")
    batch_poll_max: float = option(300.0, "longest pause between polls")
    dry_run: bool = option(False, "send nothing: count the requests, prompt and completion tokens and (with "
                                  "--price-in/--price-out) the cost, live and in batch, then stop")
    price_in: float | None = option(None, "price of a million prompt tokens, for the cost estimate")
    price_out: float | None = option(None, "price of a million completion tokens, for the cost estimate")
    tokenizer: str | None = option(None, "tokenizer to count prompt tokens with (a transformers directory or hub "
                                         "name; default: the teacher's own where known, tiktoken for OpenAI models "
                                         "with the tiktoken extra, else the default student's as an estimate)")

    def __post_init__(self):
        check_choices(self)
        check_at_least(self, 1, "samples", "concurrency", "exemplars")
        check_at_least(self, 0, "max_retries")
        if self.samples > 1 and self.temperature == 0:
            raise ConfigError(f"--samples {self.samples} at --temperature 0 asks for the same answer {self.samples} "
                              "times (paid each time, one answer kept): sample with --temperature > 0 (0.7 is "
                              "usual for self-consistency)")
        if sum(map(bool, (self.batch, self.batch_file, self.ingest, self.cancel, self.dry_run))) > 1:
            raise ConfigError("--batch, --batch-file, --ingest, --cancel and --dry-run are different routes: choose "
                              "one")
        if (self.batch or self.cancel) and self.backend != "openai":
            raise ConfigError("the batch route needs an OpenAI-compatible server: --backend openai (offline, write "
                              "the requests with --batch-file and read the results with --ingest)")
        check_at_least(self, 1, "batch_max_requests", "batch_max_bytes")
        if self.zero_shot and self.prompt_file:
            raise ConfigError("--zero-shot and --prompt-file do not combine: a prompt file with no exemplars is "
                              "zero-shot")
        if (self.price_in is None) != (self.price_out is None):
            raise ConfigError("a cost needs both prices: --price-in and --price-out (per million tokens)")


@dataclass
class DemoConfig:
    """The whole pipeline on the built-in offline demo task."""

    output: str = option("runs/demo", "directory for both runs and the summary")
    student: str = option(DEFAULT_STUDENT, "student model: " + ", ".join(BUILT_IN_STUDENT_NAMES) + ", or a directory")
    max_steps: int = option(40, "optimizer steps per method")


@dataclass
class DownloadConfig:
    """Fetch and unpack the paper's released datasets.zip."""

    url: str = option(PAPER_DATA_URL, "where the archive is")
    cache_dir: str | None = option(None, "default: $DSBS_CACHE_DIR or ~/.cache/dsbs")
    sha256: str | None = option(None, "expected checksum of the archive")
    force: bool = option(False, "download again even if present")
    max_unpacked_bytes: int = option(4 << 30, "refuse an archive that would unpack to more than this")


@dataclass
class InspectConfig:
    """Row counts, teacher parse failures and accuracy, rationale lengths."""

    split: str | None = option(None, "split to inspect (default: the task's test split)")
    json: bool = option(False, "print one JSON object")


InferencePrecision = Literal["fp32", "bf16", "bf16-mixed"]
INFERENCE_PRECISION_HELP = (
    "arithmetic while answering. bf16: bf16 weights throughout, 2-3x faster than fp32 on a CPU with AMX, but 2-3% "
    "of the answers change; bf16-mixed: bf16 matrix products only (residual stream, norms, attention and output "
    "head in fp32), most of the speed with 99% or more of fp32's answers in our measurements")


CHOICES_HELP = (
    "choose each label from the task's label set (e-SNLI/ANLI's three, a CQA input's own five options) in one "
    "forward pass instead of generating it: always a valid label, and cheaper")


@dataclass
class EvaluateConfig:
    """Accuracy of a trained student on a split."""

    model: str = option(help="a student directory (a run's model/ or a checkpoint)")
    split: str | None = option(None, "default: the task's test split")
    limit: int | None = option(None, "evaluate the first N rows only")
    batch_size: int = option(16, "inputs per generation batch")
    output: str | None = option(None, "write predictions.jsonl and metrics.json here")
    with_rationale: bool = option(False, "also generate rationales, for inspection")
    choices: bool = option(False, CHOICES_HELP)
    precision: InferencePrecision = option("fp32", INFERENCE_PRECISION_HELP)


@dataclass
class PredictConfig:
    """Label every line of a JSONL file."""

    model: str = option(help="a student directory (a run's model/)")
    input: str = option(help="JSONL or CSV file, one input per row, in the format the student's task was trained on")
    output: str = option(help="JSONL file to write")
    input_field: str | None = option(None, "the field holding the student input (default: the one the student's "
                                     "task used, recorded in its dsbs.json)")
    input_template: str | None = option(None, "a str.format template over the row's fields (default: the student's "
                                        "task's, if it had one)")
    batch_size: int = option(16, "inputs per generation batch")
    with_rationale: bool = option(False, "also generate the rationale")
    skip_bad_lines: bool = option(False, "report and skip malformed lines instead of stopping")
    resume: bool = option(False, "keep the predictions already in --output and answer only the rest")
    choices: bool = option(False, CHOICES_HELP)
    precision: InferencePrecision = option("fp32", INFERENCE_PRECISION_HELP)


@dataclass
class ServeConfig:
    """HTTP service: POST /predict and OpenAI-compatible /v1/chat/completions."""

    model: str = option(help="a student directory (a run's model/)")
    host: str = option("127.0.0.1", "address to listen on")
    port: int = option(8000, "port to listen on")
    max_batch: int = option(32, "inputs generated together (concurrent requests are batched)")
    max_inputs: int = option(64, "inputs per request")
    max_input_chars: int = option(4000, "characters per input")
    api_key: str | None = option(None, "require Authorization: Bearer KEY on every route but /health (default: "
                                 "$DSBS_API_KEY; unset: no key)")
    allowed_hosts: str | None = option(None, "comma-separated Host names to answer (default: local names when bound "
                                       "to loopback, any otherwise)")
    max_body_bytes: int = option(1_000_000, "largest request body, counted as it arrives (413 past it)")
    max_queue: int = option(1024, "inputs waiting for the model at most (503 with Retry-After past it)")
    request_timeout: float = option(60.0, "seconds from a request's headers to its answer (504 past it)")
    header_timeout: float = option(10.0, "seconds a client has to send a request's headers before the connection "
                                   "is closed")
    limit_concurrency: int = option(256, "connections and requests handled at once (503 past it)")
    keep_alive_timeout: float = option(5.0, "seconds an idle keep-alive connection stays open")
    batch_wait_ms: float = option(5.0, "how long the batcher waits for more requests to join a batch")
    choices: bool = option(False, CHOICES_HELP)
    precision: InferencePrecision = option("fp32", INFERENCE_PRECISION_HELP)


@dataclass
class ExperimentConfig:
    """Run a recipe's grid of trainings and test evaluations."""

    recipe: str = option(help="a recipe YAML file (see recipes/)", positional=True)
    output: str | None = option(None, "override the recipe's output directory")
    report: bool = option(False, "write the report as runs finish (at most once a minute) and at the end")
    report_dir: str | None = option(None, "write the report, its plots and a copy of results.jsonl here "
                                    "(implies --report)")
    jobs: int = option(1, "cells run at once, each in its own process: one GPU each where there are several, else "
                       "sharing one; on a CPU the cores are divided among them")
    time_limit: float | None = option(None, "seconds: start nothing after this and stop runs still going (they "
                                      "resume on the next start)")

    def __post_init__(self):
        check_at_least(self, 1, "jobs")


@dataclass
class ExportConfig:
    """Convert a student for an inference engine; predict, evaluate and serve accept the result."""

    model: str = option(help="a student directory (a run's model/)")
    output: str = option(help="directory to write the exported student to")
    format: Literal["ctranslate2", "llama.cpp", "onnx"] = option(
        "ctranslate2", "the engine: CTranslate2 (Llama-style and T5/BART-style students), llama.cpp (a GGUF file; "
        "Llama-style students) or onnx (ONNX Runtime; every seq2seq student, the MiniLM BERT2BERT one included)")
    quantization: Literal["float32", "int8", "int8_float32", "bfloat16"] = option(
        "float32", "weight type (float32: the same answers as transformers; int8, Q8_0 for llama.cpp: ~4x smaller, "
        "but CTranslate2's int8 gave the SVAMP student another answer on 13% of its test set, so it is not the "
        "default; int8_float32 and bfloat16: not for onnx)")


@dataclass
class PushConfig:
    """Upload a teach output or a student directory, with its card, to the Hugging Face Hub."""

    directory: str = option(help="a teach output (teach_summary.json) or a student (dsbs.json)", positional=True)
    repo_id: str = option(help="NAME or OWNER/NAME on the Hub")
    private: bool = option(False, "create the repository private")


@dataclass
class ReportConfig:
    """Markdown tables with paired intervals, and plots, from an experiment's results."""

    results: str = option(help="results.jsonl or the experiment's output directory", positional=True)
    output: str | None = option(None, "where to write report.md and the PNGs (default: beside the results)")
