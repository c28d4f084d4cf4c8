"""Which Python processes of a measured test run measure coverage: those that run wodmail.

scripts/test puts this folder on PYTHONPATH when it measures coverage, and Python imports
this module as it starts. It starts coverage (the checkout's [tool.coverage.*], its data
folder) in a process that runs wodmail (`-m wodmail`, `-m wodmail.keeper`, the `wodmail`
script) or is a pytest-xdist worker, and in no other: the JupyterHub, ansible-playbook and
mypy processes the tests start would only pay the tracer's cost and record nothing. It
decides from the command line alone, as the keeper gets a scrubbed environment (PATH, LANG,
LC_ALL and PYTHONPATH); coverage's own `patch = subprocess` would pass the request through
the environment, to every Python process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: How execnet starts a pytest-xdist worker (execnet.gateway_io.popen_bootstrapline).
XDIST_WORKER = "import sys;exec(eval(sys.stdin.readline()))"


def runs_wodmail(argv: list[str]) -> bool:
    """Whether the command line `argv` (without the interpreter) is one to measure."""
    if XDIST_WORKER in argv:
        return True
    for index, arg in enumerate(argv):
        if arg == "-m":
            module = argv[index + 1] if index + 1 < len(argv) else ""
            return module == "wodmail" or module.startswith("wodmail.")
        if not arg.startswith("-"):
            return Path(arg).name == "wodmail"  # the script (`coverage run` is not measured twice)
    return False


def _start() -> None:
    checkout = Path(__file__).resolve().parents[2]
    os.environ["COVERAGE_PROCESS_START"] = str(checkout / "pyproject.toml")
    os.environ["COVERAGE_FILE"] = str(checkout / ".coverage-data" / "data")
    try:
        import coverage

        coverage.process_startup()
    except ImportError:
        pass  # a Python without coverage (another venv): unmeasured
    finally:
        # Read once: the process's children decide for themselves, by their command line.
        del os.environ["COVERAGE_PROCESS_START"], os.environ["COVERAGE_FILE"]


if runs_wodmail(sys.orig_argv[1:]):
    _start()
