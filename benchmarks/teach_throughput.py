"""Teacher throughput: `dsbs teach` against a local llama.cpp server, beside a bare HTTP loop.

Starts llama-cpp-python's OpenAI-compatible server on loopback with the bundled SmolLM2 GGUF,
then for each concurrency sends the same few-shot prompts (a) through a bare thread pool of
plain HTTP requests and (b) through `dsbs teach` with an empty cache, and finally re-runs
`dsbs teach` on its filled cache. Needs llama-cpp-python[server] and DSBS_DATA_DIR.

    python benchmarks/teach_throughput.py [--items 16] [--max-tokens 48] [--concurrency 1 4 8]
"""

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.servers

from dsbs.prompts import completion_prompt, load_prompt
from dsbs.tasks import TaskConfig, get_task
from dsbs.teach import TeachConfig, teach
from tests.servers import start_llama_server


def bare_loop(url: str, prompts: list[str], max_tokens: int, stop: list[str], concurrency: int) -> float:
    def post(prompt: str) -> None:
        body = json.dumps({"model": "smollm2", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                           "stop": stop})
        request = urllib.request.Request(url + "/completions", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        json.loads(urllib.request.urlopen(request, timeout=600).read())

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(post, prompts))
    return len(prompts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="cqa")
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()

    task_config = TaskConfig(task=args.task)
    rows = get_task(task_config).load("test")[: args.items]
    spec = load_prompt(args.task)
    prompts = [completion_prompt(spec, row.input) for row in rows]
    process, url = start_llama_server()
    try:
        bare_loop(url, prompts[:2], args.max_tokens, list(spec.stop), 1)  # warm-up
        print(f"{'in flight':>9} {'bare items/s':>13} {'dsbs items/s':>13} {'dsbs/bare':>10}")
        ratios = []
        for concurrency in args.concurrency:
            bare = bare_loop(url, prompts, args.max_tokens, list(spec.stop), concurrency)
            with tempfile.TemporaryDirectory() as out:
                config = TeachConfig(backend="openai", base_url=url, model="smollm2", split="test", limit=args.items,
                                     max_tokens=args.max_tokens, concurrency=concurrency, output=out)
                started = time.perf_counter()
                teach(task_config, config)
                ours = args.items / (time.perf_counter() - started)
                if concurrency == args.concurrency[-1]:
                    started = time.perf_counter()
                    cached = teach(task_config, config)
                    cached_seconds = time.perf_counter() - started
            ratios.append(ours / bare)
            print(f"{concurrency:>9} {bare:>13.2f} {ours:>13.2f} {ours / bare:>10.2f}")
        print(f"cached re-run: {cached_seconds:.2f} s for {args.items} items, {cached['requests_made']} requests")
        print(f"min_ratio={min(ratios):.3f} cached_requests={cached['requests_made']} "
              f"cached_seconds={cached_seconds:.2f}")
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
