"""--precision auto on a CPU: decided by a measured matmul comparison, once per machine."""

import json

from dsbs import hardware


def test_cpu_precision_follows_the_faster_matmul_and_is_cached(tmp_path, monkeypatch):
    speeds = {"float32": 100e9, "bfloat16": 160e9}
    calls = []
    monkeypatch.setattr(hardware, "matmul_flops", lambda dtype, *a, **k: calls.append(dtype) or speeds[dtype])
    assert hardware.cpu_precision(tmp_path) == "bf16"  # the EPYC case: AVX512-BF16 beats fp32
    assert hardware.cpu_precision(tmp_path) == "bf16" and len(calls) == 2, "measured once, then read back"
    [cached] = (tmp_path / "precision").glob("*.json")
    record = json.loads(cached.read_text())
    assert record["fp32_gflops"] == 100.0 and record["bf16_gflops"] == 160.0

    speeds["bfloat16"] = 60e9  # an Intel CPU without AMX: bf16 emulated, slower
    cached.unlink()
    assert hardware.cpu_precision(tmp_path) == "fp32"
    assert hardware.resolve_precision("fp32", "cpu") == "fp32" and hardware.resolve_precision("bf16", "cpu") == "bf16"


def test_matmul_flops_measures_something_plausible():
    flops = hardware.matmul_flops("float32", (64, 64, 64), seconds=0.05)
    assert 1e6 < flops < 1e14
