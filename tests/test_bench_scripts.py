"""Every script in bench/ still loads: the names it imports from its sibling scripts and the product exist (a
renamed constant once broke one that no test ran). Loaded, not run: no server starts and no main() is called."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_bench_script_loads():
    scripts = sorted(str(path) for path in (REPO / "bench").glob("*.py"))
    check = ("import runpy, sys\nsys.path.insert(0, 'bench')\nfailed = []\n"
             "for script in sys.argv[1:]:\n"
             "    try:\n        runpy.run_path(script, run_name='loaded')\n"
             "    except Exception as exc:\n        failed.append(f'{script}: {type(exc).__name__}: {exc}')\n"
             "print('\\n'.join(failed))\nsys.exit(1 if failed else 0)\n")
    done = subprocess.run([sys.executable, "-c", check, *scripts], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert len(scripts) > 10
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
