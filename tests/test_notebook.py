"""experiments/quickstart.ipynb runs top to bottom (tiny config) so it never rots."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "experiments" / "quickstart.ipynb"


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out["text"])
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
            parts.append(out["data"].get("text/html", ""))
    return "".join(parts)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACIN_QUICKSTART_TINY", "1")
    monkeypatch.setenv("TRACIN_QUICKSTART_OUT", str(tmp_path / "qs"))
    monkeypatch.setenv("XLA_FLAGS", "")  # the kernel sees one CPU device, like a laptop
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "commit the notebook without outputs"
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    assert "eval accuracy" in text
    assert "dense TracIn-WE scores: (4, " in text and "top proponents [" in text  # tracin_jax.influence
    # Word-level explanation rendered as highlighted HTML.
    assert "top proponents" in text and "background:rgba(22,163,74" in text
    precision = dict(re.findall(r"(\w+): precision@10 = ([0-9.]+)", text))
    assert set(precision) == {"tracin_we_topk", "tracin_last"}
    assert "| synthetic | AUC-DEL+ ↓ |" in text
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert (tmp_path / "qs" / "sweep" / "report" / "deletion_curves.png").exists()
    assert not (tmp_path / "qs" / "agnews_run").exists()  # the TFDS cell is off by default
