"""Output folders (vtt.outputs, applied to `vtt prepare`): never over the inputs, never over a folder vtt did
not write, one writer at a time, and nothing half-written left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_from_disk

from vtt.cli import main
from vtt.data.synthetic import write_demo_videos
from vtt.outputs import MARKER, claim_output


@pytest.fixture
def manifest(tmp_path) -> Path:
    return write_demo_videos(tmp_path / "data", count=2)


def prepare(manifest: Path, out: Path, *extra: str) -> int:
    return main(["prepare", "--manifest", str(manifest), "--out", str(out), "--trainer", "seq2seq", *extra])


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def beside(out: Path) -> list[str]:
    """Hidden files and folders vtt left beside `out` (locks, staging folders, swapped-out outputs)."""
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*"))


def test_prepare_refuses_an_out_that_is_or_holds_the_manifest_or_its_videos(manifest, tmp_path, capsys):
    data = manifest.parent
    before = tree(tmp_path)
    assert prepare(manifest, data) == 2  # replacing data/ would delete the videos and the manifest
    assert f"--out {data}: holds {manifest}, which `vtt prepare` reads" in capsys.readouterr().err
    assert prepare(manifest, tmp_path) == 2
    assert prepare(manifest, manifest) == 2
    assert f"--out {manifest}: is {manifest}, which `vtt prepare` reads" in capsys.readouterr().err
    # A manifest elsewhere naming the videos by absolute path: their folder is refused too.
    other = tmp_path / "lists" / "manifest.jsonl"
    other.parent.mkdir()
    other.write_text(manifest.read_text().replace('"clip', f'"{data}/clip'))
    assert prepare(other, data) == 2
    assert f"holds {data / 'clip000.mp4'}" in capsys.readouterr().err
    assert tree(tmp_path) == before | {"lists/manifest.jsonl": other.read_bytes()}


def test_prepare_refuses_a_folder_that_vtt_prepare_did_not_write(manifest, tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    assert prepare(manifest, notes) == 2
    err = capsys.readouterr().err
    assert f"--out {notes}: holds files that vtt did not write (no {MARKER})" in err and "remove" in err
    run = tmp_path / "run"
    run.mkdir()
    (run / MARKER).write_text(json.dumps({"command": "run"}))
    (run / "model.safetensors").write_text("weights")
    assert prepare(manifest, run) == 2
    assert "is the output of `vtt run`, not of `vtt prepare`" in capsys.readouterr().err
    assert (notes / "todo.txt").read_text() == "keep me" and (run / "model.safetensors").read_text() == "weights"
    assert beside(notes) == beside(run) == []


def test_prepare_refuses_a_cache_inside_out(manifest, tmp_path, capsys):
    out = tmp_path / "prepared"
    args = ["--manifest", str(manifest), "--out", str(out), "--trainer", "llava", "--cache", str(out / "cache")]
    assert main(["prepare", *args]) == 2
    assert f"holds {out / 'cache'}" in capsys.readouterr().err and not out.exists()


def test_prepare_writes_an_empty_folder_then_replaces_its_own_output(manifest, tmp_path):
    out = tmp_path / "prepared"
    out.mkdir()
    (tmp_path / ".prepared.partial-99999-0").mkdir()  # an interrupted run's staging folder
    assert prepare(manifest, out) == 0
    assert json.loads((out / MARKER).read_text())["command"] == "prepare" and len(load_from_disk(str(out))) == 2
    one = manifest.with_name("one.jsonl")
    one.write_text(manifest.read_text().splitlines()[0] + "\n")
    assert prepare(one, out) == 0
    assert len(load_from_disk(str(out))) == 1
    assert beside(out) == []  # no lock, staging or previous folder left


HOLD = """
import sys
from vtt.outputs import claim_output
with claim_output(sys.argv[1], "prepare"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_writer_is_refused_while_the_first_holds_the_out(manifest, tmp_path, capsys):
    out = tmp_path / "prepared"
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert first.stdout.readline() == b"held\n"
        assert prepare(manifest, out) == 2
        err = capsys.readouterr().err
        assert f"--out {out}: `vtt prepare` (pid {first.pid} on " in err and "is writing it now" in err
        assert not out.exists()
    finally:
        first.communicate(b"")
    assert first.returncode == 0
    assert prepare(manifest, out) == 0 and len(load_from_disk(str(out))) == 2


def test_a_claim_whose_block_fails_leaves_the_earlier_output_and_no_staging_folder(tmp_path):
    out = tmp_path / "out"
    with claim_output(out, "predict") as claim:
        staging = claim.staging()
        (staging / "a.txt").write_text("first")
        claim.publish(staging)
    with pytest.raises(RuntimeError), claim_output(out, "predict") as claim:
        (claim.staging() / "a.txt").write_text("second, half written")
        raise RuntimeError("interrupted")
    assert (out / "a.txt").read_text() == "first" and beside(out) == []


def test_mark_makes_a_folder_written_in_place_its_commands_own(tmp_path):
    out = tmp_path / "run"
    with claim_output(out, "run") as claim:
        claim.mark()
        (out / "checkpoint-1").mkdir()
    with claim_output(out, "run"):  # the same command again (a resume): allowed, kept as it is
        assert (out / "checkpoint-1").is_dir()
    refused = "is the output of `vtt run`, not of `vtt predict`"
    with pytest.raises(ValueError, match=refused), claim_output(out, "predict"):
        pass
