"""Resolve the campaign references of the settings (files, directories, builtin:<name>)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from engine.campaign import Campaign, builtin_campaign, load_campaign, load_campaigns


def resolve_campaigns(references: Iterable[str]) -> list[Campaign]:
    """Load every referenced campaign; names must be unique across them."""
    campaigns: list[Campaign] = []
    for ref in references:
        if ref.startswith("builtin:"):
            campaigns.append(builtin_campaign(ref.removeprefix("builtin:")))
            continue
        path = Path(ref)
        if path.is_dir():
            campaigns.extend(load_campaigns(path).values())
        elif path.is_file():
            campaigns.append(load_campaign(path))
        else:
            raise FileNotFoundError(f"campaign {ref!r}: no such file or directory")
    names = [c.name for c in campaigns]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"campaign names must be unique; repeated: {', '.join(duplicates)}")
    return campaigns
