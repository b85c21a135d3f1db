"""Every ``python -m callbacks... / datamodules...`` command the README documents starts without runpy's
``RuntimeWarning: '<module>' found in sys.modules after import of package ...`` (a package ``__init__`` that
imports the module run as ``__main__``, so it would run twice)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = sorted(set(re.findall(r"python -m ((?:callbacks|datamodules)(?:\.\w+)+)", (ROOT / "README.md").read_text())))

# as `python -W error::RuntimeWarning -m <name> --help` for each name, in one interpreter: the project's modules
# are forgotten between commands, so each starts as a fresh process would
_RUN_EACH = """
import runpy, sys, warnings
warnings.simplefilter("error", RuntimeWarning)
failures = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("callbacks", "datamodules", "zoo")]:
        del sys.modules[loaded]
    sys.argv = [name, "--help"]
    try:
        runpy.run_module(name, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    except RuntimeWarning as warning:
        failures.append(f"{name}: {warning}")
print("\\n".join(failures), file=sys.stderr)
sys.exit(bool(failures))
"""


def test_commands_are_found():
    assert {"callbacks.suite", "datamodules.shapesworld"} <= set(COMMANDS)


def test_documented_commands_start_without_runpy_warning():
    done = subprocess.run(
        [sys.executable, "-c", _RUN_EACH, *COMMANDS], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
