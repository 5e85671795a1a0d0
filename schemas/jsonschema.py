"""Generate schemas/json/*.json from the Structs (run: python -m schemas.jsonschema)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Final

import msgspec

from schemas.records import EVENT_TYPES, OUTCOME_TYPES, RECORD_TYPES

# The codec checks `type` itself (to report unknown_type); the schema documents the allowed values.
_TYPE_ENUMS: Final[dict[str, frozenset[str]]] = {"Event": EVENT_TYPES, "Outcome": OUTCOME_TYPES}

#: Where the committed schema files live.
SCHEMA_DIR: Final[Path] = Path(__file__).resolve().parent / "json"


def render() -> dict[str, str]:
    """Return file name -> JSON Schema text for every wire record, deterministic and sorted."""
    out: dict[str, str] = {}
    for stem, struct in sorted(RECORD_TYPES.items()):
        schema = msgspec.json.schema(struct)
        for name, values in _TYPE_ENUMS.items():
            if name in schema.get("$defs", {}):
                schema["$defs"][name]["properties"]["type"]["enum"] = sorted(values)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://kairos.dev/schemas/{stem}.v1.json"
        out[f"{stem}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def stale(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of schema files that are missing or differ from what the Structs generate."""
    return [
        name
        for name, text in render().items()
        if not (directory / name).is_file() or (directory / name).read_text("utf-8") != text
    ]


def write(directory: Path = SCHEMA_DIR) -> list[str]:
    """Write every schema file into directory; return the names written."""
    directory.mkdir(parents=True, exist_ok=True)
    rendered = render()
    for name, text in rendered.items():
        (directory / name).write_text(text, "utf-8")
    return sorted(rendered)


def main(argv: list[str] | None = None) -> int:
    """CLI: regenerate the files, or with --check exit 1 when any is out of date."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    args = parser.parse_args(argv)
    if args.check:
        names = stale()
        for name in names:
            print(f"out of date: schemas/json/{name}", file=sys.stderr)
        return 1 if names else 0
    for name in write():
        print(f"wrote schemas/json/{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
