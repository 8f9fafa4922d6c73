"""Find HARP models for the sites of a study (``OUT/models/`` and ``--model``).

A model is ``models/harp_src-<S>_tgt-<T>.safetensors`` with its JSON card beside
it; the card says which sites it maps and the SH convention it expects.  Only
the card is read here; the weights are loaded (and verified) where they are used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bids_harmony.errors import BidsHarmonyError

LOGGER = logging.getLogger(__name__)

MODELS_DIR = "models"


class ModelSelectionError(BidsHarmonyError, ValueError):
    """Models that do not fit the data or are ambiguous."""


def model_stem(
    source_site: str, target_site: str, *, method: str = "harp", acq: str | None = None
) -> str:
    """``<method>_src-<S>_tgt-<T>[_acq-<A>]`` (``acq``: a model of one raw protocol)."""
    return f"{method}_src-{source_site}_tgt-{target_site}" + (f"_acq-{acq}" if acq else "")


def read_card(path: Path) -> dict[str, Any]:
    """The JSON card of a model file, with a clear error when absent or broken."""
    card_path = path.with_suffix(".json")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelSelectionError(
            f"{path}: its model card {card_path.name} is missing; a HARP model is the "
            ".safetensors file plus its .json card written by 'bids-harmony ... train'."
        ) from None
    except (OSError, ValueError) as err:
        raise ModelSelectionError(f"{card_path}: unreadable model card ({err}).") from err
    for key in ("source_site", "target_site"):
        if key not in card:
            raise ModelSelectionError(f"{card_path}: the model card has no '{key}'.")
    return card


def select_models(
    output_dir: Path,
    extra: Iterable[Path],
    sites: Iterable[str],
    *,
    target_site: str | None,
    device: str,
    expect: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """One model per source site present in the data.

    Models given explicitly (``extra``) must map a site of the data and win over
    those found in ``output_dir/models``.  Returns, per source site, what
    :func:`bids_harmony.workflows.participant.init_dwi_run_wf` needs.
    """
    sites = set(sites)
    explicit = [Path(p).absolute() for p in extra]
    for path in explicit:
        if not path.is_file():
            raise ModelSelectionError(f"--model {path}: file not found.")
    found = sorted((Path(output_dir) / MODELS_DIR).glob("harp_src-*_tgt-*.safetensors"))
    chosen: dict[str, dict[str, Any]] = {}
    for path in [*explicit, *found]:
        card = read_card(path)
        source, target = card["source_site"], card["target_site"]
        if source not in sites:
            if path in explicit:
                raise ModelSelectionError(
                    f"--model {path} maps site '{source}' to '{target}', but the selected "
                    f"data has no '{source}' session (sites: {', '.join(sorted(sites))})."
                )
            continue
        if target_site is not None and target != target_site:
            continue
        if source in chosen:
            if chosen[source]["explicit"] and path not in explicit:
                continue  # --model overrides what OUT/models holds
            raise ModelSelectionError(
                f"two HARP models for site '{source}': {chosen[source]['file']} and "
                f"{path}; choose one with --target-site or --model."
            )
        chosen[source] = {
            "file": str(path),
            "explicit": path in explicit,
            "info": {"file": path.name, "sha256": card.get("sha256", ""),
                     "source_site": source, "target_site": target},
            "expect": expect,
            "device": device,
        }  # fmt: skip
    for source, entry in sorted(chosen.items()):
        LOGGER.info("HARP model for site %s: %s", source, entry["file"])
    return chosen


def _select_per_site_and_acq(
    output_dir: Path, sites: Iterable[str], *, target_site: str | None, method: str, title: str
) -> dict[tuple[str, str | None], Path]:
    """Models ``<method>_src-*_tgt-*`` in ``OUT/models`` by (source site, raw ``acq``) of the
    data's sites; two for one key are an error (``title`` names the method in messages)."""
    sites = set(sites)
    chosen: dict[tuple[str, str | None], Path] = {}
    pattern = f"{method}_src-*_tgt-*.safetensors"
    for path in sorted((Path(output_dir) / MODELS_DIR).glob(pattern)):
        card = read_card(path)
        if card["source_site"] not in sites:
            continue
        if target_site is not None and card["target_site"] != target_site:
            continue
        key = (card["source_site"], card.get("acq"))
        if key in chosen:
            raise ModelSelectionError(
                f"two {title} models for site '{key[0]}'"
                + (f" acq-{key[1]}" if key[1] else "")
                + f": {chosen[key]} and {path}; choose one with --target-site."
            )
        chosen[key] = path
        LOGGER.info("%s model for site %s%s: %s", title, key[0],
                    f" acq-{key[1]}" if key[1] else "", path)  # fmt: skip
    return chosen


