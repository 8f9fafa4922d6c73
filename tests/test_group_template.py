"""``--template``: a file, or a TemplateFlow name resolved from a local TEMPLATEFLOW_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nb
import numpy as np
import pytest


def _templateflow_home(root):
    tpl = root / "tpl-Tiny"
    tpl.mkdir(parents=True)
    description = {"Name": "templateflow", "BIDSVersion": "1.4.0"}
    (root / "dataset_description.json").write_text(json.dumps(description))
    (tpl / "template_description.json").write_text(json.dumps({"Identifier": "Tiny", "Name": "t"}))
    img = nb.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4))
    for name in ("tpl-Tiny_res-02_T1w.nii.gz", "tpl-Tiny_res-02_desc-FA_T1w.nii.gz",
                 "tpl-Tiny_res-01_T1w.nii.gz"):  # fmt: skip
        nb.save(img, tpl / name)
    return root


def _resolve(home, value):
    code = (
        "from bids_harmony.workflows.group import resolve_template\n"
        "from bids_harmony.errors import BidsHarmonyError\n"
        f"try:\n    print(resolve_template({value!r}).name)\n"
        "except BidsHarmonyError as e:\n    print('ERROR', e)\n"
    )
    env = {**os.environ, "TEMPLATEFLOW_HOME": str(home), "TEMPLATEFLOW_AUTOUPDATE": "0"}
    # a fresh process: templateflow reads TEMPLATEFLOW_HOME when it is imported
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return _templateflow_home(tmp_path_factory.mktemp("templateflow"))


def test_file_is_used_as_is(tmp_path):
    from bids_harmony.workflows.group import resolve_template

    path = tmp_path / "my_FA.nii.gz"
    nb.save(nb.Nifti1Image(np.ones((3, 3, 3), np.float32), np.eye(4)), path)
    assert resolve_template(str(path)) == path


def test_templateflow_name_prefers_fa_then_t1w(home):
    assert _resolve(home, "Tiny:res-02") == "tpl-Tiny_res-02_desc-FA_T1w.nii.gz"
    assert _resolve(home, "Tiny:res-01") == "tpl-Tiny_res-01_T1w.nii.gz"


def test_unknown_template_lists_what_is_there(home):
    out = _resolve(home, "MNI152NLin2009cAsym")
    assert out.startswith("ERROR") and "Tiny" in out and str(home) in out
