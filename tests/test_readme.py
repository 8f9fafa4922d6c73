"""The README's Python API block runs as written (in a temporary folder)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block(section: str) -> str:
    """The first ```python block after the heading ``section``."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {section}\n")
    match = re.search(r"```python\n(.*?)```", text[start:], flags=re.S)
    assert match, f"no python block under '## {section}'"
    return match.group(1)


@pytest.mark.slow
def test_python_api_block_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(python_block("Python API"), "README.md", "exec"), namespace)
    coeffs, harmonized = namespace["fits"][0].coeffs, namespace["harmonized"]
    assert harmonized.shape == coeffs.shape and np.isfinite(harmonized).all()
    assert {"fa", "md"} <= set(namespace["tensor"])
    assert (tmp_path / "harp.safetensors").is_file()


def test_headline_numbers_come_from_the_benchmark_results():
    """The README's headline table is the one benchmarks/headline.py writes from the
    committed results (benchmarks/results/headline.json), not typed by hand."""
    import importlib.util
    import json

    path = README.parents[0] / "benchmarks" / "headline.py"
    spec = importlib.util.spec_from_file_location("headline", path)
    headline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(headline)
    results = json.loads(headline.RESULTS.read_text())
    text = README.read_text(encoding="utf-8")
    assert headline.replace_block(text, headline.table(results)) == text
