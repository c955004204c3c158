"""``python benchmarks/run.py`` and benchmarks/report.py: the scripts run end to end and write a report whose
tables and plots come from their JSON; bad arguments are refused. Nothing here asserts a speed or a goal's
verdict (a loaded machine fails timing goals): the tests check that the benchmarks run and report."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import report  # noqa: E402
import run as bench  # noqa: E402


def test_runs_every_script_and_reports(tmp_path):
    """The default run (every script at its CPU sizes, ~40 s on 2 cores): each writes its JSON and plot, and the
    report's tables quote the JSON rows."""
    path = bench.run(tmp_path, progress=False)
    text = path.read_text()
    for name in bench.NAMES:
        assert json.loads((tmp_path / f"{name}.json").read_text())["rows"], name
        assert (tmp_path / f"{name}.png").stat().st_size > 1000, name
    goals = [g for name in bench.NAMES for g in json.loads((tmp_path / f"{name}.json").read_text()).get("goals", [])]
    assert goals and "## Goals" in text
    for g in goals:  # quoted with the verdict the script wrote, whatever it is on this machine
        assert g["goal"] in text
    rows = json.loads((tmp_path / "ode_step.json").read_text())["rows"]
    # every measured row is in the report's table, with its median as measured
    for r in rows:
        assert f"| {r['call']} | {r['provider']} | {r['dtype']} | {r['median_ms']:.4g} |" in text


def test_report_from_rows(tmp_path):
    """Synthetic field rows: a skipped provider is listed with its reason and left out of the plot; goals are
    quoted."""
    base = dict(device="cpu", device_name="test cpu", torch="x", num_threads=2)
    rows = [dict(base, size="s1", B=2, R=4, d=8, provider="fastflow_torch", useful_flop=256.0, median_ms=1.5,
                 iqr_ms=0.1, peak_mem_bytes=2048, speedup_vs_official=120.0),
            dict(base, size="s2", B=4, R=4, d=8, provider="fastflow_torch", useful_flop=512.0, median_ms=2.5,
                 iqr_ms=0.1, peak_mem_bytes=4096),
            dict(base, size="s2", B=4, R=4, d=8, provider="official", useful_flop=512.0, skipped=True,
                 reason="would not fit: needs ~9 GiB")]
    goals = [dict(scope="CPU", goal="fast", status="PASS", detail="120x")]
    (tmp_path / "field.json").write_text(json.dumps(dict(rows=rows, goals=goals)))
    text = report.write_report(tmp_path).read_text()
    assert "Device: test cpu (cpu, 2 threads)" in text
    assert "**PASS** CPU: fast — 120x" in text
    assert "| s1 (2, 4, 8) | fastflow_torch | 1.5 | 0.1 | 2 KiB | 120× |" in text
    assert "| s2 (4, 4, 8) | official | - | - | - | - | would not fit: needs ~9 GiB |" in text
    assert (tmp_path / "field.png").is_file()


def test_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="only must name some of"):
        bench.run(tmp_path, only=("fields",))
    with pytest.raises(ValueError, match="device must be cpu or cuda"):
        bench.run(tmp_path, device="tpu")
    with pytest.raises(FileNotFoundError, match="no benchmark JSON"):
        report.write_report(tmp_path)
    r = subprocess.run([sys.executable, str(BENCH / "run.py"), "--only", "fields"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr
