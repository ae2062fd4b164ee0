"""The ``overfit`` command: a thin shell over :mod:`overfit.scenario`.

    overfit run SCENARIO.toml [...] [--out DIR] [--set section.key=value ...] [--force]
    overfit gallery [--scenarios DIR] [--out DIR] [--set ...] [--force]
    overfit list [--scenarios DIR]
    overfit validate SCENARIO.toml [...] [--set section.key=value ...]
    overfit options
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from overfit import scenario as scenarios
from overfit.schema import describe


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="overfit", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run scenario files")
    run.add_argument("files", nargs="+", type=Path)
    gallery = sub.add_parser("gallery", help="run every scenario and write an index page")
    gallery.add_argument("--scenarios", type=Path, default=Path("scenarios"))
    for p in (run, gallery):
        p.add_argument("--out", type=Path, default=Path("plots"), help="output folder")
        p.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override a field, e.g. train.epochs=10")
        p.add_argument("--force", action="store_true",
                       help="recompute and replace existing results (default: skip results "
                            "of the same config and versions, refuse to replace others)")
    listing = sub.add_parser("list", help="list the scenario files")
    listing.add_argument("--scenarios", type=Path, default=Path("scenarios"))
    validate = sub.add_parser("validate", help="check scenario files without running them")
    validate.add_argument("files", nargs="+", type=Path)
    validate.add_argument("--set", dest="overrides", action="append", default=[],
                          metavar="KEY=VALUE", help="check with this override, as run would")
    sub.add_parser("options", help="print every scenario option as a Markdown table")
    return parser


def _load(path: Path, overrides: Sequence[str] = ()) -> scenarios.Scenario:
    try:
        return scenarios.load(path, overrides)
    except ValueError as e:
        message = str(e)
        raise ValueError(message if message.startswith(str(path)) else f"{path}: {e}") from None


def _run(files: Sequence[Path], out: Path, overrides: Sequence[str], force: bool
         ) -> tuple[list[Path], list[str]]:
    """Run every scenario; one that fails is reported and the others still run.

    Returns the finished folders and one error line per failed scenario.
    """
    loaded = [_load(path, overrides) for path in files]  # every typo before any work
    names = [sc.name for sc in loaded]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"scenario names {twice} appear more than once: each names its "
                         "output folder, so one would overwrite the other.")
    folders, failed = [], []
    for path, sc in zip(files, loaded):
        start = time.perf_counter()
        if not force and scenarios.cached(sc, out):
            print(f"{sc.name}: up to date (same config and versions; --force to recompute)")
            folders.append(out / sc.name)
            continue
        try:
            folder = scenarios.run(sc, out, force=force)
        except Exception as e:  # noqa: BLE001 - one scenario's failure must not stop the rest
            failed.append(f"{path} ({sc.name}): {type(e).__name__}: {e}")
            if not isinstance(e, ValueError | FloatingPointError | OSError):  # a bug
                traceback.print_exc()
            print(f"overfit: error: {failed[-1]}", file=sys.stderr, flush=True)
            continue
        print(f"{sc.name}: {time.perf_counter() - start:.1f} s -> {folder}", flush=True)
        folders.append(folder)
    return folders, failed


def write_index(out: Path, folders: Sequence[Path]) -> Path:
    """An HTML page showing every figure of every scenario folder."""
    import json

    parts = ["<!doctype html><meta charset='utf-8'><title>overfit gallery</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
             "img{max-width:100%}</style><h1>overfit scenario gallery</h1>"]
    for folder in folders:
        meta = json.loads((folder / "results.json").read_text())
        sc = meta["scenario"]
        parts.append(f"<h2>{html.escape(sc['name'])}</h2><p>{html.escape(sc['description'])}</p>")
        parts += [f"<img src='{folder.name}/{f}' alt='{html.escape(f)}'>" for f in meta["figures"]]
        parts.append(f"<p><a href='{folder.name}/results.csv'>results.csv</a> · "
                     f"{meta['wall_time_s']} s on {html.escape(meta['environment']['device'])}</p>")
    index = out / "index.html"
    tmp = index.with_suffix(".html.part")
    tmp.write_text("\n".join(parts))
    tmp.replace(index)
    return index


def _compile_cache() -> None:
    """Turn on JAX's persistent compilation cache for the command (not for the library).

    A gallery rerun then loads its large programs instead of compiling them again.
    ``JAX_COMPILATION_CACHE_DIR`` picks the folder; ``OVERFIT_NO_COMPILE_CACHE=1`` (or
    true, yes, on) opts out.
    """
    opt_out = os.environ.get("OVERFIT_NO_COMPILE_CACHE", "").strip().lower()
    if opt_out not in ("", "0", "false", "no", "off") or os.environ.get(
            "JAX_COMPILATION_CACHE_DIR"):
        return
    import jax

    jax.config.update("jax_compilation_cache_dir",
                      str(Path.home() / ".cache" / "overfit" / "jax-compile"))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("run", "gallery"):
        _compile_cache()
        log = logging.getLogger("overfit")  # e.g. "... members loaded from stored chunks"
        if not log.handlers:
            log.addHandler(logging.StreamHandler(sys.stderr))
            log.setLevel(logging.INFO)
    failed: list[str] = []
    try:
        if args.command == "run":
            failed = _run(args.files, args.out, args.overrides, args.force)[1]
        elif args.command == "gallery":
            files = _scenario_files(args.scenarios)
            folders, failed = _run(files, args.out, args.overrides, args.force)
            print(f"gallery: {write_index(args.out, folders)}")
        elif args.command == "list":
            failed = _check_files(_scenario_files(args.scenarios), (), describe_each=True)
        elif args.command == "validate":
            failed = _check_files(args.files, args.overrides, describe_each=False)
        else:
            print("| key | type | default | allowed / meaning |\n|---|---|---|---|")
            for row in describe(scenarios.Scenario):
                print("| " + " | ".join(r.replace("|", "\\|") for r in row) + " |")
    except BrokenPipeError:  # `overfit options | head`: the reader took what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if args.command in ("run", "gallery"):  # ... but here work was left undone
            print("overfit: output closed; stopped before every scenario ran.",
                  file=sys.stderr)
            return 141
        return 0
    except (ValueError, OSError) as e:
        print(f"overfit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = ""
        if args.command in ("run", "gallery"):  # --force recomputes finished scenarios
            kept = "sweep chunks" if args.force else "finished scenarios and sweep chunks"
            resume = f": stored {kept} are kept, and the same command resumes from them"
        print(f"overfit: interrupted{resume}.", file=sys.stderr)
        return 130
    if failed:
        print(f"overfit: {len(failed)} scenario(s) failed:\n  " + "\n  ".join(failed),
              file=sys.stderr)
        return 2
    return 0


def _scenario_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.toml"))
    if not files:
        raise ValueError(f"no scenario files in {folder}/")
    return files


def _check_files(paths: Sequence[Path], overrides: Sequence[str], *, describe_each: bool
                 ) -> list[str]:
    """Load every file, printing its line (kind and title, or "ok") or its error; the
    files that failed. One bad file no longer hides the errors of the files after it."""
    failed = []
    for path in paths:
        try:
            sc = _load(path, overrides)
        except (ValueError, OSError) as e:
            print(f"overfit: error: {e}", file=sys.stderr)
            failed.append(str(path))
            continue
        print(f"{path}  [{sc.kind}]  {sc.title}" if describe_each else f"{path}: ok")
    return failed


if __name__ == "__main__":
    sys.exit(main())
