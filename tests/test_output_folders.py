"""One rule for replacing an output folder (pfpld.fileio.output_folder), on the helper itself and on every command
that writes a folder, run as a user runs it: missing -> created, empty -> filled, ours -> replaced only with
--force, anything else -> never."""
from __future__ import annotations

import json
import os
import re
import stat
from datetime import datetime
from pathlib import Path

import pytest

from pfpld import __version__
from pfpld.errors import InputError
from pfpld.fileio import (OUTPUT_KINDS, OUTPUT_MARKER, check_output_folder, commit_output_folder, force_help,
                          output_folder, output_kind_of, temporary_sibling)
from cli_run import assert_one_line_error, run

# What each kind wrote before markers existed (the legacy file and the line or JSON that identifies it).
LEGACY = {
    "synth": ("synth.json", {"generator": "pfpld.data.synthetic", "version": "1.0", "seed": 0}),
    "prepared": ("index.jsonl", {"format": "pfpld-prepared", "version": 1}),
    "export": ("manifest.json", {"format": "pfpld-export", "version": 1}),
    "calib": ("calib.json", {"format": "pfpld-calib", "version": 1}),
    "nnie-bundle": ("manifest.json", {"format": "pfpld-nnie-bundle", "version": 1}),
}


def write_output(out: Path, kind: str, text: str = "old") -> Path:
    """A finished output of `kind` at `out`, made by the helper itself."""
    with output_folder(out, kind, force=True) as tmp:
        (tmp / "content.txt").write_text(text)
    return out


def legacy_output(out: Path, kind: str) -> Path:
    name, record = LEGACY[kind]
    out.mkdir(parents=True)
    (out / name).write_text(json.dumps(record) + ("\n{\"face\": 1}\n" if name.endswith(".jsonl") else "\n"))
    (out / "data.bin").write_bytes(b"\0" * 16)
    return out


def siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir())


# --- the rule ---------------------------------------------------------------------------------------------------

def test_missing_folder_is_created_with_a_marker_naming_its_kind(tmp_path):
    out = write_output(tmp_path / "deep" / "new", "calib")
    assert (out / "content.txt").read_text() == "old"
    marker = json.loads((out / OUTPUT_MARKER).read_text())
    assert set(marker) == {"kind", "created", "pfpld"}
    assert marker["kind"] == "calib" and marker["pfpld"] == __version__
    assert datetime.fromisoformat(marker["created"]).tzinfo is not None
    assert output_kind_of(out) == "calib" and siblings(out) == ["new"]


def test_empty_folder_is_filled_without_force(tmp_path):
    (tmp_path / "out").mkdir()
    write_output(tmp_path / "out", "synth", "new")
    assert (tmp_path / "out" / "content.txt").read_text() == "new"


@pytest.mark.parametrize("kind", sorted(OUTPUT_KINDS))
def test_our_folder_is_replaced_only_with_force(tmp_path, kind):
    out = write_output(tmp_path / "out", kind)
    (out / "stale.txt").write_text("from the earlier run")
    with pytest.raises(InputError, match=rf"^{re.escape(str(out))}: holds {OUTPUT_KINDS[kind].description} written earlier; "
                                         r"pass --force to replace it$"):
        check_output_folder(out, kind, force=False)
    with pytest.raises(InputError, match="pass --force"):
        with output_folder(out, kind, force=False):
            pass
    assert (out / "content.txt").read_text() == "old"
    write_output(out, kind, "new")
    assert (out / "content.txt").read_text() == "new" and not (out / "stale.txt").exists()
    assert siblings(out) == ["out"]                       # the old folder set aside is gone, no temporary left


@pytest.mark.parametrize("kind", sorted(LEGACY))
def test_folder_written_before_markers_is_recognised_by_what_its_kind_wrote(tmp_path, kind):
    out = legacy_output(tmp_path / "out", kind)
    assert output_kind_of(out) == kind
    with pytest.raises(InputError, match="pass --force to replace it"):
        check_output_folder(out, kind, force=False)
    check_output_folder(out, kind, force=True)
    others = [k for k in OUTPUT_KINDS if k != kind]
    for other in others:                                  # another kind's legacy folder is never ours
        with pytest.raises(InputError, match=f"holds {OUTPUT_KINDS[kind].description} written by pfpld, not "
                                             f"{OUTPUT_KINDS[other].description}; pfpld never replaces it"):
            check_output_folder(out, other, force=True)


def test_pfpld_folder_of_another_kind_is_never_replaced_even_with_force(tmp_path):
    out = write_output(tmp_path / "out", "prepared")
    with pytest.raises(InputError, match=r"holds a prepared dataset written by pfpld, not a calibration set; "
                                         r"pfpld never replaces it, even with --force"):
        write_output(out, "calib", "new")
    assert (out / "content.txt").read_text() == "old" and output_kind_of(out) == "prepared"
    assert siblings(out) == ["out"]


def test_users_file_is_never_replaced_even_with_force(tmp_path):
    out = tmp_path / "thesis.pdf"
    out.write_bytes(b"%PDF precious")
    with pytest.raises(InputError, match=rf"^{re.escape(str(out))}: is a file, not a folder; pfpld never replaces it, even with "
                                         r"--force: choose another path$"):
        write_output(out, "synth", "new")
    assert out.read_bytes() == b"%PDF precious" and siblings(out) == ["thesis.pdf"]


