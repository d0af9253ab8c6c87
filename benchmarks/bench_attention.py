"""Neighbourhood attention (ours, kernel 7) against full attention (``F.scaled_dot_product_attention`` over
all positions): wall time and peak memory of forward + backward, heads 4, head_dim 32, float32.

Every CPU case runs in fresh subprocesses, one for time and one for memory. After one warm-up call, the
kernel's peak resident set counter (``VmHWM``) is reset and the peak of the next call above the resident set
before it is reported: it counts every allocation torch makes (tracemalloc sees none of them). Full attention
runs under an ``RLIMIT_DATA`` cap of ``--full-attention-gb`` above the process's size, so a case that would
need more fails cleanly and is reported as skipped. On CUDA (also run when available) the peak is
``torch.cuda.max_memory_allocated`` above the memory allocated before the timed calls, which are bracketed by
``torch.cuda.synchronize()``.

Run: ``python benchmarks/bench_attention.py --out attention.md`` (``--quick`` for the small cases only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from polyscale.nn.attention import neighborhood_attention

try:
    from benchmarks.common import machine_description, markdown_table, publish
except ImportError:  # run as a script from the benchmarks folder
    from common import machine_description, markdown_table, publish

HEADS, HEAD_DIM, KERNEL = 4, 32, 7
# (spatial shape, batch): 2D at batch 2, 3D at batch 1; ``quick`` keeps the first of each.
CASES = [((32, 32), 2), ((64, 64), 2), ((128, 128), 2), ((16, 16, 16), 1), ((32, 32, 32), 1)]
QUICK_CASES = [((32, 32), 2), ((64, 64), 2), ((16, 16, 16), 1)]


def _attention(method: str):
    if method == "ours":
        return lambda q, k, v: neighborhood_attention(q, k, v, kernel_size=KERNEL)
    # Full attention over all N positions: (B, h, *S, c) -> (B, h, N, c) -> SDPA -> (B, h, *S, c)
    return lambda q, k, v: F.scaled_dot_product_attention(*(t.flatten(2, -2) for t in (q, k, v))).view(
        q.shape
    )


def _status_bytes(key: str) -> int:
    """A ``/proc/self/status`` entry (``VmRSS``, ``VmHWM``, ``VmData``) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not found in /proc/self/status")


