"""Where the kit's shipped files live, in a checkout and in an installed wheel alike.

The repository keeps them in `data/` at its top level; the wheel carries the same tree as
`mikit/data/` (pyproject maps the one onto the other). Every module asks here, never `__file__`.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
# A wheel (`pip install .`, Colab) has mikit/data/; a checkout, editable or not, has ../data/.
DATA_DIR = PACKAGE / "data" if (PACKAGE / "data").is_dir() else PACKAGE.parent / "data"
ZOO_DIR = DATA_DIR / "zoo"
SAE_DIR = DATA_DIR / "saes"
XATTN_DIR = DATA_DIR / "xattn"
CIRCUITS_DIR = DATA_DIR / "circuits"

