"""Write a whole simulated study as a BIDS dataset, and regenerate its signals.

The file operations are delegated to :mod:`bids_harmony.simulate.bids_writer`.
A :class:`~bids_harmony.simulate.zoo.PhantomScenario` (default ``ZOO["default"]``)
chooses what the phantoms are and do; it is recorded in ``simulation.json``, and
each phantom session's temperature in its ``_phantom.json``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bids_harmony import __version__
from bids_harmony.errors import OutputDirectoryError
from bids_harmony.simulate import bids_writer as bw
from bids_harmony.simulate.brain import BrainSpec
from bids_harmony.simulate.docs import (
    DATASET_README,
    GROUND_TRUTH_README,
    human_lines,
    phantom_lines,
    site_lines,
    site_table,
)
from bids_harmony.simulate.phantom import PhantomSpec, temperature_factor
from bids_harmony.simulate.regenerate import regenerate_noiseless as regenerate_noiseless
from bids_harmony.simulate.study import (
    PROTOCOLS,
    SITES,
    RunData,
    SessionData,
    check_human_signal,
    get_size,
    multishell_protocol,
    object_grid,
    object_tissue,
    parse_session,
    protocols_for,
    resolve_scenario,
    shell_protocols,
    simulate_session,
    site_params,
    study_sessions,
    study_site,
    study_subjects,
    subject_spec,
)
from bids_harmony.simulate.tissue import Grid, Pose
from bids_harmony.simulate.zoo import PhantomScenario

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunInfo:
    """Files of one written ``dwi`` run."""

    subject: str
    session: str
    site: str
    acq: str
    n_volumes: int
    dwi: Path
    bval: Path
    bvec: Path
    sidecar: Path
    noiseless: Path | None
    #: The head's pose in this run when it differs from the session's (shells as runs).
    pose: Pose | None = None

    def record(self, root: Path) -> dict[str, Any]:
        """The run's entry in ``simulation.json`` (paths relative to ``root``)."""
        out = {
            "subject": self.subject,
            "session": self.session,
            "site": self.site,
            "acq": self.acq,
            "n_volumes": self.n_volumes,
            "dwi": self.dwi.relative_to(root).as_posix(),
            "noiseless": self.noiseless.relative_to(root).as_posix() if self.noiseless else None,
        }
        if self.pose is not None:  # moved since the session's pose (_pose.json)
            out["pose"] = {"angles_deg": list(self.pose.angles_deg),
                           "translation_mm": list(self.pose.translation_mm)}  # fmt: skip
        return out


@dataclass(frozen=True)
class StudyInfo:
    """What :func:`simulate_study` wrote."""

    root: Path
    size: str
    seed: int
    sites: tuple[str, ...]
    phantoms: tuple[str, ...]
    subjects: tuple[str, ...]
    sessions: tuple[str, ...]
    runs: tuple[RunInfo, ...]
    ground_truth: Path
    seconds: float
    scenario: str = "default"

    def summary(self) -> str:
        """A few lines for the terminal."""
        n_files = sum(1 for p in self.root.rglob("*") if p.is_file())
        cohort = self.scenario == "cohort"  # simulate_cohort: no phantoms, one session each
        lines = [
            f"Simulated BIDS {'cohort ' if cohort else ''}study ({self.size}, seed {self.seed}) "
            f"in {self.root}",
            f"  sites:    {', '.join(self.sites)}",
            f"  phantoms: {', '.join('sub-' + p for p in self.phantoms)}",
            f"  subjects: {', '.join('sub-' + s for s in self.subjects)}",
            f"  sessions: {', '.join('ses-' + s for s in self.sessions)}",
            f"  phantom scenario: {self.scenario}",
            f"  runs:     {len(self.runs)} dwi runs, {n_files} files, {self.seconds:.1f} s",
            f"  ground truth: {self.ground_truth}",
        ]
        if cohort:
            del lines[5]
            del lines[2]
        return "\n".join(lines)


