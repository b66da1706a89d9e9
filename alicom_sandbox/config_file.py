"""Worker config files for the sandbox: what tests, benchmarks and the demo write.

`write_config` renders settings sections and `[[handlers]]` tables as TOML, the format
`consumer.settings.load` reads. Only the value types settings use are supported.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def toml_value(value: Any) -> str:
    """One TOML value: bool, int, float, str, list/tuple or an inline table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join("%s = %s" % (k, toml_value(v)) for k, v in value.items()) + " }"
    raise TypeError("no TOML form for %r" % (value,))


def write_config(path: Path, sections: Mapping[str, Mapping[str, Any]],
                 handlers: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Writes `[section]` tables, then one `[[handlers]]` table per handler; returns `path`."""
    lines: list[str] = []
    for name, table in sections.items():
        lines += ["[%s]" % name, *("%s = %s" % (k, toml_value(v)) for k, v in table.items()), ""]
    for handler in handlers:
        lines += ["[[handlers]]", *("%s = %s" % (k, toml_value(v)) for k, v in handler.items()),
                  ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
