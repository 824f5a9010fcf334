"""What the hub and a gateway agree on when the hub relays a DICOMweb read to the gateway.

Both sides import these; neither imports the other (the hub runs without any gateway code,
and a gateway without the hub's).
"""

from __future__ import annotations

GATEWAY_DICOMWEB = "/hub-access/dicomweb"  # where a gateway serves study-scoped reads to the hub
RELAY_BASE_HEADER = "pixport-relay-base"  # the hub's DICOMweb root, which URIs in relayed answers name
