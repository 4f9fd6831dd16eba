"""The command line as tests run it: a real `pfpld` process, and the one-line error rule for a user's mistake."""
import subprocess
import sys

PFPLD = [sys.executable, "-m", "pfpld_app.cli"]


def run(*args, cwd=None):
    return subprocess.run(PFPLD + [str(a) for a in args], capture_output=True, text=True, timeout=600, cwd=cwd)


def assert_user_error(proc, *fragments):
    """Exit code 2, no traceback, and the error is one line, the last one, holding every fragment."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    # a progress bar may have run before the failure; the error itself is one line, the last one
    lines = [part for line in proc.stderr.splitlines() for part in line.split("\r") if part.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    for f in fragments:
        assert f in errors[0], (f, errors[0])


def assert_one_line_error(proc, *fragments):
    """assert_user_error, and stderr is that line alone (no progress bar ran before the failure)."""
    assert_user_error(proc, *fragments)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
