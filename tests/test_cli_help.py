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
