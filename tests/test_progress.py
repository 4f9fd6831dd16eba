"""Progress output fits where it goes: tqdm on a terminal; elsewhere plain lines, a few per minute, never a
carriage return."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time

from tqdm import tqdm

from pfpld.progress import DEFAULT_INTERVAL_S, INTERVAL_ENV, LineProgress, interval_from_env, progress

PFPLD = [sys.executable, "-m", "pfpld_app.cli"]


def stderr_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "\r" not in err
    return err.splitlines()


def test_without_a_terminal_a_line_per_interval_and_a_last_one(monkeypatch, capsys):
    monkeypatch.setenv(INTERVAL_ENV, "0")                 # every update is due
    with progress(total=3, desc="synth", unit="face") as bar:
        assert isinstance(bar, LineProgress)
        for _ in range(3):
            bar.update(1)
    lines = stderr_lines(capsys)
    assert len(lines) == 4 and all(line.startswith("synth: ") for line in lines)
    assert lines[0].startswith("synth: 1/3 face (33%)") and "s left" in lines[0]
    assert lines[-1].startswith("synth: 3/3 face (100%), done in ")


def test_a_fast_loop_writes_only_its_last_line(monkeypatch, capsys):
    monkeypatch.setenv(INTERVAL_ENV, "3600")
    seen = [i for i in progress(range(1000), desc="eval", unit="batch")]
    assert seen == list(range(1000))
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("eval: 1000/1000 batch (100%), done in ")
    for _ in progress(range(1000), desc="epoch 1/2", leave=False):
        pass
    assert stderr_lines(capsys) == []                     # leave=False: a short loop leaves nothing


def test_stage_names_and_postfix_show_while_running_and_the_last_line_names_the_whole_job(monkeypatch, capsys):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    with progress(desc="prepare", unit="face") as bar:    # no total: counts only
        bar.set_description_str("wflw/train")
        bar.update(2)
        bar.set_postfix(loss="0.123")
        bar.set_description("lapa/test")
        bar.update(5)
        bar.set_postfix_str("almost")
        bar.update(1)
    lines = stderr_lines(capsys)
    assert len(lines) == 4
    assert lines[0].startswith("wflw/train: 2 face")
    assert lines[1].startswith("lapa/test: 7 face") and lines[1].endswith(", loss=0.123")
    assert lines[2].startswith("lapa/test: 8 face") and lines[2].endswith(", almost")
    assert lines[3].startswith("prepare: 8 face, done in ") and "almost" not in lines[3]


def test_disabled_reports_nothing_but_write_still_prints(capsys):
    with progress(range(3), desc="eval", enabled=False) as bar:
        list(bar)
        bar.write("epoch 1/1  loss 0.5")
    out, err = capsys.readouterr()
    assert err == "" and out == "epoch 1/1  loss 0.5\n"


def test_a_terminal_gets_a_tqdm_bar(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = progress(total=2, desc="synth", unit="face")
    try:
        assert isinstance(bar, tqdm)
        bar.update(2)
    finally:
        bar.close()
    assert "synth" in sys.stderr.getvalue()
    assert isinstance(progress(total=2, enabled=False), LineProgress)      # disabled: no bar even on a terminal


def test_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0.5")
    assert interval_from_env() == 0.5
    for bad in ("soon", "", "  "):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        assert interval_from_env() == DEFAULT_INTERVAL_S
    monkeypatch.setenv(INTERVAL_ENV, "-3")
    assert interval_from_env() == 0.0


# --- through the CLI, stderr to a pipe (CI, a log file) ---------------------------------------------------------

def run_piped(*args, interval: str | None = None) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k != INTERVAL_ENV}
    if interval is not None:
        env[INTERVAL_ENV] = interval
    start = time.monotonic()
    proc = subprocess.run(PFPLD + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=600, env=env)
    return proc, time.monotonic() - start


def test_prepare_data_into_a_log_writes_a_few_plain_lines(synth_dir, tmp_path):
    proc, seconds = run_piped("prepare-data", "--out", tmp_path / "data", "--wflw", synth_dir / "WFLW",
                              "--lapa", synth_dir / "LaPa", "--300wlp", synth_dir / "300W_LP",
                              "--aflw2000", synth_dir / "AFLW2000")
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "\r" not in proc.stdout
    lines = proc.stderr.splitlines()
    assert 1 <= len(lines) <= seconds / DEFAULT_INTERVAL_S + 2, proc.stderr
    assert lines[-1].startswith("prepare: ") and " face, done in " in lines[-1]
    assert max(len(line) for line in lines) < 200


def test_synth_into_a_log_writes_one_line_per_interval(tmp_path):
    proc, _ = run_piped("synth", "--out", tmp_path / "faces", "--n", "20", interval="0")
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    lines = proc.stderr.splitlines()
    # interval 0: a line per update (a writer may count a few faces at once), then the last line
    assert 5 <= len(lines) <= 21 and all(line.startswith("synth: ") for line in lines), proc.stderr
    counts = [int(line.split()[1].split("/")[0]) for line in lines]
    assert counts == sorted(counts) and counts[-1] == 20
    assert lines[-1].startswith("synth: 20/20 face (100%), done in ")
