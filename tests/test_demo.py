"""``bids-harmony-demo`` without running the levels: paths, expectations, clean-up."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import bids_harmony
from bids_harmony.cli import demo

REPO = Path(bids_harmony.__file__).resolve().parent.parent


@pytest.fixture
def stub_levels(monkeypatch):
    """Replace the simulation and the levels by stubs that write where the real ones do."""
    calls: list[list[str]] = []

    def simulate(root: Path, **kwargs) -> None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "dataset_description.json").write_text(json.dumps({"Name": "stub"}))

    def run(argv: list[str]) -> int:
        calls.append(argv)
        work = Path(argv[argv.index("--work-dir") + 1])
        (work / argv[2]).mkdir(parents=True, exist_ok=True)
        (work / argv[2] / "node.pklz").write_bytes(b"0" * 1000)
        Path(argv[1]).mkdir(parents=True, exist_ok=True)
        return 1 if argv[2] == "fail" else 0

    import bids_harmony.cli.run
    import bids_harmony.simulate

    monkeypatch.setattr(bids_harmony.simulate, "simulate_study", simulate)
    monkeypatch.setattr(bids_harmony.cli.run, "main", run)
    return calls


def test_every_path_is_under_the_output_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = demo.demo_paths(Path("demo_out"))
    for path in (paths.bids, paths.derivatives, paths.work):
        assert path.is_relative_to(tmp_path / "demo_out")
        assert not path.is_relative_to(REPO)


def test_demo_writes_only_under_out_and_removes_its_work_dir(tmp_path, monkeypatch, stub_levels,
                                                            capsys):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert demo.main(["out", "--size", "demo"]) == 0
    output = capsys.readouterr().out
    assert output.startswith(f"bids-harmony demo (demo study) in {tmp_path / 'out'}\nExpected: ")
    assert "min on 2 free cores" in output and "GB on disk" in output
    assert "work directory removed" in output
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # nothing else, not even in cwd
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bids", "derivatives"]
    # every level got the work dir and the output under OUT
    levels = [argv[2] for argv in stub_levels]
    assert levels == ["participant", "train", "participant", "group"]
    for argv in stub_levels:
        assert Path(argv[0]).is_relative_to(tmp_path / "out")
        assert Path(argv[1]).is_relative_to(tmp_path / "out")


def test_keep_work_keeps_the_work_dir(tmp_path, stub_levels, capsys):
    assert demo.main([str(tmp_path / "out"), "--size", "tiny", "--keep-work"]) == 0
    assert (tmp_path / "out" / "work" / "group" / "node.pklz").exists()
    assert f"work directory kept: {tmp_path / 'out' / 'work'}" in capsys.readouterr().out


def test_a_failed_step_keeps_the_work_dir_for_a_rerun(tmp_path, stub_levels, monkeypatch):
    import bids_harmony.cli.run

    run = bids_harmony.cli.run.main
    monkeypatch.setattr(bids_harmony.cli.run, "main",
                        lambda argv: run([*argv[:2], "fail", *argv[3:]]))  # fmt: skip
    assert demo.main([str(tmp_path / "out")]) == 1
    assert (tmp_path / "out" / "work").is_dir()


def test_expectations_exist_for_the_sizes_one_can_wait_for():
    assert set(demo.EXPECTED) == {"tiny", "demo"}
    assert demo.EXPECTED["demo"].minutes <= 10


def test_every_demo_option_has_help():
    parser = demo.build_parser()
    for action in parser._actions:
        if not isinstance(action, argparse._HelpAction):
            assert action.help, action.dest
