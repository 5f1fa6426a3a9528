"""The one experiment runner of the benchmarks: a config dataclass is the CLI (:func:`option`, :func:`parse`), a
job grid runs in a process pool (:meth:`Runner.run`; one fresh process per job when side by side), finished jobs
are reused from the JSON of an earlier run with the same settings (``--reuse``), and the JSON is rewritten after
every job from the benchmark's ``document`` hook, so a partial result survives a kill."""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import copy
import hashlib
import json
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import MISSING, asdict, field, fields
from pathlib import Path
from typing import Any

from benchmarks.harness.output import RESULTS, write_json

__all__ = ["Runner", "as_dict", "config_of", "key_of", "keyed", "option", "parse", "pool", "quick"]


def option(default: Any, *, quick: Any = MISSING, help: str | None = None, key: str = "", **cli: Any) -> Any:
    """A config field: its value under ``--quick``, its ``--flag`` help and argparse keywords (``choices``, ``type``;
    ``cli=False``: no flag), and ``key``: the names of the keys it is part of (``"pretrain run"``, :func:`keyed`)."""
    meta = {"quick": quick, "help": help, "key": key.split(), "cli": cli}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def quick(cls: type) -> dict[str, Any]:
    """The ``--quick`` values of the fields of ``cls`` that have one."""
    return {f.name: f.metadata["quick"] for f in fields(cls) if f.metadata.get("quick", MISSING) is not MISSING}


def keyed(cfg: Any, key: str) -> dict[str, Any]:
    """The fields of ``cfg`` tagged ``key``: what a cached checkpoint or a reused job must match."""
    return {f.name: getattr(cfg, f.name) for f in fields(cfg) if key in f.metadata.get("key", ())}


def key_of(blob: Any, n: int = 12) -> str:
    """A short hash of ``blob`` (JSON, sorted keys)."""
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:n]


def config_of(cls: type, saved: dict[str, Any]) -> Any:
    """``cls`` from its ``asdict`` (as read back from JSON: lists become tuples again)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in names})


def parse(
    cls: type, argv: list[str] | None, doc: str, name: str, flags: Callable[[Any], None] | None = None
) -> tuple[Any, argparse.Namespace]:
    """``(config, args)`` from the command line: every field of ``cls`` is a ``--flag`` (tuples take several
    values, booleans none), beside ``--quick`` (every field's quick value), ``--out`` (default
    ``results/<name>.json``; quick: a temp file), ``--reuse``, ``--no-plot``, ``--cache`` and ``--summarize-only``;
    ``flags(parser)`` adds more."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds (tiny model, few steps)")
    parser.add_argument("--out", type=Path, help="JSON path (default results/<name>.json; --quick: a temp file)")
    parser.add_argument("--reuse", action="store_true", help="keep the jobs already in --out made with these settings")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--cache", type=Path, help="folder of the cached checkpoints (default results/cache)")
    parser.add_argument("--summarize-only", action="store_true", help="run nothing: recompute the summary of --out")
    for f in fields(cls):
        cli = dict(f.metadata.get("cli", {}))
        if cli.pop("cli", True) is False or isinstance(f.default, dict) or f.default_factory is not MISSING:
            continue
        flag, kw = "--" + f.name.replace("_", "-"), {"help": f.metadata.get("help"), "default": None, **cli}
        if isinstance(f.default, bool):
            parser.add_argument(flag, action="store_true", **{k: v for k, v in kw.items() if k != "default"})
        elif isinstance(f.default, tuple):
            parser.add_argument(flag, nargs="+", type=kw.pop("type", type(f.default[0]) if f.default else str), **kw)
        else:
            parser.add_argument(flag, type=kw.pop("type", type(f.default)), **kw)
    if flags:
        flags(parser)
    args = parser.parse_args(argv)
    cfg = cls(**quick(cls)) if args.quick else cls()
    for f in fields(cls):
        value = getattr(args, f.name, None)
        if value is not None and value is not False:
            setattr(cfg, f.name, tuple(value) if isinstance(value, list) else value)
    tmp = Path(tempfile.gettempdir())
    args.out = args.out or (tmp / f"{name}_quick.json" if args.quick else RESULTS / f"{name}.json")
    args.cache = args.cache or (tmp / f"{name}_quick_cache" if args.quick else RESULTS / "cache")
    return cfg, args


