"""examples/ run as a user runs them (a subprocess, tiny sizes) and finish with samples."""
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("sklearn")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("script,args", [
    ("pfgm_train.py", []),
    ("edm_pfgmpp_train.py", ["--D", "128"]),
    ("edm_pfgmpp_train.py", ["--D", "inf", "--ref", "512"]),
    ("custom_psi_train.py", []),
    ("reflow_digits.py", ["--pairs", "256"]),
])
def test_example_runs(script, args):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), "--iters", "30", "--samples", "32",
                        *args], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r"samples: \(32, 64\).*sliced W2 to held-out digits ([0-9.]+)", r.stdout)
    assert m, r.stdout[-1000:]
    assert 0 < float(m.group(1)) < 1e3  # finite samples (quality at real sizes: tests/test_demo.py)
