"""The hub: institution directory, patient index, manifest registry, audit, retrieval relay."""
