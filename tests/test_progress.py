"""Console progress: run names in node messages, collapsed warnings, progress lines."""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path
from types import SimpleNamespace

import pytest

from bids_harmony.logs import (
    ProgressLine,
    RepeatFilter,
    RunNameFilter,
    format_duration,
    run_context,
)
from bids_harmony.workflows.progress import Progress, StepProgress


class ListHandler(logging.Handler):
    """Keeps the formatted messages it lets through."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def logger(tmp_path):
    """A logger with the console handler's two filters, in the CLI's order."""
    log = logging.getLogger(f"bids_harmony.tests.progress.{tmp_path.name}")
    log.propagate = False
    handler = ListHandler()
    repeats = RepeatFilter(max_shown=3, tally_dir=tmp_path)
    handler.addFilter(repeats)
    handler.addFilter(RunNameFilter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield SimpleNamespace(log=log, lines=handler.lines, repeats=repeats)
    log.removeHandler(handler)


def test_messages_inside_a_run_context_name_the_run(logger):
    logger.log.info("Mask: %d voxels.", 43747)
    with run_context("sub-01_ses-GE1_acq-multishell"):
        logger.log.info("Mask: %d voxels.", 43747)
        logger.log.warning("%s: shell %s skipped", "sub-01_ses-GE1_acq-multishell", "b3000")
        with run_context(""):  # an unnamed inner block keeps the run
            logger.log.info("50% done")
    logger.log.info("after")
    assert logger.lines == [
        "Mask: 43747 voxels.",
        "sub-01_ses-GE1_acq-multishell: Mask: 43747 voxels.",
        "sub-01_ses-GE1_acq-multishell: shell b3000 skipped",  # already named: once
        "sub-01_ses-GE1_acq-multishell: 50% done",
        "after",
    ]


def test_repeated_warnings_are_shown_three_times_then_counted(logger):
    for n in range(62):
        with run_context(f"sub-phantom01_ses-GE{n}"):
            logger.log.warning("Only %d voxels with FA > %.2f", n, 0.7)
    logger.log.warning("another kind")
    for _ in range(5):
        logger.log.error("errors are never collapsed")
    assert logger.lines[:3] == [f"sub-phantom01_ses-GE{n}: Only {n} voxels with FA > 0.70"
                                for n in range(3)]  # fmt: skip
    assert logger.lines[3:] == ["another kind"] + ["errors are never collapsed"] * 5
    assert logger.repeats.flush(logger.log) == 1
    assert logger.lines[-1] == "Only 0 voxels with FA > 0.70 (repeated 59 more times)"
    # counts restart after a summary (the next level)
    logger.log.warning("Only %d voxels with FA > %.2f", 1, 0.7)
    assert logger.lines[-1] == "Only 1 voxels with FA > 0.70"
    assert logger.repeats.flush(logger.log) == 0


def test_summary_lines_are_not_collapsed_themselves(logger):
    for template in ("a %d", "b %d", "c %d", "d %d", "e %d"):
        for n in range(4):
            logger.log.warning(template, n)
    assert logger.repeats.flush(logger.log) == 5
    assert logger.lines[-5:] == [f"{t} 0 (repeated 1 more time)" for t in "abcde"]


def _warn_in_worker(name: str) -> None:
    log = logging.getLogger(name)
    for n in range(10):
        log.warning("worker warning %d", n)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_counts_of_forked_workers_reach_the_summary(logger):
    logger.log.warning("worker warning %d", -1)  # shown in the parent before the fork
    ctx = multiprocessing.get_context("fork")
    for _ in range(2):
        worker = ctx.Process(target=_warn_in_worker, args=(logger.log.name,))
        worker.start()
        worker.join()
    assert logger.repeats.flush(logger.log) == 1
    # 1 + 2 × 10 warnings; the parent showed 1 and each worker 2 more (3 per process)
    assert logger.lines[-1] == "worker warning -1 (repeated 16 more times)"
    assert not list(Path(logger.repeats.tally_dir).glob("*.json"))


def test_progress_line_every_tenth_at_most_every_ten_seconds():
    now = [0.0]
    lines: list[str] = []
    log = logging.getLogger("bids_harmony.tests.progress_line")
    handler = ListHandler()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        line = ProgressLine("training A→B", 1000, log, clock=lambda: now[0])
        for it in range(50, 1001, 50):
            now[0] = it * 0.1  # 100 s in all
            line.update(it, f"val loss {1 / it:.3g}")
        lines = handler.lines
    finally:
        log.removeHandler(handler)
    assert len(lines) == 10
    assert lines[0] == "training A→B: iteration 100/1000, val loss 0.01, 10 s, ~90 s left"
    assert lines[3] == "training A→B: iteration 400/1000, val loss 0.0025, 40 s, ~60 s left"
    assert lines[-1] == "training A→B: iteration 1000/1000, val loss 0.001, 2 min"
    assert format_duration(7200) == "2 h 00 min"


def _node(fullname: str) -> SimpleNamespace:
    return SimpleNamespace(fullname=fullname, name=fullname.rsplit(".", 1)[-1])


def test_progress_names_runs_and_times_them(caplog):
    now = [0.0]
    names = {"run_a": "sub-01_ses-A", "run_b": "sub-01_ses-B"}
    progress = Progress(names, clock=lambda: now[0])
    nodes = {run: [_node(f"wf.{run}.{step}") for step in ("preprocess", "metrics", "ds")]
             for run in names}  # fmt: skip
    progress.expect([n for run in names for n in nodes[run]])
    caplog.set_level(logging.INFO, "bids_harmony")
    for run, start in (("run_a", 0.0), ("run_b", 30.0)):
        for node in nodes[run]:
            now[0] = start
            progress(node, "start")
            now[0] = start + 12
            progress(node, "end")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "[start] sub-01_ses-A",
        "[1/2] sub-01_ses-A done in 12 s (level: 12 s, ~12 s left)",
        "[start] sub-01_ses-B",
        "[2/2] sub-01_ses-B done in 12 s (level: 42 s)",
    ]


def test_progress_of_a_cached_run_and_of_a_failed_one(caplog):
    names = {"run_a": "sub-01_ses-A", "run_b": "sub-01_ses-B"}
    progress = Progress(names)
    caplog.set_level(logging.INFO, "bids_harmony")
    progress(_node("wf.run_a.preprocess"), "end")  # found in the cache: no "start"
    progress(_node("wf.run_a.ds_participant"), "end")  # no expect(): the sink ends a run
    progress(_node("wf.run_b.preprocess"), "start")
    progress(_node("wf.run_b.preprocess"), "exception")
    progress(_node("wf.run_b.ds_participant"), "end")  # skipped after the failure
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("[1/2] sub-01_ses-A done (outputs found in the work dir")
    assert messages[1:] == ["[start] sub-01_ses-B", "FAILED: sub-01_ses-B (wf.run_b.preprocess)"]


def test_step_progress_gives_elapsed_time_and_time_left(caplog):
    now = [0.0]
    steps = StepProgress(4, {"register": "registered"}, clock=lambda: now[0])
    caplog.set_level(logging.INFO, "bids_harmony")
    now[0] = 20.0
    steps(_node("group_wf.scenario.register_sub_01_ses_GE1"), "end")
    steps(_node("group_wf.scenario.evaluate"), "end")  # not a counted step
    assert [r.getMessage() for r in caplog.records] == [
        "[1/4] registered scenario.register_sub_01_ses_GE1 (20 s, ~60 s left)"
    ]


def test_participant_run_logs_start_and_finish_of_each_run_in_order(tmp_path, caplog):
    from bids_harmony.cli.run import main
    from tests.conftest import make_bids

    bids = make_bids(tmp_path / "bids", sessions=("A", "B"))
    caplog.set_level(logging.INFO, "bids_harmony")
    code = main([str(bids), str(tmp_path / "out"), "participant", "--preproc", "python",
                 "--nprocs", "1", "--no-gfa", "-w", str(tmp_path / "work")])  # fmt: skip
    assert code == 0
    messages = [r.getMessage() for r in caplog.records]
    progress = [m for m in messages if m.startswith(("[start]", "[1/2]", "[2/2]"))]
    assert [m.split(" done")[0] for m in progress] == [
        "[start] sub-01_ses-A", "[1/2] sub-01_ses-A", "[start] sub-01_ses-B", "[2/2] sub-01_ses-B",
    ]  # fmt: skip
    # a message of the numerical code, logged inside a node, names its run
    masks = [m for m in messages if "Mask:" in m]
    assert [m.split(":")[0] for m in masks] == ["sub-01_ses-A", "sub-01_ses-B"]


def test_runs_are_ordered_by_connected_component():
    import networkx as nx

    from bids_harmony.workflows.scheduling import component_ranks

    graph = nx.DiGraph()
    graph.add_nodes_from(["a.pre", "b.pre", "a.fit", "b.fit", "a.sink"])
    graph.add_edges_from([("a.pre", "a.fit"), ("a.fit", "a.sink"), ("b.pre", "b.fit")])
    ranks = component_ranks(graph)
    assert [ranks[n] for n in ("a.pre", "a.fit", "a.sink", "b.pre", "b.fit")] == [0, 0, 0, 1, 1]


def test_interfaces_name_their_run():
    from bids_harmony.interfaces.dmri import FitSH
    from bids_harmony.interfaces.group_level import FibreErrors, SessionMaps

    assert FitSH(run_name="sub-01_ses-A").run_label() == "sub-01_ses-A"
    assert FitSH().run_label() == ""
    session = SessionMaps(key="sub-01_ses-GE1_acq-multishell", subject="01",
                          label="sub-01 ses-GE1", mask=Path("mask.nii.gz"), shells={})  # fmt: skip
    fibres = FibreErrors(session=session, label="b1000")
    assert fibres.run_label() == "sub-01_ses-GE1_acq-multishell b1000"
    assert FibreErrors().run_label() == ""
