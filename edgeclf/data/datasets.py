"""Real data sets that install from the package index, laid out as ImageFolder trees.

``elpv`` (PyPI ``elpv-dataset``; Deitsch et al., Solar Energy 2019; CC BY-NC-SA 4.0):
2,624 electroluminescence images of solar cells, 300x300 8-bit grey, each with
a defect probability of 0, 1/3, 2/3 or 1 given by an expert, and the cell type
(mono- or polycrystalline). The four probabilities become four classes.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from importlib import resources
from pathlib import Path

from edgeclf._io import atomic_write_text
from edgeclf.errors import DataError

#: Defect probability in elpv's labels.csv -> class folder name.
ELPV_CLASSES = {
    "0.0": "defect-0.00",
    "0.3333333333333333": "defect-0.33",
    "0.6666666666666666": "defect-0.67",
    "1.0": "defect-1.00",
}

#: Written last: its presence marks a complete tree, so an interrupted
#: materialisation is redone rather than used half-built.
_DONE = ".edgeclf-dataset-complete"


def _elpv_root() -> Path:
    try:
        root = resources.files("elpv_dataset") / "data"
    except ModuleNotFoundError:
        raise DataError(
            "the elpv data set is not installed; run `pip install elpv-dataset` (it is part of edgeclf's dependencies)"
        ) from None
    return Path(str(root))


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # other file system, or links not permitted
        shutil.copyfile(src, dst)


def materialize_elpv(dest: Path) -> Path:
    """Lay elpv out as ``dest/<class>/cellNNNN.png`` (hard links where possible).

    Also writes ``dest/metadata.csv`` (path, cell_type, defect_probability):
    extra columns a split manifest can carry for sliced evaluation.
    Idempotent: a complete tree is reused as is.
    """
    dest = Path(dest)
    if (dest / _DONE).is_file():
        return dest
    src = _elpv_root()
    labels = src / "labels.csv"
    if not labels.is_file():
        raise DataError(f"elpv-dataset is installed but has no labels.csv at {labels}; reinstall it")
    rows: list[tuple[str, str, str, str]] = []
    for line in labels.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise DataError(f"unexpected line in elpv labels.csv: {line!r}")
        rel, prob, cell_type = parts
        cls = ELPV_CLASSES.get(repr(float(prob)))
        if cls is None:
            raise DataError(f"unexpected defect probability {prob} in elpv labels.csv")
        rows.append((rel, cls, cell_type, prob))
    dest.mkdir(parents=True, exist_ok=True)
    for cls in ELPV_CLASSES.values():
        (dest / cls).mkdir(exist_ok=True)
    meta = io.StringIO()
    w = csv.writer(meta, lineterminator="\n")
    w.writerow(["path", "cell_type", "defect_probability"])
    for rel, cls, cell_type, prob in rows:
        name = Path(rel).name
        out = dest / cls / name
        if not out.exists():
            _link_or_copy(src / rel, out)
        w.writerow([f"{cls}/{name}", cell_type, f"{float(prob):.4f}"])
    atomic_write_text(dest / "metadata.csv", meta.getvalue())
    atomic_write_text(dest / _DONE, f"{len(rows)} images\n")
    return dest
