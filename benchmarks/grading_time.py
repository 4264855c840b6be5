"""Where `mikit grade` spends its time on one notebook: notebook cells, check cells, hidden tests.

    python benchmarks/grading_time.py notebooks/03_activation_patching.ipynb             # an exercise notebook, offline
    python benchmarks/grading_time.py solutions/02_ioi.ipynb --full                      # full mode on tests/standins.py
    python benchmarks/grading_time.py notebooks/01_induction_heads.ipynb --threads 1     # torch threads in the kernel

Prints the grade's wall time split into the notebook's own cells (run in the kernel), the check cells
(also run in the kernel; for a kit notebook their verdict is not used, the hidden test's is) and the
hidden tests (run by the grader, calling the student's functions in the kernel), then the slowest cells.
`--threads N` sets OMP_NUM_THREADS/MKL_NUM_THREADS for the grader and its kernel, to compare thread
counts on one machine. `--full` grades as tests/test_full_mode.py does: MIKIT_MODE=full, the stand-ins
installed in the kernel (a first cell) and in this process; the stand-in GPT-2 is built once into
$MIKIT_STANDIN_CACHE (a temporary folder unless set).

Measured on the 2-core CI machine type (one thread, another job on the other core), exercise
notebooks: the hidden tests took 0.3-2.5 s of grades of 39-174 s; the rest is the notebooks' cells.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--full", action="store_true", help="full mode on the offline stand-ins of tests/standins.py")
    parser.add_argument("--threads", type=int, help="torch threads in the grader and its kernel")
    parser.add_argument("--top", type=int, default=12, help="how many of the slowest cells to print")
    args = parser.parse_args()
    if args.threads:  # before torch is imported, here and (inherited) in the kernel
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["MIKIT_MODE"] = "full" if args.full else os.environ.get("MIKIT_MODE", "offline")

    from nbclient import NotebookClient

    from mikit import grading
    from mikit.build import NOTEBOOKS

    path, reference = args.notebook.resolve(), NOTEBOOKS / args.notebook.name
    scratch = tempfile.TemporaryDirectory(prefix="mikit-grading-time-")
    if args.full:
        sys.path[:0] = [str(REPO / "tests"), str(REPO)]
        import standins
        import test_full_mode

        os.environ.setdefault(standins.CACHE_ENV, scratch.name)
        start = time.perf_counter()
        standins.gpt2_small()
        print(f"stand-in GPT-2 built or loaded in {time.perf_counter() - start:.1f} s (not counted below)")
        for module, attribute, standin in standins.seams():
            setattr(module, attribute, standin)
        folder = Path(scratch.name)
        path = test_full_mode.full_mode_copy(args.notebook.name, folder, folder / "cells.jsonl", folder / "finished")

    hidden_tests: list[tuple[str, float, str]] = []
    cells: list[tuple[float, str, str]] = []
    run_hidden, execute_cell = grading._run_hidden_test, NotebookClient.execute_cell

    def timed_hidden_test(exercise, run, folder, seed):
        start = time.perf_counter()
        passed, message = run_hidden(exercise, run, folder, seed)
        hidden_tests.append((exercise.check.__name__, time.perf_counter() - start, message))
        return passed, message

    def timed_cell(self, cell, index, **kwargs):
        start = time.perf_counter()
        try:
            return execute_cell(self, cell, index, **kwargs)
        finally:
            meta = cell.metadata.get("nbgrader", {})
            kind = "check" if meta.get("grade") and not meta.get("solution") else "cell"
            kind = "grader" if "mikit.hidden" in cell.source else kind  # the grader's own calls into the kernel
            text = " | ".join(line for line in cell.source.strip().splitlines() if not line.startswith("#"))
            cells.append((time.perf_counter() - start, kind, f"[{index}] {text[:100]}"))

    grading._run_hidden_test, NotebookClient.execute_cell = timed_hidden_test, timed_cell
    start = time.perf_counter()
    report = grading.grade(path, reference=reference)
    total = time.perf_counter() - start
    scratch.cleanup()

    by_kind = {kind: sum(s for s, k, _ in cells if k == kind) for kind in ("cell", "check", "grader")}
    hidden_s = sum(s for _, s, _ in hidden_tests)
    print(f"{args.notebook.name}: {report.total:g}/{report.max_total:g} points, graded in {total:.1f} s "
          f"(threads {os.environ.get('OMP_NUM_THREADS', 'default')}, mode {os.environ['MIKIT_MODE']})")
    print(f"  notebook cells {by_kind['cell']:7.1f} s\n  check cells    {by_kind['check']:7.1f} s\n"
          f"  hidden tests   {hidden_s:7.1f} s (of which {by_kind['grader']:.1f} s in the kernel)\n"
          f"  other          {total - by_kind['cell'] - by_kind['check'] - hidden_s:7.1f} s (kernel start, reading, restoring)")
    for name, seconds, message in hidden_tests:
        print(f"    {seconds:6.2f} s  hidden test {name}: {message[:70]}")
    print("slowest cells:")
    for seconds, kind, text in sorted(cells, reverse=True)[: args.top]:
        print(f"  {seconds:6.1f} s  {kind:6s} {text}")


if __name__ == "__main__":
    main()
