"""A bounded load test of ``arvision serve``: a burst of concurrent Generate requests from one local script.

    .venv/bin/python bench/serve_load.py [--requests 20] [--queue-size 8] [--images 4]

Starts ``arvision serve mnist --queue-size Q`` on a free port, sends R Generate requests at once (each IMAGES
digits, through ``gradio_client``, the way a page's clicks arrive), and reports how many were answered, how many
were told the queue is full, how many failed otherwise, the slowest answer, and the server's resident memory
before and at its peak during the burst (sampled every 50 ms from /proc).  It ends by itself: every request has a
timeout.  The figures of docs/serve.md come from it.
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from arvision.serve.testing import served_process


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def request(client, images: int, seed: int, timeout_s: float) -> tuple[str, float, str]:
    """One Generate click -> (outcome, seconds, message)."""
    t0 = time.perf_counter()
    try:
        job = client.submit("mnist", list(range(images)), "", 1, str(seed), 2.0, 0, 0.96, 1.0, "fp32", 0, "none", 8,
                            api_name="/generate")
        job.result(timeout=timeout_s)
        return "answered", time.perf_counter() - t0, ""
    except Exception as e:  # the client raises the server's refusal as an exception
        message = str(e) or type(e).__name__
        kind = "queue full" if "queue is full" in message.lower() else "failed"
        return kind, time.perf_counter() - t0, message


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=20, help="concurrent requests (default 20)")
    ap.add_argument("--queue-size", type=int, default=8, help="the server's --queue-size (default 8)")
    ap.add_argument("--images", type=int, default=4, help="digits per request (default 4)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take (default 300)")
    args = ap.parse_args()
    from gradio_client import Client

    with served_process(["mnist", "--queue-size", str(args.queue_size)]) as (url, proc):
        client = Client(url, verbose=False)
        request(client, args.images, 0, args.timeout)  # warm-up: the first run allocates what later ones reuse
        before = rss_mb(proc.pid)
        peak, stop = [before], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak.append(rss_mb(proc.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.requests) as pool:
            results = list(pool.map(lambda i: request(client, args.images, i, args.timeout), range(args.requests)))
        wall = time.perf_counter() - t0
        stop.set()
        sampler.join()
        alive = proc.poll() is None
    counts = {k: sum(r[0] == k for r in results) for k in ("answered", "queue full", "failed")}
    answered = [s for kind, s, _ in results if kind == "answered"]
    print(f"{args.requests} concurrent requests of {args.images} digits, --queue-size {args.queue_size}: "
          f"{counts['answered']} answered, {counts['queue full']} told the queue is full, {counts['failed']} failed; "
          f"burst over in {wall:.1f} s, slowest answer {max(answered, default=0):.1f} s; server memory "
          f"{before:.0f} MiB before, {max(peak):.0f} MiB at peak; server still running: {alive}")
    for kind, _, message in results:
        if kind == "failed":
            print(f"  failed: {message}")


if __name__ == "__main__":
    main()