def test_users_folder_is_never_replaced_even_with_force(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for kind in OUTPUT_KINDS:
        with pytest.raises(InputError, match=rf"^{re.escape(str(out))}: is a folder with other files in it \(not "
                                             rf"{OUTPUT_KINDS[kind].description} written by pfpld\); pfpld never "
                                             r"replaces it, even with --force"):
            write_output(out, kind, "new")
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and siblings(out) == ["mine"]


def test_folder_with_a_marker_that_is_not_ours_counts_as_a_users_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / OUTPUT_MARKER).write_text("{\"kind\": \"holiday photos\"}")
    with pytest.raises(InputError, match="is a folder with other files in it"):
        check_output_folder(out, "synth", force=True)


def test_symbolic_link_is_never_replaced(tmp_path):
    target = write_output(tmp_path / "real", "synth")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(InputError, match="is a symbolic link"):
        write_output(link, "synth", "new")
    assert link.is_symlink() and (target / "content.txt").read_text() == "old"


def test_failure_while_writing_leaves_nothing_half_written(tmp_path):
    new = tmp_path / "new"
    with pytest.raises(RuntimeError, match="disk on fire"):
        with output_folder(new, "export", force=False) as tmp:
            (tmp / "half.bin").write_bytes(b"1")
            raise RuntimeError("disk on fire")
    assert siblings(new) == []
    old = write_output(tmp_path / "old", "export")
    with pytest.raises(KeyboardInterrupt):
        with output_folder(old, "export", force=True) as tmp:
            (tmp / "content.txt").write_text("half")
            raise KeyboardInterrupt
    assert (old / "content.txt").read_text() == "old" and siblings(old) == ["old"]


def test_commit_checks_again_what_appeared_meanwhile(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InputError, match="is a folder with other files in it"):
        with output_folder(out, "calib", force=True) as tmp:
            (tmp / "content.txt").write_text("new")
            out.mkdir()                                   # a user wrote there while we worked
            (out / "notes.txt").write_text("theirs")
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and siblings(out) == ["out"]


def test_commit_output_folder_swaps_a_finished_folder_in(tmp_path):
    out = write_output(tmp_path / "bundle", "nnie-bundle")
    tmp = temporary_sibling(out)
    (tmp / "content.txt").write_text("new")
    with pytest.raises(InputError, match="pass --force"):
        commit_output_folder(tmp, out, "nnie-bundle", force=False)
    commit_output_folder(tmp, out, "nnie-bundle", force=True)
    assert (out / "content.txt").read_text() == "new" and output_kind_of(out) == "nnie-bundle"
    assert siblings(out) == ["bundle"]


def test_temporary_sibling_is_hidden_new_and_shareable(tmp_path):
    out = tmp_path / "sub" / "out"
    first, second = temporary_sibling(out), temporary_sibling(out)
    assert first != second and first.parent == second.parent == out.parent
    assert first.name.startswith(".out.") and first.is_dir() and not any(first.iterdir())
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(first.stat().st_mode) == 0o777 & ~umask        # not mkdtemp's 0700


def test_unknown_kind_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError, match="unknown output kind 'photos'"):
        check_output_folder(tmp_path / "x", "photos", force=False)


def test_force_help_states_the_whole_policy():
    text = force_help("prepared")
    assert "prepared dataset" in text and "pfpld prepare-data" in text
    assert "never replaced, with or without --force" in text and "empty one filled" in text


# --- every command, through the real CLI ------------------------------------------------------------------------

def check_command_rule(tmp_path: Path, command: list, marker_kind: str, produced: str):
    """Run `command --out OUT` into a new folder, again without and with --force, and into a user's folder."""
    out = tmp_path / "out"
    first = run(*command, "--out", out)
    assert first.returncode == 0, first.stderr
    assert output_kind_of(out) == marker_kind and (out / produced).exists()
    (out / "stale.txt").write_text("from the first run")
    again = run(*command, "--out", out)
    assert_one_line_error(again, str(out), "pass --force to replace it")
    assert (out / "stale.txt").exists()
    forced = run(*command, "--out", out, "--force")
    assert forced.returncode == 0, forced.stderr
    assert not (out / "stale.txt").exists() and (out / produced).exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    refused = run(*command, "--out", mine, "--force")
    assert_one_line_error(refused, str(mine), "never replaces it, even with --force")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out"]    # no temporary folder left


def test_synth_command_follows_the_rule(tmp_path):
    check_command_rule(tmp_path, ["synth", "--n", "20"], "synth", "synth.json")


def test_prepare_data_command_follows_the_rule(synth_dir, tmp_path):
    check_command_rule(tmp_path, ["prepare-data", "--aflw2000", synth_dir / "AFLW2000"], "prepared", "index.jsonl")


def test_calib_command_follows_the_rule(prepared_dir, tmp_path):
    check_command_rule(tmp_path, ["calib", prepared_dir, "--n", "6"], "calib", "image_list.txt")


@pytest.mark.parametrize("command", ["synth", "prepare-data", "calib"])
def test_force_is_documented_in_help(command):
    proc = run(command, "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "--force" in text and "never replaced, with or without --force" in text
