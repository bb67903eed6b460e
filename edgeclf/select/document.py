"""``selection.json``: the build's record of the backbone selection, as a typed document.

The select stage writes it (the selection's choice, budgets and every candidate configuration,
each marked with whether its pretrained weights are available here); the train stage adds the
recipe search's trial table when one ran; the report and the later stages read it back through
:func:`read_selection`, so a damaged file is one clear error naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from edgeclf._io import read_document, write_json
from edgeclf.errors import ConfigError
from edgeclf.select.selection import ACCURACY_RULE, Candidate, SelectionBudgets

SELECTION_FILE = "selection.json"


class SelectionRow(Candidate):
    """A candidate configuration, and whether its backbone's pretrained weights are here."""

    weights_here: bool = False


class SelectionDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profile: str
    budgets: SelectionBudgets
    choice: Candidate
    justification: str
    #: why the choice is not the selection's first (its weights are not available here), or ""
    note: str = ""
    accuracy_rule: str = ACCURACY_RULE
    candidates: list[SelectionRow]
    #: the fixed-width text table of every candidate
    table: str = ""
    #: the recipe search's trial table (``edgeclf.train.search``), when one ran
    search: dict[str, Any] | None = None

    def fitting_backbones_with_weights(self) -> list[str]:
        return sorted({c.backbone for c in self.candidates if c.fits and c.weights_here})

    def rows_at(self, backbone: str, resolution: int) -> list[SelectionRow]:
        return [c for c in self.candidates if c.backbone == backbone and c.resolution == resolution]

    def to_json(self) -> dict[str, Any]:
        doc = self.model_dump(mode="json")
        if doc["search"] is None:  # no search ran: no key (as the select stage writes it)
            del doc["search"]
        return doc


def write_selection(out: Path, doc: SelectionDocument) -> Path:
    path = Path(out) / SELECTION_FILE
    write_json(path, doc.to_json())
    return path


def read_selection(out: Path) -> SelectionDocument:
    path = Path(out) / SELECTION_FILE
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: the build's select stage did not run; run `edgeclf build` again")
    return read_document(path, SelectionDocument, "run the build's select stage again")
