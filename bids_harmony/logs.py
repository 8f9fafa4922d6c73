"""Log messages that name their run, collapse repeats, and report progress.

Nothing here acts on import: :func:`bids_harmony.cli.run.configure_logging`
installs :class:`RunNameFilter` and :class:`RepeatFilter` on the package
handler; the rest of the package only uses :func:`run_context` and
:class:`ProgressLine`.

Run names
---------
The numerical modules (``dmri/``) log without knowing which run they process.
An interface wraps its work in ``with run_context("sub-01_ses-GE1_acq-b1000"):``
and :class:`RunNameFilter` puts that name in front of every message logged
meanwhile in that thread (a :class:`contextvars.ContextVar`).

Repeated warnings
-----------------
:class:`RepeatFilter` lets the first ``max_shown`` warnings of each message
template through and counts the others; :meth:`RepeatFilter.flush` logs one
line per template at the end of a level ("… (repeated 59 more times)").
Nipype's MultiProc runs nodes in worker processes forked from ours: they
inherit the filter, each shows up to ``max_shown`` warnings of a template (so up
to ``max_shown`` × workers are shown) and writes its counts to a folder that
:meth:`~RepeatFilter.flush` reads, so the total is exact.  Workers started
without fork (another start method, a cluster plugin) log without our handler
and their warnings are neither collapsed nor counted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

_RUN: ContextVar[str] = ContextVar("bids_harmony_run", default="")


@contextmanager
def run_context(name: str) -> Iterator[None]:
    """Name the run being processed in messages logged inside the block.

    An empty ``name`` changes nothing (the enclosing run, if any, stays named).
    """
    if not name:
        yield
        return
    token = _RUN.set(name)
    try:
        yield
    finally:
        _RUN.reset(token)


def current_run() -> str:
    """The run named by the innermost :func:`run_context`, or ``""``."""
    return _RUN.get()


class RunNameFilter(logging.Filter):
    """Handler filter: prefix messages logged inside a :func:`run_context` with the run.

    Sets ``record.run`` and, unless the message already names the run,
    ``record.msg = "<run>: <msg>"``; the original template stays in
    ``record.template`` (what :class:`RepeatFilter` groups by).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "run", None) is None:
            record.run = current_run()
        if record.run and not getattr(record, "template", None):
            record.template = record.msg
            if record.run not in record.getMessage():
                # With arguments the run goes into a format string: escape its '%'.
                run = record.run.replace("%", "%%") if record.args else record.run
                record.msg = f"{run}: {record.msg}"
        return True


