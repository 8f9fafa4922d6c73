"""Run settings as one frozen dataclass, built by the CLI and passed down.

Nothing here acts on import; the top-level workflow builder is the only code
that reads the whole configuration, everything below it gets plain arguments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Config:
    """Settings of one ``bids-harmony`` invocation."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path
    participant_label: tuple[str, ...] = ()
    session_label: tuple[str, ...] = ()
    bids_filter_file: Path | None = None
    skip_bids_validation: bool = False
    ignore_checks: tuple[str, ...] = ()
    nprocs: int = 1
    omp_nthreads: int | None = None
    plugin_file: Path | None = None
    preproc: str = "auto"
    denoise: str = "none"
    remove_gibbs: bool = False
    motion_correction: bool = False
    sh_order: int = 8
    b_tolerance: float = 50.0
    b0_threshold: float = 50.0
    gfa: bool = True
    dki: bool = True
    site_map: Path | None = None
    phantom_label: tuple[str, ...] = ()
    target_site: str | None = None
    source_site: str | None = None
    models: tuple[Path, ...] = ()
    method: str = "harp"
    methods: tuple[str, ...] = ()
    device: str = "auto"
    harp_recipe: str = "default"
    harp_iterations: int | None = None
    voxel_rule: str = "auto"
    c00_window: tuple[float, float] = (1.0, 2.0)
    phantom_erode: int = 1
    template: Path | None = None
    group_transform: str = "SyN"
    min_train_voxels: int = 1000
    combat_covariates: tuple[str, ...] = ()
    combat_variant: str = "combat"
    combat_eb: str = "parametric"
    combat_mean_only: bool = False
    combat_smooth: tuple[str, ...] = ()
    combat_categorical: tuple[str, ...] = ()
    combat_atlas: Path | None = None
    dki_max_minutes: float = 15.0
    dki_max_epochs: int | None = None
    seed: int = 0
    verbose: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def recorded(self) -> dict[str, Any]:
        """Settings that shape the outputs, for sidecars (no machine paths)."""
        keys = (
            "preproc", "denoise", "remove_gibbs", "motion_correction", "sh_order",
            "b_tolerance", "b0_threshold", "seed",
        )  # fmt: skip
        return {key: getattr(self, key) for key in keys}

    def as_dict(self) -> dict[str, Any]:
        """Every setting, JSON-friendly."""
        return {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in dataclasses.asdict(self).items()
        }
