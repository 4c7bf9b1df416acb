"""The tier each test gets (tests/support/tiers.py) follows what it starts."""

from __future__ import annotations

import pytest

from tests.support.tiers import TIERS


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
