"""Load test of `dsbs serve` on loopback: requests/s and p50/p99 latency with concurrent clients.

    DSBS_DATA_DIR=../shared/datasets python benchmarks/serve_load.py --model runs/.../model

Starts the service in its own process, then for each level of concurrency sends a bounded number
of one-input /predict requests (real test inputs of the student's task) from that many client
threads, stopping early at --max-seconds. The last line is machine-readable.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.servers

def post(url: str, text: str) -> float:
    started = time.perf_counter()
    request = urllib.request.Request(url, data=json.dumps({"inputs": [text]}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        json.loads(response.read())
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a trained dsbs student (model/ of a run)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=64, help="requests per level of concurrency")
    parser.add_argument("--max-seconds", type=float, default=90, help="stop a level after this long")
    parser.add_argument("--serve-args", default="", help="more `dsbs serve` options, e.g. '--precision bf16'")
    args = parser.parse_args()

    from dsbs.checkpoint import read_meta
    from dsbs.tasks import TaskConfig, get_task
    from tests.servers import free_port, wait_until_up

    texts = [e.input for e in get_task(TaskConfig(task=read_meta(args.model)["task"])).load("test")]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "dsbs", "serve", "--model", args.model, "--port", str(port),
                               *args.serve_args.split()],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base + "/health", wait_s=120, process=server)
        post(base + "/predict", texts[0])  # warm-up
        print(f"{'clients':>7} {'requests':>8} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8}")
        rows = []
        for clients in args.clients:
            started = time.perf_counter()
            deadline = started + args.max_seconds

            def client(k: int, clients: int = clients, deadline: float = deadline) -> list[float]:
                latencies = []
                for i in range(k, args.requests, clients):
                    if time.perf_counter() > deadline:
                        break
                    latencies.append(post(base + "/predict", texts[i % len(texts)]))
                return latencies

            with ThreadPoolExecutor(clients) as pool:
                latencies = sorted(x for part in pool.map(client, range(clients)) for x in part)
            seconds = time.perf_counter() - started
            p50 = 1000 * statistics.median(latencies)
            p99 = 1000 * latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
            rows.append((clients, len(latencies) / seconds, p50, p99))
            print(f"{clients:>7} {len(latencies):>8} {len(latencies) / seconds:>7.2f} {p50:>8.0f} {p99:>8.0f}")
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(" ".join(f"req_per_s_{c}={r:.2f} p99_ms_{c}={p99:.0f}" for c, r, _, p99 in rows))


if __name__ == "__main__":
    main()
