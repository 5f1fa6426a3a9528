"""``python -m benchmarks.tables``: rewrite the generated tables of the README and docs/RESULTS.md from the JSON;
``--check``: change nothing, print what differs and exit 1 if anything does."""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from benchmarks.tables import generate

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a table differs from its JSON")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    stale = []
    for doc, (now, generated) in generate(args.root).items():
        if now == generated:
            continue
        stale.append(doc)
        if args.check:
            diff = difflib.unified_diff(now.splitlines(), generated.splitlines(), f"{doc} (now)", f"{doc} (JSON)")
            print("\n".join(diff), end="\n\n")
        else:
            (args.root / doc).write_text(generated)
            print(f"rewrote the tables of {doc}")
    if args.check and stale:
        print(f"tables out of date in {stale}: run python -m benchmarks.tables", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
