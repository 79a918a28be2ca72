"""Every shipped job resolves to the settings recorded in tests/data/resolved_configs.json (``python
tests/config_jobs.py --write`` records them), however its configs are written."""
from __future__ import annotations

import difflib
import json

from config_jobs import JOBS, RECORD, job_name, resolve


def test_every_shipped_job_resolves_to_its_recorded_settings():
    record = json.loads(RECORD.read_text())
    assert sorted(record) == sorted(job_name(c, configs) for c, configs in JOBS)
    changed = []
    for command, configs in JOBS:
        name = job_name(command, configs)
        now = resolve(command, configs)
        if now != record[name]:
            diff = "".join(list(difflib.unified_diff(record[name].splitlines(True), now.splitlines(True), "recorded",
                                                     "now"))[:40])
            changed.append(f"{name}:\n{diff}")
    assert not changed, "\n".join(changed)
