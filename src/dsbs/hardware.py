"""What this machine computes fastest: matmul peaks and the training precision they imply.

CPUs differ in ways no flag shows: on an AMD EPYC with AVX512-BF16 bf16 training ran 27% faster
than fp32, on an Intel CPU without AMX it ran 40% slower. So `--precision auto` on a CPU times a
short matmul in both dtypes once and remembers the answer per CPU model, thread count and torch
version.
"""

import hashlib
import json
import os
import platform
import time

# a SmolLM2-sized projection (576 -> 1536) over 512 positions: the shapes training spends its time on
PRECISION_PROBE = (512, 576, 1536)


def matmul_flops(dtype_name: str, shape: tuple[int, int, int] = (2048, 2048, 2048), device: str = "cpu",
                 seconds: float = 0.5) -> float:
    """Achieved FLOP/s of ``(m x k) @ (k x n)`` in ``dtype_name`` on ``device``, timed for about ``seconds``."""
    import torch

    m, k, n = shape
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    reps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(10):
            a @ b
        reps += 10
        sync()
    return 2 * m * k * n * reps / (time.perf_counter() - started)


def training_flops(config, features: list[dict]) -> float:
    """Training FLOPs (3 x forward) of a decoder-only model over encoded ``features``, padding excluded.

    Per token 2 FLOPs per weight of the attention projections and the gated MLP; attention over
    the positions each token sees (a shared pass's branches do not see each other); the output
    head on target tokens only, as dsbs computes it.
    """
    d, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    kv = d * config.num_key_value_heads // config.num_attention_heads
    per_token = layers * 2 * (2 * d * d + 2 * d * kv + 3 * d * config.intermediate_size)
    total = 0.0
    for f in features:
        segments = f.get("segments") or [0] * len(f["input_ids"])
        n_input, first = segments.count(0), {}
        seen = 0
        for i, s in enumerate(segments):
            first.setdefault(s, i)
            seen += i + 1 if s == 0 else n_input + i - first[s] + 1
        targets = sum(f["tasks"].values())
        total += 3 * (len(segments) * per_token + layers * 4 * seen * d + targets * 2 * d * vocab)
    return total


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_precision(cache_dir=None) -> str:
    """bf16 when a bf16 matmul beats fp32 on this CPU by 10% or more, else fp32; measured once, then cached."""
    import torch

    from dsbs.files import write_atomic
    from dsbs.names import default_cache_dir

    machine = f"{cpu_name()}|threads={torch.get_num_threads()}|torch={torch.__version__}"
    name = hashlib.sha256(machine.encode()).hexdigest()[:16] + ".json"
    path = (cache_dir or default_cache_dir()) / "precision" / name
    try:
        return json.loads(path.read_text())["precision"]
    except (OSError, ValueError, KeyError):
        pass
    fp32 = matmul_flops("float32", PRECISION_PROBE, seconds=0.3)
    bf16 = matmul_flops("bfloat16", PRECISION_PROBE, seconds=0.3)
    choice = "bf16" if bf16 >= 1.1 * fp32 else "fp32"
    record = {"precision": choice, "machine": machine, "fp32_gflops": round(fp32 / 1e9, 1),
              "bf16_gflops": round(bf16 / 1e9, 1), "measured_at": time.time(), "pid": os.getpid()}
    try:
        write_atomic(path, json.dumps(record, indent=2))
    except OSError:
        pass  # a read-only cache only costs the measurement next time
    return choice


def resolve_precision(precision: str, device: str) -> str:
    """auto: bf16 on a GPU that supports it; on a CPU, whichever dtype its matmuls run faster."""
    if precision != "auto":
        return precision
    import torch

    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return cpu_precision()
