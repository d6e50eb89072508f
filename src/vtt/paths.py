"""Where vtt's shipped files (jobs/, deepspeed/) are: the working directory first, then the install."""

from __future__ import annotations

import os
from pathlib import Path

# src/vtt/paths.py -> the repository (or image) root that holds jobs/ and deepspeed/
INSTALL_ROOT = Path(os.environ.get("VTT_HOME", Path(__file__).resolve().parents[2]))


def shipped(relative: str | Path) -> Path:
    """`relative` under the working directory when it is there, else under vtt's own root."""
    here = Path(relative)
    if here.exists() or here.is_absolute():
        return here
    return INSTALL_ROOT / relative
