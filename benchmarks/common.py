"""Shared helpers for the benchmark scripts: machine description and markdown tables."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys

import torch


def machine_description() -> str:
    """One line naming the machine the numbers were taken on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    parts = [
        f"CPU: {cpu}, {os.cpu_count()} cores",
        f"torch {torch.__version__}",
        f"{torch.get_num_threads()} threads",
    ]
    if torch.cuda.is_available():
        parts.append(f"GPU: {torch.cuda.get_device_name(0)}")
    return "; ".join(parts)


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Render dict rows as a markdown table (floats with 4 significant digits)."""
    if not rows:
        return "(no rows)\n"
    columns = columns or list(rows[0].keys())

    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def publish(text: str, out: str | None) -> None:
    """Print a benchmark's markdown and, when ``out`` is given, also write it to that file."""
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text)


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_subprocess(script: str, args: list[str]) -> dict:
    """Run ``python script *args`` in a fresh process (its own peak memory) and parse the JSON object it prints
    on its last line."""
    out = subprocess.run([sys.executable, script, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
