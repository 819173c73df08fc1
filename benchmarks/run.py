"""Run the benchmarks: every ``bench_*.py`` here, or those named on the command line.

Each benchmark is a script run in its own process (so peak-memory figures are its own)
that prints a Markdown block ready for docs/benchmarks.md.

    scripts/bench              # all
    scripts/bench import       # benchmarks/bench_import.py only
    scripts/bench import -- --rows 100000   # arguments after -- go to each script
"""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).parent


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    names = argv or sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    print(
        f"# machine: {platform.node()} {platform.machine()}, {_cpus()} CPUs, Python {platform.python_version()}"
    )
    print(f"# date: {datetime.now(UTC).isoformat(timespec='seconds')}")
    status = 0
    for name in names:
        script = HERE / f"bench_{name}.py"
        if not script.exists():
            print(f"no benchmark named {name!r}", file=sys.stderr)
            return 2
        print(f"\n## {name}\n", flush=True)
        status |= subprocess.call([sys.executable, str(script), *extra])
    return status


def _cpus() -> str:
    import os

    return str(os.cpu_count())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
