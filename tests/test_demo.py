"""``bids-harmony-demo`` on the tiny study."""

from __future__ import annotations

import pytest

from bids_harmony.cli.demo import main

pytestmark = pytest.mark.slow


def test_demo_tiny(tmp_path, capsys):
    assert main([str(tmp_path / "demo"), "--size", "tiny", "--nprocs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "Derivatives:" in printed and "model-tensor_param-fa_dwimap" in printed
    assert "desc-harmonized_model-tensor_param-fa_dwimap" in printed
    derivatives = tmp_path / "demo" / "derivatives"
    assert (derivatives / "dataset_description.json").exists()
    assert (derivatives / "models" / "harp_src-SIGNAPremier_tgt-Prisma.safetensors").exists()
