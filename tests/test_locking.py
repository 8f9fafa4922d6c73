"""Locks on the work directory and the outputs (bids_harmony.workflows.locking)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from bids_harmony.cli.parser import build_parser
from bids_harmony.cli.run import config_from_args, main
from bids_harmony.config import Config
from bids_harmony.errors import BidsHarmonyError, LockError
from bids_harmony.workflows.locking import (
    hold_locks,
    level_keys,
    lock_paths,
    release_locks,
    releases_locks,
)
from tests.conftest import make_bids


@pytest.fixture(autouse=True)
def _release_after_test():
    yield
    release_locks()


@pytest.fixture
def live_pid():
    """The PID of a live process that is not this one (another run, as far as locks go)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _config(tmp_path: Path, level: str = "participant", work: str = "work") -> Config:
    return Config(bids_dir=tmp_path / "bids", output_dir=tmp_path / "out",
                  analysis_level=level, work_dir=tmp_path / work)  # fmt: skip


def write_lock(path: Path, pid: int, host: str | None = None) -> str:
    """A lock file as another run writes it; returns its content."""
    text = json.dumps({"pid": pid, "host": host or socket.gethostname(),
                       "started": "2024-05-01T10:00:00+02:00", "level": "participant",
                       "command": "bids-harmony /bids /out participant"})  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def test_lock_files_hold_the_owner_and_go_on_release(tmp_path):
    config = _config(tmp_path)
    paths = hold_locks(config, ["sub-02", "sub-01"])
    assert paths == [*lock_paths(config, "sub-01"), *lock_paths(config, "sub-02")]
    assert paths[0] == tmp_path / "work" / "locks" / "sub-01.lock"
    assert paths[1] == tmp_path / "out" / "logs" / "locks" / "sub-01.lock"
    data = json.loads(paths[0].read_text())
    assert data["pid"] == os.getpid() and data["host"] == socket.gethostname()
    assert data["level"] == "participant" and isinstance(data["command"], str)
    assert datetime.fromisoformat(data["started"]).tzinfo is not None
    assert hold_locks(config, ["sub-01"]) == paths[:2]  # held by this process already

    release_locks()
    assert not any(path.exists() for path in paths)
    # The folders taking the locks created are gone again: nothing left behind.
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


def test_level_keys(tmp_path):
    class Study:
        subjects = ["02", "01"]

    assert level_keys(_config(tmp_path), Study()) == ["sub-01", "sub-02"]
    assert level_keys(_config(tmp_path, "train"), Study()) == ["train"]
    assert level_keys(_config(tmp_path, "group"), Study()) == ["group"]


def test_held_lock_refused_with_its_holder(tmp_path, live_pid):
    config = _config(tmp_path, "group")
    work_lock, out_lock = lock_paths(config, "group")
    write_lock(out_lock, live_pid)
    with pytest.raises(LockError) as exc:
        hold_locks(config, ["group"])
    assert isinstance(exc.value, BidsHarmonyError) and exc.value.exit_code == 2
    message = str(exc.value)
    assert str(out_lock) in message and f"PID {live_pid}" in message
    assert socket.gethostname() in message and "2024-05-01T10:00:00" in message
    assert "bids-harmony /bids /out participant" in message and "delete" in message
    assert not work_lock.exists()  # taken first, released with the failure
    assert json.loads(out_lock.read_text())["pid"] == live_pid


def test_stale_lock_of_a_dead_process_taken_over(tmp_path, dead_pid, caplog):
    config = _config(tmp_path, "train")
    work_lock, _ = lock_paths(config, "train")
    write_lock(work_lock, dead_pid)
    hold_locks(config, ["train"])
    assert json.loads(work_lock.read_text())["pid"] == os.getpid()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert any("stale" in r.getMessage() and str(dead_pid) in r.getMessage() for r in warnings)
    assert not work_lock.with_name("train.lock.break").exists()


def test_lock_of_another_host_refused(tmp_path, dead_pid):
    config = _config(tmp_path, "train")
    work_lock, _ = lock_paths(config, "train")
    write_lock(work_lock, dead_pid, host="node-17.cluster.example")
    with pytest.raises(LockError, match="cannot be checked") as exc:
        hold_locks(config, ["train"])
    assert "node-17.cluster.example" in str(exc.value) and str(work_lock) in str(exc.value)


