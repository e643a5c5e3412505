"""Fixtures of the cloud link tests: a fake cloud on a free loopback port, a station pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.cloud.support import FAST
from tests.helpers import StationHandle, start_station
from waystation.cloud.fake import FakeCloud


@pytest.fixture
async def fake_cloud() -> AsyncIterator[FakeCloud]:
    async with FakeCloud(control_port=0) as fake:
        yield fake


@pytest.fixture
async def linked(settings_factory, fake_cloud: FakeCloud) -> AsyncIterator[StationHandle]:  # type: ignore[no-untyped-def]
    async with start_station(settings_factory(cloud_url=fake_cloud.url, **FAST)) as st:
        yield st
