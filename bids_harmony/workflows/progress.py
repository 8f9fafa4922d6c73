"""Nipype status callbacks: what the console shows while a level runs.

:class:`Progress` (participant level) logs ``[start] <run>`` when the first node
of a run starts and ``[k/N] <run> done in 41 s (level: 3 min, ~5 min left)``
when its last node ends; :class:`StepProgress` (train and group levels) one
line per finished step with the level's elapsed time and an estimate of the
rest.  Nipype calls them in the main process with ``(node, status)``, status
``"start"``, ``"end"`` or ``"exception"``; nodes found in the cache and nodes run
in the main process (the sinks) only "end".

The runs finish one after another, not all at the end, because the plugins of
:mod:`bids_harmony.workflows.scheduling` run the nodes of started runs first;
they also tell :meth:`Progress.expect` how many nodes each run has.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from bids_harmony.logs import eta_text, format_duration

LOGGER = logging.getLogger(__name__)


def run_of(fullname: str, names: dict[str, str]) -> str:
    """The run workflow (a key of ``names``) a node's full name belongs to."""
    parts = fullname.split(".")
    return next((part for part in parts if part in names), parts[-2] if len(parts) > 1 else "")


class Progress:
    """Participant-level status callback: a line per run started, finished or failed.

    Parameters
    ----------
    names : dict
        Run workflow name → the run's BIDS prefix (what the lines show).
    sink_name : str
        Without :meth:`expect` (a plugin of Nipype's own, e.g. SLURM), a run is
        done when its node of this name ends.
    clock : callable
        Seconds, monotonic (injected by tests).
    """

    def __init__(
        self,
        names: dict[str, str],
        sink_name: str = "ds_participant",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.names, self.sink_name, self.clock = names, sink_name, clock
        self.done = 0
        self.failed: set[str] = set()
        self.started: dict[str, float] = {}
        self.computed: set[str] = set()
        self.ended: dict[str, int] = {}
        self.expected: dict[str, int] | None = None
        self.start = clock()

    def expect(self, nodes: Iterable[Any]) -> None:
        """The nodes of the execution graph: a run is done when all of its nodes ended."""
        counts: dict[str, int] = {}
        for node in nodes:
            run = run_of(node.fullname, self.names)
            if run in self.names:
                counts[run] = counts.get(run, 0) + 1
        self.expected = counts
        self.start = self.clock()

    def label(self, run: str) -> str:
        return self.names.get(run, run)

    def __call__(self, node: Any, status: str) -> None:
        run = run_of(node.fullname, self.names)
        now = self.clock()
        if status == "exception":
            self.failed.add(run)
            LOGGER.error("FAILED: %s (%s)", self.label(run), node.fullname)
            return
        if status == "start":
            self.computed.add(run)
            if run not in self.started:
                self.started[run] = now
                LOGGER.info("[start] %s", self.label(run))
            return
        # Nipype's Linear plugin also reports "end" for nodes it skipped after a failure.
        if status != "end" or run in self.failed:
            return
        self.started.setdefault(run, now)
        self.ended[run] = self.ended.get(run, 0) + 1
        if self.expected is not None and run in self.expected:
            finished = self.ended[run] == self.expected[run]
        else:
            finished = node.name == self.sink_name
        if not finished:
            return
        self.done += 1
        took = (f"done in {format_duration(now - self.started[run])}" if run in self.computed
                else "done (outputs found in the work directory)")  # fmt: skip
        LOGGER.info("[%d/%d] %s %s (level: %s)", self.done, len(self.names), self.label(run),
                    took, eta_text(self.done, len(self.names), now - self.start))  # fmt: skip


class StepProgress:
    """Nipype status callback of the train and group levels: one line per finished step.

    ``steps`` maps the first word of a node name (``sample``, ``register``) to the
    verb logged when such a node ends; other nodes are not counted.  Each line
    ends with the level's elapsed time and, at the pace so far, the time left.
    """

    def __init__(
        self, n_steps: int, steps: dict[str, str], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.n_steps, self.steps, self.done, self.clock = n_steps, steps, 0, clock
        self.start = clock()

    def expect(self, nodes: Iterable[Any]) -> None:
        """Called by our plugins when the graph is about to run: the clock starts."""
        self.start = self.clock()

    def __call__(self, node: Any, status: str) -> None:
        if status == "exception":
            LOGGER.error("FAILED: %s", node.fullname)
            return
        verb = self.steps.get(node.name.split("_")[0])
        if status == "end" and verb:
            self.done += 1
            LOGGER.info("[%d/%d] %s %s (%s)", self.done, self.n_steps, verb,
                        node.fullname.split(".", 1)[-1],
                        eta_text(self.done, self.n_steps, self.clock() - self.start))  # fmt: skip
