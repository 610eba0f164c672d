"""Reading a results folder of the experiment suite back (curves, summary, tuning)."""
from __future__ import annotations

import json
import os
from typing import Any, Dict

__all__ = ["load_results"]


def load_results(out: str) -> Dict[str, Any]:
    """Read a results folder back: ``{"curves": [...], "summary": {...}, "tuning": {...}}``."""
    with open(os.path.join(out, "curves.jsonl"), encoding="utf-8") as fh:
        curves = [json.loads(line) for line in fh if line.strip()]
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as fh:
        summary = json.load(fh)
    with open(os.path.join(out, "tuning.json"), encoding="utf-8") as fh:
        tuning = json.load(fh)
    return {"curves": curves, "summary": summary, "tuning": tuning}