class RepeatFilter(logging.Filter):
    """Handler filter: show the first warnings of each template, count the rest.

    Parameters
    ----------
    max_shown : int
        Warnings of one template shown per process before the rest are counted.
    levels : tuple of int
        Levels collapsed (default: WARNING only; errors are always shown).
    tally_dir : Path, optional
        Where forked worker processes write their counts (module docstring); a
        temporary folder of the process that creates the filter by default,
        removed by :meth:`close`.
    """

    def __init__(
        self,
        max_shown: int = 3,
        levels: tuple[int, ...] = (logging.WARNING,),
        tally_dir: Path | None = None,
    ) -> None:
        super().__init__()
        self.max_shown, self.levels = max_shown, levels
        self._own_tally = tally_dir is None
        self.tally_dir = Path(tally_dir or tempfile.mkdtemp(prefix="bids_harmony-repeats-"))
        self._owner = self._pid = os.getpid()
        self.shown: dict[tuple[str, int, str], int] = {}
        self.hidden: dict[tuple[str, int, str], int] = {}
        self.examples: dict[tuple[str, int, str], str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno not in self.levels or getattr(record, "repeat_summary", False):
            return True
        if os.getpid() != self._pid:  # a forked worker: count only its own
            self._pid, self.hidden = os.getpid(), {}
        template = getattr(record, "template", None) or record.msg
        key = (record.name, record.levelno, str(template))
        if self.shown.get(key, 0) < self.max_shown:
            self.shown[key] = self.shown.get(key, 0) + 1
            self.examples.setdefault(key, _strip_run(record))
            return True
        self.hidden[key] = self.hidden.get(key, 0) + 1
        if self._pid != self._owner:
            self._write_tally()
        return False

    def _write_tally(self) -> None:
        rows = [[*key, self.examples.get(key, key[2]), n] for key, n in self.hidden.items()]
        path = self.tally_dir / f"{self._pid}.json"
        partial = path.with_suffix(".part")
        try:
            partial.write_text(json.dumps(rows))
            os.replace(partial, path)  # the reader never sees half a file
        except OSError:
            pass  # counting is best effort; the warning itself was handled

    def collect(self) -> dict[tuple[str, int, str], tuple[str, int]]:
        """Counts of hidden warnings here and in workers (example, count); reset them."""
        totals = {key: (self.examples.get(key, key[2]), n) for key, n in self.hidden.items()}
        for path in sorted(self.tally_dir.glob("*.json")):
            try:
                rows = json.loads(path.read_text())
                path.unlink()
            except (OSError, ValueError):
                continue
            for name, level, template, example, n in rows:
                key = (name, int(level), template)
                first, count = totals.get(key, (example, 0))
                totals[key] = (first, count + n)
        self.shown, self.hidden = {}, {}
        return totals

    def flush(self, logger: logging.Logger) -> int:
        """Log one line per collapsed template on ``logger``; returns how many."""
        totals = self.collect()
        for (_, level, _), (example, n) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
            short = example if len(example) <= 160 else example[:157] + "…"
            logger.log(level, "%s (repeated %d more time%s)", short, n, "" if n == 1 else "s",
                       extra={"repeat_summary": True})  # fmt: skip
        return len(totals)

    def close(self) -> None:
        """Remove the tally folder this filter created (only in the creating process)."""
        if self._own_tally and os.getpid() == self._owner:
            shutil.rmtree(self.tally_dir, ignore_errors=True)


def _strip_run(record: logging.LogRecord) -> str:
    """The formatted message without the run prefix :class:`RunNameFilter` adds."""
    message = record.getMessage()
    run = getattr(record, "run", "")
    if run and getattr(record, "template", None) is not None and message.startswith(run + ": "):
        return message[len(run) + 2 :]
    return message


def format_duration(seconds: float) -> str:
    """``"35 s"``, ``"4 min"``, ``"1 h 05 min"``.

    Examples
    --------
    >>> format_duration(35.2), format_duration(250), format_duration(3900)
    ('35 s', '4 min', '1 h 05 min')
    """
    seconds = max(0.0, float(seconds))
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(int(round(seconds / 60)), 60)
    return f"{hours} h {minutes:02d} min"


def eta_text(done: float, total: float, elapsed: float) -> str:
    """``"35 s, ~2 min left"``: elapsed time and the rest at the same pace.

    Examples
    --------
    >>> eta_text(400, 2000, 35.0)
    '35 s, ~2 min left'
    >>> eta_text(0, 10, 3.0)
    '3 s'
    """
    text = format_duration(elapsed)
    if 0 < done < total:
        text += f", ~{format_duration(elapsed / done * (total - done))} left"
    return text


class ProgressLine:
    """Periodic progress lines for a loop whose stderr may not be a terminal.

    :meth:`update` logs ``"<label>: <unit> k/N, <details>, 35 s, ~2 min left"``
    when the work crosses the next ``every`` fraction, but at most once per
    ``min_interval_s`` seconds, and always at the end.

    Parameters
    ----------
    label : str
        E.g. ``"training SIGNAPremier→Prisma"``.
    total : int
    logger : logging.Logger
    unit : str
    every : float
        Fraction of ``total`` between lines.
    min_interval_s : float
    clock : callable
        Seconds, monotonic (injected by tests).
    """

    def __init__(
        self,
        label: str,
        total: int,
        logger: logging.Logger,
        *,
        unit: str = "iteration",
        every: float = 0.1,
        min_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.total, self.logger, self.unit = label, max(int(total), 1), logger, unit
        self.step = max(1, int(round(self.total * every)))
        self.min_interval_s, self.clock = min_interval_s, clock
        self.start = self.last = clock()
        self.next = self.step

    def update(self, done: int, details: str = "") -> bool:
        """Log a line if one is due; returns whether it did."""
        now = self.clock()
        final = done >= self.total
        if not final and (done < self.next or now - self.last < self.min_interval_s):
            return False
        self.next = (done // self.step + 1) * self.step
        self.last = now
        extra = f", {details}" if details else ""
        self.logger.info("%s: %s %d/%d%s, %s", self.label, self.unit, done, self.total, extra,
                         eta_text(done, self.total, now - self.start))  # fmt: skip
        return True
