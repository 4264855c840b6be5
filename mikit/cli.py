"""The `mikit` command: `mikit build [--check]`, `mikit grade PATH [--json]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _build(args: argparse.Namespace) -> int:
    from mikit.build import build

    stale = build(check=args.check)
    if args.check and stale:
        names = ", ".join(str(p) for p in stale)
        print(f"out of sync with solutions/: {names}; run `mikit build` and commit the result.")
        return 1
    print(f"{len(stale)} exercise notebook(s) {'stale' if args.check else 'written'}.")
    return 0


def _grade(args: argparse.Namespace) -> int:
    from mikit.grading import GradingError, grade

    try:
        report = grade(Path(args.path), reference=args.reference, cell_timeout=args.timeout)
    except GradingError as error:
        print(f"mikit grade: {error}", file=sys.stderr)
        return 2
    print(report.to_json() if args.json else report.to_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mikit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="write notebooks/ (exercises) from solutions/")
    b.add_argument("--check", action="store_true", help="exit 1 if notebooks/ is out of sync")
    b.set_defaults(run=_build)

    g = sub.add_parser("grade", help="execute a copy of a notebook and report points per exercise")
    g.add_argument("path", help="the student's .ipynb file (it is not modified)")
    g.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    g.add_argument(
        "--reference", type=Path, help="released exercise notebook (default: the one named in the submission's metadata)"
    )
    g.add_argument("--timeout", type=int, default=300, help="seconds allowed per cell (default 300)")
    g.set_defaults(run=_grade)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