def select_rish_models(
    output_dir: Path, sites: Iterable[str], *, target_site: str | None
) -> dict[tuple[str, str | None], Path]:
    """LinearRISH models in ``OUT/models`` by (source site, raw ``acq``) of the data's sites."""
    return _select_per_site_and_acq(output_dir, sites, target_site=target_site, method="rish",
                                    title="LinearRISH")  # fmt: skip


def select_combat_models(
    output_dir: Path, runs: Iterable[Any], *, target_site: str | None
) -> dict[str | None, tuple[Path, dict[str, Any]]]:
    """ComBat models (file, card) in ``OUT/models`` by raw ``acq``, checked against ``runs``.

    A human run of a protocol with a model must be of a site the model was fitted
    on: ComBat never estimated an unseen site's effects, so such a run is an error
    (the message says how to refit).  Phantom runs are never harmonized by ComBat.
    """
    from bids_harmony.methods.combat.errors import UnseenSiteError

    chosen: dict[str | None, tuple[Path, dict[str, Any]]] = {}
    for path in sorted((Path(output_dir) / MODELS_DIR).glob("combat_tgt-*.safetensors")):
        card_path = path.with_suffix(".json")
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ModelSelectionError(f"{card_path}: unreadable model card ({err}).") from err
        if target_site is not None and card.get("target_site") != target_site:
            continue
        acq = card.get("acq")
        if acq in chosen:
            raise ModelSelectionError(
                f"two ComBat models for the protocol{' acq-' + acq if acq else ''}: "
                f"{chosen[acq][0]} and {path}; choose one with --target-site."
            )
        chosen[acq] = (path, card)
    for acq, (path, card) in chosen.items():
        fitted = set(card.get("sites", []))
        unseen = sorted({f"{r.site} (sub-{r.subject}" + (f" ses-{r.session})" if r.session
                                                          else ")")
                         for r in runs if not r.is_phantom and r.site not in fitted
                         and r.entities.get("acquisition") == acq})  # fmt: skip
        if unseen:
            raise UnseenSiteError(
                f"ComBat cannot harmonize an unseen site: {', '.join(unseen[:5])} "
                f"{'...' if len(unseen) > 5 else ''}is not among the sites the model "
                f"{path.name} was fitted on ({', '.join(sorted(fitted))}); its site effect was "
                "never estimated. Refit with it: run the participant level on these sessions "
                "with '--methods harp rish' (ComBat left out), then 'train --method combat' "
                "again; or leave them out with --participant-label/--session-label."
            )
        LOGGER.info("ComBat model for protocol %s: %s", acq or "(no acq)", path)
    return chosen


def select_dki_models(
    output_dir: Path, sites: Iterable[str], *, target_site: str | None
) -> dict[tuple[str, str | None], Path]:
    """DKI CNN models in ``OUT/models`` by (source site, raw ``acq``) of the data's sites."""
    return _select_per_site_and_acq(output_dir, sites, target_site=target_site,
                                    method="dkicnn", title="DKI CNN")  # fmt: skip