def measure(method: str, spatial: tuple[int, ...], batch: int, device: str, repeats: int) -> dict:
    """Median time of ``repeats`` forward + backward calls after one warm-up call, and their peak memory above
    what was allocated before them (CPU: resident set, via the kernel's resettable high-water mark)."""
    fn = _attention(method)
    g = torch.Generator(device).manual_seed(0)
    shape = (batch, HEADS, *spatial, HEAD_DIM)
    q, k, v = (torch.randn(shape, generator=g, device=device, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(shape, generator=g, device=device)

    def step() -> float:
        t0 = time.perf_counter()
        fn(q, k, v).backward(grad_out)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        for t in (q, k, v):  # the gradients count in the call's peak, not in the memory before the next call
            t.grad = None
        return seconds

    step()  # warm-up: one-off library and allocator set-up is not the method's memory or time
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM (peak resident set) to the current resident set
        before = _status_bytes("VmRSS")
    times = [step() for _ in range(repeats)]
    after = torch.cuda.max_memory_allocated() if device == "cuda" else _status_bytes("VmHWM")
    return {"ms": 1e3 * statistics.median(times), "MB": (after - before) / 2**20}


def _worker(spec: dict) -> dict:
    """Subprocess entry: optional memory cap, then :func:`measure`; allocation failures become a skip."""
    if spec["cap_bytes"]:
        limit = _status_bytes("VmData") + spec["cap_bytes"]
        resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    torch.set_num_threads(spec["threads"])
    try:
        return measure(spec["method"], tuple(spec["spatial"]), spec["batch"], "cpu", spec["repeats"])
    except (RuntimeError, MemoryError) as err:  # torch reports a refused allocation as RuntimeError
        if "memory" not in str(err).lower() and not isinstance(err, MemoryError):
            raise
        return {"skipped": f"skipped (needs > {spec['cap_bytes'] / 2**30:.3g} GB)"}


def _in_subprocess(spec: dict, timeout: float, *, for_memory: bool) -> dict:
    """Run :func:`_worker` in a fresh process. Memory runs make glibc hand freed blocks back to the system at
    once (fixed mmap threshold, no trim slack), so the resident set follows live memory; as that slows the
    allocator down, times come from a separate run with default settings."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0") if for_memory else None
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True, env=env)
    except subprocess.TimeoutExpired:
        return {"skipped": f"timeout after {timeout:.0f} s"}
    except subprocess.CalledProcessError as err:
        raise RuntimeError(f"benchmark worker failed for {spec}:\n{err.stderr}") from err
    return json.loads(done.stdout.strip().splitlines()[-1])


def _row(spatial: tuple[int, ...], batch: int, device: str, ours: dict, full: dict) -> dict:
    n = math.prod(spatial)
    logits_gb = batch * HEADS * n * n * 4 / 2**30  # what full attention would need if it built its logits
    row = {"case": f"{len(spatial)}D {'x'.join(map(str, spatial))}", "batch": batch, "N": n, "device": device}
    row.update({"ours_ms": ours["ms"], "full_ms": full.get("ms", full.get("skipped"))})
    row["time_ours/full"] = ours["ms"] / full["ms"] if "ms" in full else "-"
    row.update({"ours_MB": ours["MB"], "full_MB": full.get("MB", full.get("skipped"))})
    row["mem_ours/full"] = ours["MB"] / full["MB"] if "ms" in full and full["MB"] > 0 else "-"
    row["full_logits_GB_if_built"] = logits_gb
    return row


def run(quick: bool = False, *, threads: int | None = None, full_attention_gb: float = 8.0) -> list[dict]:
    """Benchmark rows (one per case and device): times in ms, peaks in MiB, ratios ours / full."""
    threads = threads or torch.get_num_threads()
    rows = []
    for spatial, batch in QUICK_CASES if quick else CASES:
        repeats = 3 if math.prod(spatial) <= 4096 else 1
        results = {}
        for method in ("ours", "full"):
            cap = int(full_attention_gb * 2**30) if method == "full" else 0
            spec = dict(method=method, spatial=spatial, batch=batch, threads=threads, cap_bytes=cap)
            timed = _in_subprocess({**spec, "repeats": repeats}, timeout=1800, for_memory=False)
            peak = _in_subprocess({**spec, "repeats": 1}, timeout=1800, for_memory=True)
            results[method] = {"ms": timed.get("ms"), "MB": peak.get("MB")}
            if "skipped" in timed or "skipped" in peak:
                results[method] = {"skipped": timed.get("skipped") or peak.get("skipped")}
        if "skipped" in results["ours"]:
            raise RuntimeError(f"neighbourhood attention failed at {spatial}: {results['ours']['skipped']}")
        rows.append(_row(spatial, batch, "cpu", results["ours"], results["full"]))
    if torch.cuda.is_available():
        for spatial, batch in QUICK_CASES if quick else CASES:
            ours = measure("ours", spatial, batch, "cuda", repeats=5)
            try:
                full = measure("full", spatial, batch, "cuda", repeats=5)
            except torch.OutOfMemoryError:
                full = {"skipped": "out of GPU memory"}
            torch.cuda.empty_cache()
            rows.append(_row(spatial, batch, "cuda", ours, full))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small cases only")
    parser.add_argument("--out", default=None, help="markdown file to write the table to")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--full-attention-gb", type=float, default=8.0, help="memory cap for full attention")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return
    rows = run(args.quick, threads=args.threads, full_attention_gb=args.full_attention_gb)
    text = (
        f"Neighbourhood attention (kernel {KERNEL}) vs full attention (SDPA), forward + backward, "
        f"heads {HEADS}, head_dim {HEAD_DIM}, float32.\n\nMachine: {machine_description()}"
        f"{f' (benchmark set {args.threads} threads)' if args.threads else ''}\n\n{markdown_table(rows)}"
    )
    publish(text, args.out)


if __name__ == "__main__":
    main()
