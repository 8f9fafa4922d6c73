"""The three command lines: every option explained, "did you mean" for a mistyped one."""

from __future__ import annotations

import argparse

import pytest

from bids_harmony.cli.demo import build_parser as build_demo_parser
from bids_harmony.cli.parser import build_parser
from bids_harmony.cli.simulate import build_parser as build_simulate_parser
from bids_harmony.cli.suggest import SuggestingArgumentParser, close_options

PARSERS = {
    "bids-harmony": build_parser,
    "bids-harmony-simulate": build_simulate_parser,
    "bids-harmony-demo": build_demo_parser,
}


@pytest.mark.parametrize("prog", list(PARSERS))
def test_every_option_has_help(prog):
    parser = PARSERS[prog]()
    options = [a for a in parser._actions
               if a.option_strings and not isinstance(a, argparse._HelpAction)]  # fmt: skip
    assert options
    missing = [a.option_strings[0] for a in options
               if a.help is argparse.SUPPRESS or not (a.help or "").strip()]  # fmt: skip
    assert not missing, f"{prog}: options without help: {missing}"
    text = parser.format_help()
    for action in options:
        assert action.option_strings[0] in text


def _error(parser: argparse.ArgumentParser, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(argv)
    assert exc.value.code == 2  # as argparse's own errors
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["/bids", "/out", "participant", "--partcipant-label", "01"],
        ["/bids", "/out", "participant", "--partcipant-label=01"],
        # before the positionals, argparse alone would take 01 for BIDS_DIR
        ["--partcipant-label", "01", "/bids", "/out", "participant"],
    ],
    ids=["after", "with-equals", "before-positionals"],
)
def test_did_you_mean(argv, capsys):
    err = _error(build_parser(), argv, capsys)
    assert "unrecognized option --partcipant-label (did you mean --participant-label?)" in err
    assert err.startswith("usage: bids-harmony")


def test_did_you_mean_in_the_simulator(capsys):
    err = _error(build_simulate_parser(), ["out", "--temprature-delta", "Prisma=2"], capsys)
    assert "did you mean --temperature-delta?" in err


def test_no_suggestion_for_a_far_option(capsys):
    err = _error(build_parser(), ["/bids", "/out", "group", "--frobnicate"], capsys)
    assert "unrecognized option --frobnicate" in err and "did you mean" not in err


def test_valid_command_lines_still_parse():
    parser = build_parser()
    # abbreviations, '--opt=value' and values after '--' are argparse's to judge
    args = parser.parse_args(["/bids", "/out", "participant", "--participant-lab", "01",
                              "--sh-order=6", "-vv"])  # fmt: skip
    assert args.participant_label == ["01"] and args.sh_order == 6 and args.verbose == 2
    args = parser.parse_args(["--seed", "3", "--", "/bids", "/out", "train"])
    assert args.seed == 3 and args.analysis_level == "train"


def test_close_options():
    known = ["--participant-label", "--session-label", "--phantom-label", "--nprocs"]
    assert close_options("--session-lable", known)[0] == "--session-label"
    assert close_options("--nproc", known) == ["--nprocs"]
    assert close_options("--zzz", known) == []
    assert isinstance(build_parser(), SuggestingArgumentParser)


def _guide_commands(text: str) -> list[list[str]]:
    """The ``bids-harmony`` command lines of the bash blocks of a Markdown guide, as
    argument lists (what follows the program, or the image in docker/apptainer lines)."""
    import re
    import shlex

    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line)
            if words[:1] == ["bids-harmony"]:
                commands.append(words[1:])
            elif words[:1] in (["docker"], ["apptainer"], ["singularity"]):
                image = next(i for i, w in enumerate(words)
                             if w.endswith(".sif") or w.startswith("bids_harmony:"))  # fmt: skip
                commands.append(words[image + 1:])
    return commands


def test_every_command_of_the_own_data_guide_parses(tmp_path, monkeypatch):
    from pathlib import Path

    guide = Path(__file__).resolve().parents[1] / "docs" / "own-data.md"
    if not guide.is_file():
        pytest.skip("not a source checkout")
    commands = _guide_commands(guide.read_text(encoding="utf-8"))
    assert len(commands) >= 8
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sites.tsv").write_text("participant_id\tsession_id\tsite\n")
    levels = set()
    for argv in commands:
        args = build_parser().parse_args(argv)
        levels.add(args.analysis_level)
    assert levels == {"participant", "train", "group"}
