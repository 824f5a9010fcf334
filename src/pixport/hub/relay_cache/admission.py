"""Which relayed studies are worth a copy: those read through the hub more than once.

A study read once (an operator's check, one hospital importing it) would only take disk space
and a second transfer from its gateway (the copy is fetched again, in the background).
A study read again (a patient viewing it, several hospitals it was shared with) is likely to be
read again still.  So a copy is kept from a study's ``keep_after``-th read from the gateway on
(``hub.relay_cache_keep_after``; 1 keeps the first).  Reads are counted per manifest, in memory,
for the most recently read ``remembered`` manifests; a restart starts the counts afresh.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

REMEMBERED = 100_000


class Admission:
    """Counts reads from the gateway per manifest; says when one is worth a copy."""

    def __init__(self, keep_after: int, remembered: int = REMEMBERED) -> None:
        if keep_after < 1:
            msg = "keep_after is at least 1"
            raise ValueError(msg)
        self.keep_after = keep_after
        self._remembered = remembered
        self._reads: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def worth_keeping(self, manifest_id: str) -> bool:
        """Count one more read of ``manifest_id`` from the gateway; True once it deserves a copy."""
        if self.keep_after == 1:
            return True
        with self._lock:
            reads = self._reads.pop(manifest_id, 0) + 1
            self._reads[manifest_id] = reads  # now the most recent
            if len(self._reads) > self._remembered:
                self._reads.popitem(last=False)
        return reads >= self.keep_after