def pool(fn: Callable[[Any], Any], jobs: Iterable[Any], workers: int, fresh: bool = False) -> Iterable[tuple]:
    """``(job, fn(job))`` as they finish: in this process one after the other (``workers`` ≤ 1, not ``fresh``),
    else ``workers`` at a time, each job in a fresh process (spawned, one job per process)."""
    jobs = list(jobs)
    if workers <= 1 and not fresh:
        yield from ((job, fn(job)) for job in jobs)
        return
    ctx = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(max(1, workers), mp_context=ctx, max_tasks_per_child=1) as ex:
        pending = {ex.submit(fn, job): job for job in jobs}
        for fut in futures.as_completed(pending):
            yield pending[fut], fut.result()


class Runner:
    """One benchmark's run: its rows (those of an earlier JSON at ``args.out`` kept with ``--reuse``, where the
    fields tagged ``match`` agree and ``keep(row)``), the job grid run through :func:`pool`, and the JSON rewritten
    from ``document(runner)`` after every job.

    Raises:
        SystemExit: on ``--reuse`` of a result measured with other settings.
    """

    def __init__(
        self,
        cfg: Any,
        args: argparse.Namespace,
        document: Callable[[Runner], dict[str, Any]],
        rows: str = "runs",
        match: str = "run",
        keep: Callable[[dict[str, Any]], bool] = lambda row: True,
    ) -> None:
        self.cfg, self.args, self.document, self.key = cfg, args, document, rows
        self.rows: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        if getattr(args, "reuse", False) and args.out.exists():
            old = json.loads(args.out.read_text())
            now, saved = keyed(cfg, match), old["conditions"]["config"]
            differ = [k for k, v in now.items() if json.dumps(saved.get(k)) != json.dumps(v)]
            if differ:
                raise SystemExit(f"--reuse: {args.out} was measured with other settings ({differ}); drop --reuse.")
            self.rows = [r for r in old[rows] if keep(r)]
            self.started -= old["conditions"].get("wall_seconds", 0.0) if self.rows else 0.0

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def done(self, *names: str) -> set[tuple[Any, ...]]:
        return {tuple(r[n] for n in names) for r in self.rows}

    def run(
        self, fn: Callable[[dict[str, Any]], dict[str, Any]], jobs: list[dict[str, Any]], by: tuple[str, ...], say: str
    ) -> None:
        """Run the jobs whose ``by`` values no row has yet (``cfg.workers`` side by side), printing ``say`` formatted
        with each row and rewriting the JSON after each."""
        finished = self.done(*by)
        todo = [j for j in jobs if tuple(j[n] for n in by) not in finished]
        for _, row in pool(fn, todo, getattr(self.cfg, "workers", 1)):
            self.rows.append(row)
            print(say.format(**row), flush=True)
            self.write()

    def write(self) -> dict[str, Any]:
        result = self.document(self)
        write_json(self.args.out, result)
        return result

    def finish(self, result: dict[str, Any] | None = None, plot: Callable[[Path], bool] | None = None) -> None:
        """Write ``result`` (default: the document), the plot beside it (``--no-plot``: none) and say where."""
        result = result if result is not None else self.document(self)
        write_json(self.args.out, result)
        png = self.args.out.with_suffix(".png")
        if plot is not None and not getattr(self.args, "no_plot", False) and plot(png):
            print(f"wrote {png}")
        print(f"wrote {self.args.out} in {self.seconds:.0f} s; tables: python -m benchmarks.tables", flush=True)


def as_dict(cfg: Any, drop: tuple[str, ...] = ("extra",)) -> dict[str, Any]:
    """``asdict(cfg)`` without the fields ``drop``."""
    return {k: v for k, v in asdict(cfg).items() if k not in drop}