class _BackgroundWriter:
    """Run file writes (mostly gzip, which releases the GIL) beside the simulation.

    At most ``max_pending`` writes are queued, bounding the memory they hold;
    :meth:`close` waits for all and re-raises the first error.
    """

    def __init__(self, max_pending: int = 6) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bids-writer")
        self._pending: deque[Future[Any]] = deque()
        self._max = max_pending

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> Future[Any]:
        while len(self._pending) >= self._max:
            self._pending.popleft().result()
        fut = self._pool.submit(fn, *args, **kwargs)
        self._pending.append(fut)
        return fut

    def close(self) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _check_output(root: Path, force: bool) -> None:
    if root.exists() and not root.is_dir():
        raise OutputDirectoryError(f"output path {root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()):
        if not force:
            raise OutputDirectoryError(
                f"output directory {root} is not empty; choose an empty or new directory, "
                "or force writing into it (existing files are overwritten, others kept)"
            )
        LOGGER.warning("writing into non-empty %s; unrelated files are kept", root)


def _participant(subject: str, spec: BrainSpec | PhantomSpec) -> dict[str, Any]:
    if isinstance(spec, PhantomSpec):
        return {
            "participant_id": f"sub-{subject}",
            "species": "phantom",
            "phantom": "true",
            "age": "n/a",
            "sex": "n/a",
        }
    return {
        "participant_id": f"sub-{subject}",
        "species": "homo sapiens",
        "phantom": "false",
        "age": spec.age,
        "sex": spec.sex,
    }


def _session_row(session: str, seed: int) -> dict[str, Any]:
    site = site_params(parse_session(session)[0], seed)
    return {
        "session_id": f"ses-{session}",
        "site": site.label,
        "manufacturer": site.manufacturer,
        "model": site.model,
    }


def _submit_run(
    writer: _BackgroundWriter,
    root: Path,
    data: SessionData,
    run: RunData,
    grid: Grid,
    write_noiseless: bool,
) -> RunInfo:
    sub, ses = data.subject, data.session
    writer.submit(
        bw.write_dwi_run,
        root,
        sub,
        ses,
        run.acq,
        run.image,
        grid.affine,
        run.bvals,
        run.bvecs,
        run.sidecar,
    )
    clean = None
    if write_noiseless:
        clean = bw.noiseless_path(root, sub, ses, run.acq)
        writer.submit(bw.write_nifti, clean, run.noiseless, grid.affine)
    paths = [
        bw.dwi_path(root, sub, ses, run.acq, ext) for ext in (".nii.gz", ".bval", ".bvec", ".json")
    ]
    return RunInfo(
        sub, ses, data.site.label, run.acq, int(run.image.shape[-1]), *paths, clean, run.pose
    )


def _phantom_state(data: SessionData, scenario: PhantomScenario) -> dict[str, Any] | None:
    """Content of a phantom session's ``_phantom.json`` (None for humans)."""
    if not isinstance(data.spec, PhantomSpec):
        return None
    return {
        "design": data.spec.design,
        "scenario": scenario.name,
        "temperature_delta_c": data.temperature_delta_c,
        "diffusivity_factor": round(temperature_factor(data.temperature_delta_c), 9),
        "repositioned": scenario.repositions,
        "pose": f"sub-{data.subject}_ses-{data.session}_pose.json",
        "Description": "Phantom state in this session. temperature_delta_c: offset (degC) "
        "from the design's nominal temperature (mixed/fibre: room temperature; nist: "
        "0 degC ice water); every phantom diffusivity (bath, vials, fibres) is multiplied "
        "by diffusivity_factor = 1 + 0.024 * temperature_delta_c. The posed maps of this "
        "folder include it; the subject-level tissue model and maps are nominal.",
    }


def simulate_study(
    out_dir: str | Path,
    *,
    size: str = "tiny",
    seed: int = 0,
    sites: tuple[str, ...] = SITES,
    force: bool = False,
    write_noiseless: bool = True,
    scenario: PhantomScenario | str | None = None,
    shells: tuple[float, ...] | None = None,
    human_signal: str = "gaussian",
    shells_as_runs: bool = False,
    run_gain: float = 1.0,
) -> StudyInfo:
    """Simulate and write a two-site phantom + traveling-subject BIDS study.

    Parameters
    ----------
    out_dir : path
        Dataset root (created; must be empty unless ``force``).
    size : {"tiny", "demo", "full"}
        ``tiny``: seconds, for tests; ``demo``: humans 44×44×28 voxels of 5 mm,
        phantoms 64×64×10 (``bids-harmony-demo`` in under 10 min on 2 cores);
        ``full``: 146×146×90 voxels at 1.5 mm (several GB on disk).
    seed : int
        Seeds every random quantity; the same seed gives byte-identical files.
    sites : tuple of str
        Scanner sites (first = source); default ``("GE", "Prisma")``.
    force : bool
        Write into a non-empty directory.
    write_noiseless : bool
        Also write each run's noise-free image under ``sourcedata/simulation``.
    scenario : PhantomScenario or str, optional
        Phantom scenario, or the name of a :data:`~bids_harmony.simulate.zoo.ZOO`
        entry (default ``"default"``: the study as before scenarios existed).
    shells : tuple of float, optional
        Shells of the multi-shell run of humans and phantoms: default b=1000, 2000
        (``acq-multishell``); ``(1000, 2000, 3000)`` writes ``acq-multishell3``.
    human_signal : {"gaussian", "kurtosis"}
        Human brains with one tensor per compartment (the default, as before issue
        15) or with WM and GM water pools (a kurtosis-bearing signal, and DKI truth
        maps per session).
    shells_as_runs : bool
        Humans get each shell of the multi-shell protocol as its own run
        (``acq-b1000``, ``acq-b2000``) with a slight head movement between the runs
        (:func:`~bids_harmony.simulate.study.simulate_session`); phantoms unchanged.
    run_gain : float
        With ``shells_as_runs``: receiver gain of each later run relative to the first.

    Returns
    -------
    StudyInfo

    Raises
    ------
    ScenarioError
        The scenario names a site outside ``sites`` or an unknown protocol (checked
        before anything is written).
    """
    start = time.perf_counter()
    root = Path(out_dir)
    get_size(size)
    scenario = resolve_scenario(scenario, tuple(sites))
    multishell = multishell_protocol(shells)
    check_human_signal(human_signal)
    if shells_as_runs:
        shell_protocols(multishell)  # before anything is written
    _check_output(root, force)
    root.mkdir(parents=True, exist_ok=True)
    phantoms, humans = study_subjects(size, scenario)
    sessions = study_sessions(sites)
    site_objs = [study_site(s, seed, scenario) for s in sites]
    runs: list[RunInfo] = []
    participants = []
    writer = _BackgroundWriter()
    try:
        for subject in phantoms + humans:
            spec = subject_spec(subject, size, seed, scenario, human_signal)
            participants.append(_participant(subject, spec))
            grid = object_grid(spec, size, scenario)
            ref = object_tissue(spec, grid, Pose())
            writer.submit(bw.write_subject_truth, root, subject, grid, spec, ref)
            for session in sessions:
                data = simulate_session(
                    subject,
                    session,
                    size=size,
                    seed=seed,
                    scenario=scenario,
                    shells=shells,
                    human_signal=human_signal,
                    shells_as_runs=shells_as_runs,
                    run_gain=run_gain,
                )
                writer.submit(
                    bw.write_session_truth,
                    root,
                    subject,
                    session,
                    data.pose,
                    data.tissue,
                    _phantom_state(data, scenario),
                    dki=isinstance(spec, BrainSpec) and data.tissue.has_pools,
                )
                for run in data.runs:
                    runs.append(_submit_run(writer, root, data, run, grid, write_noiseless))
            bw.write_sessions(root, subject, [_session_row(s, seed) for s in sessions])
    finally:
        writer.close()
    for site in site_objs:
        bw.write_site(root, site)
    fmt = {"size": size, "seed": seed, "version": __version__}
    call = f"size={size!r}, seed={seed}"
    if scenario.name != "default":  # keeps the default study's description as it was
        call += f", scenario={scenario.name!r}"
    if multishell != "multishell":
        call += f", shells={tuple(PROTOCOLS[multishell].shells)}"
    if human_signal != "gaussian":
        call += f", human_signal={human_signal!r}"
    if shells_as_runs:
        call += ", shells_as_runs=True" + (f", run_gain={run_gain:g}" if run_gain != 1 else "")
    bw.write_dataset_files(
        root,
        name=f"bids_harmony simulated two-site study ({size})",
        description=f"bids_harmony.simulate.simulate_study({call})",
        readme=DATASET_README.format(
            **fmt,
            site_lines=site_lines(site_objs),
            sessions=", ".join(sessions),
            phantom_lines=phantom_lines(
                phantoms,
                scenario.phantom_designs(len(phantoms)),
                protocols_for(phantoms[0], size, scenario, multishell),
                scenario,
            ),
            human_lines=human_lines(
                ", ".join(humans), multishell, human_signal, shells_as_runs=shells_as_runs
            ),
        ),
        participants=participants,
    )
    gt = bw.gt_dir(root)
    bw.write_text(
        gt / "README.md", GROUND_TRUTH_README.format(**fmt, site_table=site_table(site_objs))
    )
    bw.write_json(
        gt / "simulation.json",
        {
            "Generator": f"bids_harmony {__version__} simulate_study",
            "size": size,
            "seed": seed,
            "sites": list(sites),
            "source_site": sites[0],
            "target_site": sites[-1],
            "phantoms": list(phantoms),
            "subjects": list(humans),
            "sessions": list(sessions),
            "scenario": scenario.to_dict(),
            "shells": list(PROTOCOLS[multishell].shells),
            "human_signal": human_signal,
            "shells_as_runs": shells_as_runs,
            "run_gain": run_gain,
            "runs": [r.record(root) for r in runs],
        },
    )
    info = StudyInfo(
        root,
        size,
        seed,
        tuple(sites),
        phantoms,
        humans,
        sessions,
        tuple(runs),
        gt,
        time.perf_counter() - start,
        scenario.name,
    )
    LOGGER.info("simulated %d runs in %.1f s", len(runs), info.seconds)
    return info
