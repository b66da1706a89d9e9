"""Makes the plugin importable when its tests run from a checkout, installed or not."""

from __future__ import annotations

import sys
from pathlib import Path

PLUGIN_DIR = str(Path(__file__).resolve().parent.parent)
if PLUGIN_DIR not in sys.path:
    sys.path.insert(0, PLUGIN_DIR)
