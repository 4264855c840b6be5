"""The `mikit` command: `mikit build [--check]`, `mikit grade PATH... [--json] [--csv F] [--feedback DIR]`,
`mikit project new|check|report`, `mikit projects [filters]`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _build(args: argparse.Namespace) -> int:
    from mikit.build import BuildError, build

    try:
        stale = build(check=args.check, force=args.force)
    except BuildError as error:
        print(f"mikit build: {error}", file=sys.stderr)
        return 1
    if args.check and stale:
        names = ", ".join(str(p) for p in stale)
        print(f"out of sync with solutions/: {names}; run `mikit build` and commit the result.")
        return 1
    print(f"{len(stale)} exercise notebook(s) {'stale' if args.check else 'written'}.")
    return 0


def _grade(args: argparse.Namespace) -> int:
    from mikit import grading

    try:
        if len(args.paths) == 1 and args.paths[0].is_file() and not (args.csv or args.feedback):
            report = grading.grade(args.paths[0], reference=args.reference, cell_timeout=args.timeout, seed=args.seed)
            print(report.to_json() if args.json else report.to_text())
            return 0
        results = grading.grade_class(
            args.paths, args.reference, jobs=args.jobs, cell_timeout=args.timeout,
            notebook_timeout=args.notebook_timeout, memory_gb=args.memory_gb, id_pattern=args.id_pattern,
            seed=args.seed,
        )
    except grading.GradingError as error:
        print(f"mikit grade: {error}", file=sys.stderr)
        return 2
    if args.csv:
        grading.write_csv(results, args.csv)
    if args.feedback:
        grading.write_feedback(results, args.feedback)
    if args.json:
        rows = [{"student": r.student, "file": str(r.path), "problem": r.problem,
                 "report": json.loads(r.report.to_json()) if r.report else None} for r in results]
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        width = max(len(r.student) for r in results)
        for r in results:
            score = f"{r.report.total:g}/{r.report.max_total:g}" if r.report else "not graded"
            print(f"{r.student:<{width}}  {score}  {r.problem}".rstrip())
    return 0


def _project(args: argparse.Namespace) -> int:
    from mikit.project import run, starter

    try:
        if args.action == "new":
            folder = starter.new(args.name, model=args.model, technique=args.technique, task=args.task)
            print(f"created {folder}/: project.toml, project.ipynb, report.md, results/. Open project.ipynb and run it.")
        elif args.action == "check":
            verdicts = run.check(args.folder, timeout=args.timeout)
            width = max(map(len, verdicts))
            for name, verdict in verdicts.items():
                print(f"{name:<{width}}  {verdict}")
            bad = [name for name, verdict in verdicts.items() if verdict != "reproduced"]
            print(f"{len(verdicts) - len(bad)} of {len(verdicts)} results reproduced.")
            return 1 if bad else 0
        else:
            md, html = run.report(args.folder)
            print(f"wrote {md} and {html}")
    except ModuleNotFoundError as error:  # nbformat, nbclient, nbconvert: JupyterLab and Colab have them
        print(f"mikit project {args.action} needs Jupyter's notebook tools ({error.name} is missing): "
              "pip install 'mikit[lab]'.", file=sys.stderr)
        return 2
    except (ValueError, FileExistsError, FileNotFoundError, RuntimeError) as error:
        print(f"mikit project {args.action}: {error}", file=sys.stderr)
        return 2
    return 0


def _projects(args: argparse.Namespace) -> int:
    from mikit.project import catalogue

    try:
        if args.show:
            idea = catalogue.find(args.show)
            print(catalogue.markdown([idea]).split("\n", 4)[-1])
            return 0
        found = catalogue.ideas(args.category, args.technique, args.model, args.difficulty)
    except ValueError as error:
        print(f"mikit projects: {error}", file=sys.stderr)
        return 2
    if args.markdown:
        print(catalogue.markdown(found))
        return 0
    for idea in found:
        print(f"{idea.id:30s} {idea.difficulty}  {idea.category:34s} {idea.title}")
    print(f"{len(found)} of {len(catalogue.IDEAS)} ideas; `mikit projects --show ID` prints one with its starter cell.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mikit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="write notebooks/ (exercises) from solutions/")
    b.add_argument("--check", action="store_true", help="exit 1 if notebooks/ is out of sync")
    b.add_argument("--force", action="store_true", help="overwrite edited exercise notebooks, keeping NAME.ipynb.bak")
    b.set_defaults(run=_build)

    g = sub.add_parser("grade", help="execute copies of notebooks and report points per exercise")
    g.add_argument("paths", nargs="+", type=Path, help="students' .ipynb files or folders of them (never modified)")
    g.add_argument("--json", action="store_true", help="print JSON for scripts")
    g.add_argument(
        "--reference", type=Path, help="released exercise notebook (default: the one named in the submission's metadata)"
    )
    g.add_argument("--timeout", type=int, default=300, help="seconds allowed per cell (default 300)")
    g.add_argument("--csv", type=Path, help="write one row per submission to this CSV file")
    g.add_argument("--feedback", type=Path, help="write <student>.md and .html feedback into this folder")
    g.add_argument("-j", "--jobs", type=int, default=1, help="submissions graded at once (default 1)")
    g.add_argument("--notebook-timeout", type=int, default=1800, help="seconds allowed per notebook (default 1800)")
    g.add_argument("--memory-gb", type=float, default=8.0, help="memory cap per submission in GiB (default 8)")
    g.add_argument("--seed", type=int, help="seed of the hidden tests' inputs (default: fresh each run; reports show it)")
    g.add_argument("--id-pattern", help="regular expression on the file name; its first group is the student id")
    g.set_defaults(run=_grade)

    p = sub.add_parser("project", help="start a research project, re-check its results, write its report")
    actions = p.add_subparsers(dest="action", required=True)
    n = actions.add_parser("new", help="create a project folder whose notebook runs as created")
    n.add_argument("name", help="the folder to create (letters, digits, - and _)")
    n.add_argument("--model", default="smollm2-135m", help="a model name (mikit.list_models()); default smollm2-135m")
    n.add_argument("--technique", default="patching", help="attention, patching, circuits or sae; default patching")
    n.add_argument("--task", help="greater-than, ioi or induction (default: ioi for an LM, induction for a zoo model)")
    for action, text in (("check", "re-run the notebook from a clean kernel; exit 1 unless every result reproduces"),
                         ("report", "fill report.md with the saved results; write report/report.md and .html")):
        a = actions.add_parser(action, help=text)
        a.add_argument("folder", nargs="?", default=".", type=Path, help="the project folder (default: here)")
        if action == "check":
            a.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell (default 600)")
    p.set_defaults(run=_project)

    c = sub.add_parser("projects", help="the catalogue of project ideas, filtered")
    c.add_argument("--category", help="e.g. 'circuits in the wild', 'training dynamics'")
    c.add_argument("--technique", help="attention, patching, circuits or sae")
    c.add_argument("--model", help="ideas that run on this model (offline or in full mode)")
    c.add_argument("--difficulty", type=int, choices=(1, 2, 3))
    c.add_argument("--show", metavar="ID", help="print one idea in full, with its starter cell")
    c.add_argument("--markdown", action="store_true", help="print the ideas as the Markdown page docs/projects.md")
    c.set_defaults(run=_projects)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
