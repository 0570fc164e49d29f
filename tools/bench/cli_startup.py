"""Wall time of ``mpcompile --help`` and of each subcommand's ``--help`` against a 0.5 s budget.

Each command runs in a fresh interpreter (what a user's shell does), best of ``--repeat`` runs,
so the numbers include Python's own start-up (about 0.2 s here). ``--help`` must not import
onnx, onnx_ir, numpy or onnxruntime; tests/test_cli_startup.py checks that structurally.

    python tools/bench/cli_startup.py              # best of 5
    python tools/bench/cli_startup.py --repeat 10

Exit status 1 when a command is over the budget.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUDGET_S = 0.5
# What the installed ``mpcompile`` console script runs, without depending on where it was installed.
ENTRY = "import sys; from mpcompile.cli import main; sys.exit(main())"


def subcommands() -> list[str]:
    sys.path.insert(0, str(ROOT))
    from mpcompile.cli import cli

    return sorted(cli.commands)


def best_time(args: list[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", ENTRY, *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command; the best counts")
    options = parser.parse_args()
    baseline = best_time_python(options.repeat)
    rows = [["--help"]] + [[name, "--help"] for name in subcommands()]
    over = 0
    print(f"python -c pass: {baseline:.3f} s (interpreter start-up, included below)")
    print(f"{'command':<34} {'best [s]':>9}  budget {BUDGET_S:.1f} s")
    for args in rows:
        seconds = best_time(args, options.repeat)
        verdict = "ok" if seconds < BUDGET_S else "OVER"
        over += verdict == "OVER"
        print(f"{'mpcompile ' + ' '.join(args):<34} {seconds:>9.3f}  {verdict}")
    return 1 if over else 0


def best_time_python(repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        best = min(best, time.perf_counter() - start)
    return best


if __name__ == "__main__":
    sys.exit(main())
