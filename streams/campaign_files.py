"""Resolve the campaign references of the settings (files, directories, builtin:<name>)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from engine.campaign import (
    Campaign,
    CampaignError,
    builtin_campaign,
    load_campaign,
    load_campaigns,
)


def resolve_campaigns(references: Iterable[str]) -> list[Campaign]:
    """Load every referenced campaign; names must be unique across them."""
    campaigns: list[Campaign] = []
    for ref in references:
        if ref.startswith("builtin:"):
            campaigns.append(builtin_campaign(ref.removeprefix("builtin:")))
            continue
        path = Path(ref)
        if path.is_dir():
            found = load_campaigns(path).values()
            if not found:  # a worker would run and never decide: say so instead
                raise CampaignError(ref, "no campaign files (*.toml) in this directory")
            campaigns.extend(found)
        elif path.is_file():
            campaigns.append(load_campaign(path))
        else:
            raise FileNotFoundError(f"campaign {ref!r}: no such file or directory")
    if not campaigns:
        raise CampaignError("campaigns", "none given (a file, a directory or builtin:<name>)")
    names = [c.name for c in campaigns]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"campaign names must be unique; repeated: {', '.join(duplicates)}")
    return campaigns