def test_unreadable_lock_taken_over_only_when_old(tmp_path, caplog):
    config = _config(tmp_path, "train")
    work_lock, _ = lock_paths(config, "train")
    work_lock.parent.mkdir(parents=True)
    work_lock.write_text("")  # another run between creating and writing it
    with pytest.raises(LockError, match="no readable lock"):
        hold_locks(config, ["train"])
    work_lock.write_text("{not json")
    old = time.time() - 120
    os.utime(work_lock, (old, old))
    hold_locks(config, ["train"])
    assert json.loads(work_lock.read_text())["pid"] == os.getpid()
    assert "unreadable" in caplog.text


def test_several_locks_all_or_nothing(tmp_path, live_pid):
    config = _config(tmp_path)
    other = lock_paths(config, "sub-02")[1]
    text = write_lock(other, live_pid)
    with pytest.raises(LockError):
        hold_locks(config, ["sub-03", "sub-01", "sub-02"])
    for key in ("sub-01", "sub-03"):
        assert not any(path.exists() for path in lock_paths(config, key))
    assert other.read_text() == text  # the other run's lock is untouched
    hold_locks(config, ["sub-01", "sub-03"])  # not blocked by sub-02


def test_release_leaves_a_lock_no_longer_ours(tmp_path, live_pid):
    config = _config(tmp_path, "group")
    work_lock, out_lock = hold_locks(config, ["group"])
    text = write_lock(work_lock, live_pid)  # someone replaced it (never happens by design)
    release_locks()
    assert work_lock.read_text() == text and not out_lock.exists()


def test_level_releases_its_locks_when_it_ends(tmp_path):
    config = _config(tmp_path, "group")

    @releases_locks
    def level(fail: bool) -> int:
        hold_locks(config, ["group"])
        assert all(path.exists() for path in lock_paths(config, "group"))
        if fail:
            raise KeyboardInterrupt
        return 0

    assert level(False) == 0
    assert not any(path.exists() for path in lock_paths(config, "group"))
    with pytest.raises(KeyboardInterrupt):
        level(True)
    assert not any(path.exists() for path in lock_paths(config, "group"))
    # A lock held before the level started is kept.
    outer = hold_locks(config, ["group"])
    level(False)
    assert all(path.exists() for path in outer)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def test_cli_participant_held_by_another_run(tmp_path, live_pid, caplog):
    bids = make_bids(tmp_path / "bids")
    out, work = tmp_path / "out", tmp_path / "work"
    # The other run uses another work directory: the lock in the outputs stops this one.
    held = out / "logs" / "locks" / "sub-01.lock"
    write_lock(held, live_pid)
    (out / "dataset_description.json").write_text('{"Name": "previous"}')
    before = tree_digest(out)
    code = main([str(bids), str(out), "participant", "--participant-label", "01", "-w",
                 str(work), "--nprocs", "1", "--no-gfa", "--preproc", "python"])  # fmt: skip
    assert code == 2
    assert str(held) in caplog.text and f"PID {live_pid}" in caplog.text
    assert tree_digest(out) == before
    assert not work.exists()  # the lock folders it made are removed with its locks


def test_cli_other_participant_not_blocked(tmp_path, live_pid):
    from bids_harmony.workflows.run import discover_study

    bids = make_bids(tmp_path / "bids", subjects=("01", "02"))
    work, out = tmp_path / "work", tmp_path / "out"
    for path in (work / "locks" / "sub-01.lock", out / "logs" / "locks" / "sub-01.lock"):
        write_lock(path, live_pid)

    def config(*labels: str) -> Config:
        args = build_parser().parse_args([str(bids), str(out), "participant", "-w", str(work),
                                          "--participant-label", *labels])  # fmt: skip
        return config_from_args(args)

    second = config("02")
    assert hold_locks(second, level_keys(second, discover_study(second))) == list(
        lock_paths(second, "sub-02")
    )
    release_locks()
    both = config("01", "02")
    with pytest.raises(LockError, match="sub-01.lock"):
        hold_locks(both, level_keys(both, discover_study(both)))
    assert not any(path.exists() for path in lock_paths(both, "sub-02"))
