"""The tier each test gets (tests/support/tiers.py) follows what it starts."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests.support.server_groups import MAP_PREFIX, ServerGroupScheduling
from tests.support.tiers import TIERS, server_groups


def tiers_of(node: pytest.Item) -> list[str]:
    return [mark.name for mark in node.iter_markers() if mark.name in TIERS]


def test_a_test_that_starts_nothing_is_unit(request):
    assert tiers_of(request.node) == ["unit"]


async def test_a_test_on_the_in_process_app_is_app(client, request):
    assert (await client.get("/health/live")).status_code == 200
    assert tiers_of(request.node) == ["app"]


def _serve_a_copy(store, work):
    from tests.support.server import start_server

    return start_server(store, work)


def test_a_helper_that_starts_a_server_makes_its_caller_process(request):
    if request.node is None:  # never true: the call is what the tier reader sees
        _serve_a_copy(None, None)
    assert tiers_of(request.node) == ["process"]


@pytest.mark.torchserve
def test_an_external_backend_marker_is_external(request):
    assert tiers_of(request.node) == ["external"]


def test_every_collected_test_has_exactly_one_tier(request):
    assert all(len(tiers_of(item)) == 1 for item in request.session.items)



def test_a_shared_server_by_fixture_or_by_parameter_names_the_group():
    item = SimpleNamespace(fixturenames=["shared_triton", "tmp_path"],
                           callspec=SimpleNamespace(params={"backend": "torchserve-http"}))
    assert server_groups(item) == {"triton", "torchserve"}
    assert server_groups(SimpleNamespace(fixturenames=["tmp_path"])) == set()



def test_the_scheduler_keeps_each_shared_servers_users_in_one_unit(tmp_path):
    (tmp_path / f"{MAP_PREFIX}gw0.json").write_text(json.dumps({"a.py::t1": "triton", "b.py::t2[x]": "triton"}))
    (tmp_path / f"{MAP_PREFIX}gw1.json").write_text(json.dumps({"c.py::t3": "postgresql"}))
    scheduler = ServerGroupScheduling.__new__(ServerGroupScheduling)  # only the scope split, no workers
    scheduler._run_dir, scheduler._groups = tmp_path, None
    nodeids = ("a.py::t1", "b.py::t2[x]", "c.py::t3", "d.py::t4", "d.py::t5")
    scopes = [scheduler._split_scope(nodeid) for nodeid in nodeids]
    assert scopes[0] == scopes[1] != scopes[2]
    assert scopes[3] == scopes[4] == "d.py"  # tests of no group go with their module
