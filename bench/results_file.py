"""Where a benchmark's figures go: one JSON file a run, bench/results/<name>-<local time>.json."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def save_report(name: str, report: dict) -> Path:
    """Write ``report`` as indented JSON beside the earlier runs' and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
