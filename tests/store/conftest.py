"""The broker's test harness (tests/broker/harness.py) and its restart tests are reused here."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "broker"))
