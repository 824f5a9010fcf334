"""DICOM JSON (PS3.18 F.2) of one instance, built once at ingest.

Values longer than the bulk data threshold become ``BulkDataURI``s.  The URIs are stored with a
marker in place of the node's base URL, which is substituted when the metadata is served, so the
stored JSON does not depend on how the node is reached.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

BASE_MARKER = "@@PIXPORT_BASE@@/"

# pydicom's reading validation mode is one global that ``strict_reading()`` swaps and restores;
# two threads doing so at once can leave it wrong for everyone.  Every use of pydicom that
# depends on the mode holds this lock.
PYDICOM_MODE_LOCK = threading.RLock()
PIXEL_DATA_KEY = "7FE00010"


def bulk_data_path(uids: tuple[str, str, str, str], tag: int, occurrence: int) -> str:
    """Path, relative to the DICOMweb root, of one bulk data value."""
    _, sop, series, study = uids
    return f"studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag:08X}/{occurrence}"


def build_metadata(
    dataset: Dataset,
    uids: tuple[str, str, str, str],
    bulk_data_threshold: int,
    pixel_data_vr: str | None,
) -> dict[str, Any]:
    """DICOM JSON of ``dataset`` (read without its Pixel Data) plus a Pixel Data BulkDataURI.

    Bulk values are numbered by their tag and order of appearance (depth first), which is how
    ``bulkdata/{tag}/{occurrence}`` finds them again.
    """
    seen: defaultdict[int, int] = defaultdict(int)

    def bulk_uri(element: DataElement) -> str:
        occurrence = seen[element.tag]
        seen[element.tag] += 1
        return BASE_MARKER + bulk_data_path(uids, element.tag, occurrence)

    with PYDICOM_MODE_LOCK:
        metadata: dict[str, Any] = dataset.to_json_dict(
            bulk_data_threshold=bulk_data_threshold,
            bulk_data_element_handler=bulk_uri,
            suppress_invalid_tags=True,
        )
    if pixel_data_vr is not None:
        metadata[PIXEL_DATA_KEY] = {
            "vr": pixel_data_vr if pixel_data_vr in {"OB", "OW"} else "OW",
            # After any nested (icon image) Pixel Data, in the order a depth-first walk meets them.
            "BulkDataURI": BASE_MARKER + bulk_data_path(uids, 0x7FE00010, seen[0x7FE00010]),
        }
    return metadata


def with_base(document: bytes, base_url: str) -> bytes:
    """Substitute the node's base URL (no trailing slash) into stored JSON."""
    return document.replace(BASE_MARKER.encode(), base_url.encode() + b"/")
