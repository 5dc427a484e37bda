"""JSON output helper shared by the oracle scripts: indented, but lists of numbers on one line
and, for lists of objects, one object per line."""

from __future__ import annotations

import json
import re
from pathlib import Path

# Only multi-line lists match (json.dumps escapes newlines inside strings, so string
# contents can never match).
_NUM = r"-?[0-9][-0-9.eE+]*"
_NUM_LIST = re.compile(r"\[\n\s*(" + _NUM + r"(?:,\n\s*" + _NUM + r")*)\n\s*\]")


def dumps(obj) -> str:
    s = json.dumps(obj, indent=1, ensure_ascii=False)
    return _NUM_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", s)


def dump_lines(items: list) -> str:
    """A list of objects, one compact object per line."""
    return "[\n" + ",\n".join(json.dumps(x, ensure_ascii=False) for x in items) + "\n]\n"


def write(path: Path, obj) -> None:
    Path(path).write_text(dumps(obj) + "\n", encoding="utf-8")
