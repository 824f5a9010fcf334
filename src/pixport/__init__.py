"""PixPort: a medical image exchange that replaces the patient's CD."""

from pixport.archive.node import Archive
from pixport.config import Settings, load_settings
from pixport.errors import PixportError
from pixport.wiring import build_archive

__version__ = "0.1.0"
__all__ = ["Archive", "PixportError", "Settings", "__version__", "build_archive", "load_settings"]
