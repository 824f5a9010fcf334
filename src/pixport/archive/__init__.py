"""The archive every node runs: ingest, query and retrieve, protocol-neutral."""
