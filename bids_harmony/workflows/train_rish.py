"""``train --method rish``: LinearRISH models from traveling subjects.

For every source site → target site and raw ``acq`` protocol with traveling
subjects (two sessions at each site, :func:`~bids_harmony.bids.group_inputs.select_traveling`):
a study FA template is built from the target-site sessions (or ``--template``),
every session's FA is registered to it (one node per session, in parallel), the
RISH features are warped there and the per-band scale maps fitted
(:class:`~bids_harmony.interfaces.group_level.FitRish`); the model
(``OUT/models/rish_src-<S>_tgt-<T>[_acq-<A>].safetensors``: the scale maps and
site templates per shell, the FA template and its affine) is written by
:class:`SaveRishModel`.  The participant level applies it to the source site's
sessions (registering each to the model's template), writing ``desc-rish``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from bids_harmony.config import Config
from bids_harmony.errors import NoDataError
from bids_harmony.workflows.locking import hold_locks, level_keys, releases_locks

LOGGER = logging.getLogger(__name__)
#: Steps counted in the progress lines: node-name word -> verb.
RISH_STEPS = {"register": "registered", "fit": "fitted"}


class _SaveInputSpec(BaseInterfaceInputSpec):
    model = traits.Any(mandatory=True, desc="RishModel fitted in template space")
    template_file = File(exists=True, mandatory=True)
    models_dir = traits.Str(mandatory=True)
    stem = traits.Str(mandatory=True)
    card = traits.Dict(mandatory=True)


class _SaveOutputSpec(TraitedSpec):
    out_file = traits.Str(desc="the model file in OUT/models")


class SaveRishModel(SimpleInterface):
    """Write a LinearRISH model (scales, FA template, affine) and its card."""

    input_spec = _SaveInputSpec
    output_spec = _SaveOutputSpec
    always_run = True  # the model lives outside the work directory

    def _run_interface(self, runtime):
        import nibabel as nb

        from bids_harmony.bids.derivatives import software_versions
        from bids_harmony.bids.io import sha256_file
        from bids_harmony.methods.registry import get_method

        if self.inputs.model is None:
            raise NoDataError(f"{self.inputs.stem}: no traveling subject was registered to the "
                              "template; no LinearRISH model.")  # fmt: skip
        img = nb.load(self.inputs.template_file)
        model = dataclasses.replace(self.inputs.model,
                                    reference=np.asarray(img.dataobj, np.float32),
                                    affine=img.affine)  # fmt: skip
        card = {
            **self.inputs.card,
            "template_sha256": sha256_file(Path(self.inputs.template_file)),
            "software_versions": software_versions(),
        }
        path = get_method("rish").save(model, Path(self.inputs.models_dir) / self.inputs.stem,
                                       card)  # fmt: skip
        self._results["out_file"] = str(path)
        return runtime


def _name(*parts: str | None) -> str:
    return "_".join(re.sub(r"\W", "", p) for p in parts if p)


@releases_locks
def run_train_rish(config: Config) -> int:
    """Fit and save one LinearRISH model per site pair and protocol; the exit code."""
    from nipype.pipeline import engine as pe

    from bids_harmony.bids.group_inputs import select_traveling
    from bids_harmony.methods.catalog import MODELS_DIR, model_stem
    from bids_harmony.methods.model_file import sh_convention
    from bids_harmony.workflows.execution import level_workflow, run_steps
    from bids_harmony.workflows.group import common_space_wf, scenario_sessions
    from bids_harmony.workflows.train import training_sites, write_description

    study, target, sources = training_sites(config)
    workflow, log_dir = level_workflow(config, "bids_harmony_train_rish_wf")
    n_steps, planned = 0, []
    for source in sources:
        for sel in select_traveling(study, source, target):
            if len(sel.subjects) < 1:
                LOGGER.warning("%s -> %s%s: no traveling subject with two sessions at each "
                               "site; no LinearRISH model.", source, target,
                               f" acq-{sel.acq}" if sel.acq else "")  # fmt: skip
                continue
            scen = scenario_sessions(config, sel)
            sub = pe.Workflow(name=_name("rish", source, "to", target, sel.acq))
            space, registered = common_space_wf(sub, config, scen)
            fit = pe.Node(_fit_node(scen), name="fit_rish")
            sub.connect([(space, fit, [("template", "template_file")]),
                         (registered, fit, [("out", "transforms")])])  # fmt: skip
            stem = model_stem(source, target, method="rish", acq=sel.acq)
            save = pe.Node(SaveRishModel(
                models_dir=str(config.output_dir / MODELS_DIR), stem=stem,
                card={"source_site": source, "target_site": target, "acq": sel.acq,
                      "shells": scen.labels, "training_subjects": sel.subjects,
                      "sh_convention": sh_convention(config.sh_order), "seed": config.seed,
                      "template": str(config.template) if config.template else
                      "study FA template of the target-site sessions",
                      "registration": f"ANTs {config.group_transform} of each session FA"},
            ), name="ds_model")  # fmt: skip
            sub.connect([(fit, save, [("model", "model")]),
                         (space, save, [("template", "template_file")])])  # fmt: skip
            workflow.add_nodes([sub])
            n_steps += len(scen.sessions) + 1
            planned.append(stem)
    if not planned:
        raise NoDataError(
            f"no traveling subject has two sessions at a source site and at {target}; "
            "LinearRISH needs traveling subjects (human participants scanned at both sites)."
        )
    hold_locks(config, level_keys(config, study))
    write_description(config)
    run_steps(workflow, config, log_dir, n_steps, RISH_STEPS)
    for stem in planned:
        LOGGER.info("Saved %s", config.output_dir / MODELS_DIR / f"{stem}.safetensors")
    return 0


def _fit_node(scen) -> SimpleInterface:
    from bids_harmony.interfaces.group_level import FitRish

    return FitRish(source=scen.source, target=scen.target, labels=scen.labels)
