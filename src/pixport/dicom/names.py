"""Person Name (PN) handling for matching: three component groups, NFC, case-folded."""

from __future__ import annotations

import unicodedata

WILDCARDS = frozenset("*?")


def normalize(text: str) -> str:
    """NFC-normalize and case-fold, so that composed and decomposed Hangul, and any case, match."""
    return unicodedata.normalize("NFC", text).casefold()


def component_groups(value: str) -> tuple[str, str, str]:
    """Split ``Alphabetic=Ideographic=Phonetic`` into its three groups (missing ones empty)."""
    parts = value.split("=")
    parts += [""] * (3 - len(parts))
    return parts[0], parts[1], parts[2]


def search_forms(value: str) -> tuple[str, str]:
    """Return the two columns a name is matched on.

    ``groups``: each non-empty component group, normalized, separated by ``=`` and framed by
    ``=`` so that ``LIKE '%=hong^g%'`` tries every group.  ``tokens``: every name component of
    every group (and family+given run together, as Korean names are usually written: 홍길동),
    space-framed for fuzzy matching on word starts.
    """
    groups = [normalize(g) for g in component_groups(value) if g]
    tokens: list[str] = []
    for group in groups:
        components = [c.strip() for c in group.split("^") if c.strip()]
        tokens.extend(components)
        tokens.extend(word for c in components for word in c.split() if word != c)
        if len(components) >= 2:  # noqa: PLR2004  family and given name
            tokens.append(components[0] + components[1])
    return "=" + "=".join(groups) + "=", " " + " ".join(tokens) + " "
