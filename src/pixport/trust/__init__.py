"""Trust: keys, signed documents (manifests, the key directory), national keys, verification."""
