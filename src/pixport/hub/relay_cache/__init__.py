"""The hub's relay cache: whole studies, as stored, kept after a verified relay and served again.

A study read through the hub as stored (the gateway's exact bytes: ``multipart/related`` of
``application/dicom`` parts, nothing transcoded; :func:`wants_as_stored`) often enough
(``admission``) is fetched once more from its gateway after that read, in the background
(``hub.api``: no reader waits on it), and written to a temporary file ``tmp-<random>.part`` in
``<hub.data_dir>/relay-cache/`` (:meth:`RelayCache.begin`, :class:`CacheFill`).  The writes
happen on one writer thread, in batches, never on the event loop.  When the body has arrived whole it is checked, on a
verifier thread and so off the request path, against the manifest it was read under
(``integrity``): its parts must be exactly the manifest's instances by SHA-256 and size.
Only then is the file fsynced and renamed to ``<manifest uuid>.study``, where the next read of
that manifest finds it (:meth:`RelayCache.find`).  A body that does not match is deleted and
reported (``on_integrity_failure``: the gateway served bytes its own signed manifest does not
describe).  A fetch cut short (a gateway that broke off, the hub stopping), a write that
failed (disk full) or a writer that fell behind: the temporary file is deleted and nothing
half-written is ever visible.

An entry is one file (``entries``): a header line (the manifest id, the ``Content-Type`` with
the gateway's boundary, the body's length) and the body.  One file, so one rename makes both
visible together, and a reader that opened an entry reads it whole even if it is replaced or
evicted meanwhile.  Names are the manifest id's UUID (random, made by the publishing gateway)
or random: never anything from DICOM attributes or patient data.

Keyed by manifest id, an entry is only ever found for the manifest the registry says is
current; the entries of superseded or withdrawn manifests are removed (:meth:`RelayCache.discard`,
:meth:`RelayCache.sweep`).  Bounded by ``hub.relay_cache_max_bytes``: the least recently used
entries are evicted.  Recency is kept in memory and in each entry's mtime, so it survives a
restart.  One process uses a cache folder at a time (``flock`` on ``.lock``); another runs
without one.

Its parts:

- ``negotiation.py``: which requests the cache may answer or fill (``Accept``, ``Cache-Control``);
- ``entries.py``: an entry's file: name, header, serving it in large chunks off the event loop;
- ``fill.py``: :class:`CacheFill`, a study's body on its way to a temporary file;
- ``integrity.py``: a body's parts against the manifest's instances (a streaming splitter);
- ``cache.py``: :class:`RelayCache`: the index, LRU eviction, the writer and verifier threads;
- ``admission.py``: :class:`Admission`: a copy is kept from a study's second read on (by default).
"""

from pixport.hub.relay_cache.admission import Admission
from pixport.hub.relay_cache.cache import FOLDER, RelayCache
from pixport.hub.relay_cache.entries import CachedStudy, entry_name
from pixport.hub.relay_cache.fill import CacheFill
from pixport.hub.relay_cache.integrity import IntegrityReport, PartDigests, check_body, compare_parts
from pixport.hub.relay_cache.negotiation import cache_directives, wants_as_stored

__all__ = [
    "FOLDER",
    "Admission",
    "CacheFill",
    "CachedStudy",
    "IntegrityReport",
    "PartDigests",
    "RelayCache",
    "cache_directives",
    "check_body",
    "compare_parts",
    "entry_name",
    "wants_as_stored",
]
