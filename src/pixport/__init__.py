"""PixPort: a medical image exchange that replaces the patient's CD.

The names below are imported on first use, so that a light process (the server's supervisor,
a CLI command that only reads settings) does not load pydicom, numpy and SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pixport.archive.node import Archive
    from pixport.config import Settings, load_settings
    from pixport.errors import PixportError
    from pixport.wiring import build_archive

__version__ = "0.1.0"
__all__ = ["Archive", "PixportError", "Settings", "__version__", "build_archive", "load_settings"]

_LAZY = {
    "Archive": "pixport.archive.node",
    "PixportError": "pixport.errors",
    "Settings": "pixport.config",
    "load_settings": "pixport.config",
    "build_archive": "pixport.wiring",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        msg = f"module 'pixport' has no attribute {name!r}"
        raise AttributeError(msg)
    return getattr(importlib.import_module(module), name)
