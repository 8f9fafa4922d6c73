"""Which methods the group level evaluates: every one with outputs, or those asked for.

Fast: participant outputs are tiny NIfTI files written here (two traveling subjects,
two sessions at each site, one shell); harmonized maps are the raw maps copied under
the ``desc-<method>`` names, as the participant level would name them.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import nibabel as nb
import numpy as np
import pytest

from bids_harmony.bids.derivatives import sidecar_path
from bids_harmony.bids.group_inputs import KINDS, Selection, ShellMaps
from bids_harmony.bids.reader import RunOutputs
from bids_harmony.config import Config
from bids_harmony.errors import NoDataError
from bids_harmony.interfaces.group_level import SessionMaps
from bids_harmony.workflows.group import (
    COMBAT_IN_GROUP,
    Scenario,
    choose_methods,
    method_plan,
    missing_maps,
)

LABEL = "b1000"
SOURCE, TARGET = "GE", "Prisma"


def _write(root: Path, relpath: Path) -> None:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.save(nb.Nifti1Image(np.ones((3, 3, 3), np.float32), np.eye(4)), path)
    (root / sidecar_path(relpath)).write_text("{}")


def _session(out: Path, subject: str, ses: str) -> SessionMaps:
    outputs = RunOutputs.from_entities(out, {"sub": subject, "ses": ses}, [1000.0])
    for kind in KINDS:
        _write(out, outputs.names.shell_map(LABEL, kind))
    _write(out, outputs.names.mask())
    return SessionMaps(key=outputs.names.prefix, subject=subject,
                       label=f"sub-{subject} ses-{ses}", mask=outputs.mask(required=True),
                       shells={LABEL: _shell(outputs)})  # fmt: skip


def _shell(outputs: RunOutputs) -> ShellMaps:
    """What :func:`bids_harmony.bids.group_inputs.run_shells` reads of a run's shell."""
    raw = {kind: outputs.root / outputs.names.shell_map(LABEL, kind) for kind in KINDS}
    harp = {kind: outputs.shell_map(LABEL, kind, "harp") for kind in KINDS}
    found = {kind: path for kind, path in harp.items() if path is not None}
    return ShellMaps(None, LABEL, outputs, raw, found if len(found) == len(KINDS) else {})


def _copy_as(session: SessionMaps, method: str, kinds=("fa", "md", "gfa")) -> None:
    """The session's raw maps copied under the ``desc-<method>`` names (with sidecars)."""
    maps = session.shells[LABEL]
    for kind in kinds:
        raw, harmonized = maps.raw[kind], maps.file(kind, method)
        shutil.copyfile(raw, harmonized)
        shutil.copyfile(sidecar_path(raw), sidecar_path(harmonized))


def _scenario(out: Path) -> Scenario:
    subjects = ("01", "02")
    source = [_session(out, s, f"{SOURCE}{k}") for s in subjects for k in (1, 2)]
    target = [_session(out, s, f"{TARGET}{k}") for s in subjects for k in (1, 2)]
    sel = Selection(SOURCE, TARGET, None, {s: {} for s in subjects}, [])
    return Scenario(sel, source, target, [LABEL], LABEL, f"src-{SOURCE}_tgt-{TARGET}")


def _config(out: Path, methods=()) -> Config:
    return Config(bids_dir=out.parent / "bids", output_dir=out, analysis_level="group",
                  work_dir=out.parent / "work", methods=tuple(methods))  # fmt: skip


def _with_harp(scen: Scenario) -> Scenario:
    """The scenario re-read after HARP outputs (SH included) were written for its sources."""
    for s in scen.source:
        _copy_as(s, "harp", KINDS)
    source = [SessionMaps(s.key, s.subject, s.label, s.mask, {LABEL: _shell(
        s.shells[LABEL].outputs)}) for s in scen.source]  # fmt: skip
    return Scenario(scen.selection, source, scen.target, scen.labels, scen.ref, scen.stem)


def test_combat_is_evaluated_when_every_source_session_has_its_maps(tmp_path):
    out = tmp_path / "out"
    scen = _scenario(out)
    chosen = choose_methods(_config(out), scen)
    assert chosen.methods == ("rish",) and chosen.rish_fit  # nothing trained: RISH fitted here
    for s in scen.source:  # the target site's sessions need none (ComBat leaves them as they are)
        _copy_as(s, "combat")
    assert missing_maps(scen, "combat") == []
    chosen = choose_methods(_config(out), scen)
    assert chosen.methods == ("rish", "combat") and chosen.rish_fit
    # With HARP outputs too: the registry's order.
    assert choose_methods(_config(out), _with_harp(scen)).methods == ("harp", "rish", "combat")
    # Asked for alone: ComBat only, nothing fitted here.
    only = choose_methods(_config(out, ["combat"]), scen)
    assert only.methods == ("combat",) and not only.rish_fit
    assert choose_methods(_config(out, ["rish"]), scen).methods == ("rish",)


def test_incomplete_combat_outputs_leave_it_out_or_stop_when_asked_for(tmp_path):
    out = tmp_path / "out"
    scen = _scenario(out)
    for s in scen.source:
        _copy_as(s, "combat")
    last = scen.source[-1].shells[LABEL]
    gfa = last.file("gfa", "combat")
    sidecar_path(gfa).unlink()  # an interrupted write: the map without its sidecar
    assert missing_maps(scen, "combat") == [gfa]
    assert choose_methods(_config(out), scen).methods == ("rish",)
    with pytest.raises(NoDataError) as err:
        choose_methods(_config(out, ["combat"]), scen)
    message = str(err.value)
    assert "--methods combat" in message and gfa.name in message
    assert f"train --method combat --target-site {TARGET}" in message
    assert "participant" in message
    # HARP asked for without outputs still says what to run.
    with pytest.raises(NoDataError, match="no HARP outputs"):
        choose_methods(_config(out, ["harp"]), scen)


def test_method_plan_counts_combat_as_a_method_with_outputs(tmp_path):
    out = tmp_path / "out"
    stem = f"src-{SOURCE}_tgt-{TARGET}"
    combat = SimpleNamespace(stem=stem, methods=("rish", "combat"), rish_fit=True)
    plan = method_plan(_config(out), [combat])
    assert plan.startswith("No HARP outputs for GE → Prisma")
    nothing = SimpleNamespace(stem=stem, methods=("rish",), rish_fit=True)
    assert "no ComBat outputs (desc-combat)" in method_plan(_config(out), [nothing])
    assert "which include these traveling subjects" in COMBAT_IN_GROUP


def test_the_cli_lets_group_evaluate_combat():
    from bids_harmony.cli.parser import build_parser
    from bids_harmony.cli.run import config_from_args, refuse_unavailable_methods

    args = build_parser().parse_args(["in", "out", "group", "--methods", "combat"])
    config = config_from_args(args)
    assert config.methods == ("combat",)
    refuse_unavailable_methods(config)  # no refusal any more
