"""Helpers shared by the benchmark scripts: timing, environment report, tables.

Nothing here imports JAX, PyTorch or scikit-learn at module level, so a script
can report a missing peer library as "skipped (not installed)" and go on.
"""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

SKIPPED = "skipped (not installed)"


def optional_import(name: str) -> ModuleType | None:
    """The module, or None when it (or one of its own imports) is missing."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def n_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict[str, str]:
    """Versions and hardware, as printed at the top of every benchmark."""
    info = {
        "date": datetime.date.today().isoformat(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": f"{cpu_model()}, {n_cores()} cores (os.cpu_count={os.cpu_count()})",
    }
    for name in ("jax", "jaxlib", "optax", "numpy", "sklearn", "torch"):
        mod = optional_import(name)
        info[name] = getattr(mod, "__version__", "?") if mod else "not installed"
    info["load"] = cpu_load()
    jax = optional_import("jax")
    if jax is not None:
        info["jax devices"] = ", ".join(str(d) for d in jax.devices())
    return info


def cpu_load() -> str:
    """1-minute load average and CPU pressure: other work on the machine skews timings."""
    parts = []
    try:
        with open("/proc/loadavg") as f:
            parts.append("loadavg(1 min) " + f.read().split()[0])
    except OSError:
        pass
    pressure = cpu_pressure()
    if pressure is not None:
        parts.append(f"cpu pressure(10 s) {pressure:g}%")
    return ", ".join(parts) or "unknown"


def cpu_pressure() -> float | None:
    """Share of the last 10 s in which runnable tasks waited for a CPU (Linux PSI), in %."""
    try:
        with open("/proc/pressure/cpu") as f:
            return float(f.readline().split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, result)`` of one call; ``fn`` must block on its own result."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (readable as plain text too); floats keep their formatting."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)
