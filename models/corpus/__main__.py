"""``python -m models.corpus build|list|plan``: build the exporter corpus, list a built one, or the plan."""

from __future__ import annotations

import argparse
import sys

from models.corpus.manifest import DEFAULT_OUT, FOLDER_VARIABLE, load_folders, load_manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.corpus", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the missing or stale entries (needs the [corpus] extra)")
    build.add_argument(
        "--out", default=None, help=f"output folder (default: ${FOLDER_VARIABLE} or {DEFAULT_OUT})"
    )
    build.add_argument(
        "--only", nargs="+", metavar="NAME", help="jobs, entries, export folders or architectures to build"
    )
    build.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    build.add_argument("--force", action="store_true", help="rebuild even the up-to-date jobs")
    listing = commands.add_parser("list", help="list the entries of a built corpus")
    listing.add_argument(
        "--out", default=None, help=f"corpus folder (default: ${FOLDER_VARIABLE} or {DEFAULT_OUT})"
    )
    listing.add_argument("--status", choices=("ok", "export-failed", "run-failed"), help="only this status")
    listing.add_argument("--markdown", action="store_true", help="a Markdown table (as in docs/corpus.md)")
    commands.add_parser("plan", help="list the jobs and the entries they will build (imports no torch)")
    args = parser.parse_args(argv)

    if args.command == "plan":
        from models.corpus.folders import FOLDER_JOBS
        from models.corpus.plan import JOBS

        for job in JOBS:
            for entry in job.entries():
                print(f"{entry.name:42} {job.exporter:11} {entry.variant:24} job={job.name}")
        for folder in FOLDER_JOBS:
            print(f"{folder.name:42} {'optimum':11} {folder.variant:24} folder ({folder.task})")
        return 0
    if args.command == "list":
        from models.corpus.listing import describe, describe_folders, folders_markdown_table, markdown_table

        try:
            entries = load_manifest(args.out, status=args.status)
            folders = load_folders(args.out, status=args.status)
        except FileNotFoundError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if args.markdown:
            lines = [*markdown_table(entries), "", *folders_markdown_table(folders)]
        else:
            lines = [*describe(entries), *describe_folders(folders)]
        for line in lines:
            print(line)
        return 0
    from models.corpus.builder import build as build_corpus
    from models.corpus.folders import build_folders, split_only

    try:
        graph_names, folder_names = split_only(args.only)
        entries = []
        if graph_names is None or graph_names:
            entries = build_corpus(args.out, only=graph_names, jobs=args.jobs, force=args.force)
        folders = []
        if folder_names is None or folder_names:
            folders = build_folders(args.out, only=folder_names, jobs=args.jobs, force=args.force)
    except (KeyError, RuntimeError) as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    return 0 if entries or folders else 1


if __name__ == "__main__":
    sys.exit(main())
