"""Users of one shared external server run in one pytest-xdist worker (``--dist loadgroup``), so a run starts
each server once and never two Ray clusters on one host.

The groups come from ``tiers.server_groups`` (fixtures and backend parameters), known only where tests are
collected: in the workers. Each worker writes its nodeid -> group map into the run's temp dir before it
reports its collection; the controller's scheduler reads them when it splits the collection into work
units (after every worker has reported). pytest-xdist's own ``xdist_group`` suffix on node ids does not
take under pytest 9, whose node ids are no longer a plain attribute.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from xdist.scheduler import LoadScopeScheduling

from tests.support.tiers import server_groups

MAP_PREFIX = "server-groups-"


def write_group_map(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a worker: this worker's nodeid -> group map, beside the other workers' in the run's temp dir."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        return
    groups = {item.nodeid: "+".join(sorted(found)) for item in items if (found := server_groups(item))}
    run_dir = config._tmp_path_factory.getbasetemp().parent  # the controller's base temp dir
    target = run_dir / f"{MAP_PREFIX}{worker}.json"
    partial = target.with_suffix(".part")
    partial.write_text(json.dumps(groups))
    partial.replace(target)


class ServerGroupScheduling(LoadScopeScheduling):
    """Load scheduling by work units: each shared server's users form one, every other test goes with its
    module (module-scoped fixtures are set up once; the largest units are handed out first)."""

    def __init__(self, config: pytest.Config, log=None) -> None:
        super().__init__(config, log)
        self._run_dir: Path = config._tmp_path_factory.getbasetemp()
        self._groups: dict[str, str] | None = None

    def _split_scope(self, nodeid: str) -> str:
        if self._groups is None:  # first called once every worker has reported its collection
            self._groups = {}
            for path in self._run_dir.glob(f"{MAP_PREFIX}*.json"):
                self._groups.update(json.loads(path.read_text()))
        group = self._groups.get(nodeid)
        return f"server-group:{group}" if group else nodeid.split("::", 1)[0]
