"""Helpers shared by the benchmark scripts: timing, environment report, tables.

Nothing here imports JAX, PyTorch or scikit-learn at module level, so a script
can report a missing peer library as "skipped (not installed)" and go on.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import subprocess
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


def speed(ratio: float) -> str:
    """``peer time / overfit time`` in words that cannot be misread: "0.8x faster" was
    1.25x slower."""
    if ratio >= 1:
        return f"{ratio:.1f}x faster than"
    return f"{1 / ratio:.1f}x SLOWER than"


def run_child(cmd: Sequence[str], timeout: float) -> tuple[float, dict]:
    """``(wall seconds, the JSON on its last line of stdout)`` of a child process.

    A child that fails or hangs (concurrent LAPACK calls have hung on these CPUs)
    stops the benchmark with its own stderr, not a bare CalledProcessError.
    """
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else e.stderr or ""
        raise SystemExit(f"{' '.join(cmd[1:])}: no result after {timeout:g} s "
                         f"(hung?); its stderr:\n{err}") from None
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[1:])} failed ({proc.returncode}):\n{proc.stderr}")
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def write_json(path: str, payload: Any) -> None:
    """Write ``payload`` to ``path`` whole or not at all (a temporary file, then a rename)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def check_json_path(path: str | None) -> str | None:
    """An error for a ``--json`` path that could not be written, before the run, not after."""
    if path is None:
        return None
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        return f"--json {path}: folder {folder} does not exist or is not writable"
    return None
