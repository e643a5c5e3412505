"""The cloud gone for "minutes" (time compressed with a short backoff ceiling): the link keeps retrying
at its ceiling, notifications wait in the bounded queue, the overflow is counted, and after the cloud
returns the queue is replayed in order, followed by what happens afterwards (PROTOCOLS §7)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.cloud.support import FAST, claim, cloud_status, set_channels, wait_state
from tests.helpers import DeviceClient, start_station, wait_for
from waystation.cloud.fake import FakeCloud

pytestmark = pytest.mark.timeout(90)

QUEUE = 30
SENT = 45  # while the cloud is away: the QUEUE newest wait, the SENT - QUEUE oldest overflow
RETRIES = 8  # failed reconnects to see before the cloud returns


async def test_cloud_away_for_a_while_gets_the_queued_notifications_in_order(
    settings_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="waystation.cloud.link")
    timings = {**FAST, "cloud_backoff_max_seconds": 0.2, "cloud_queue_size": QUEUE}
    fake = FakeCloud(control_port=0)
    async with fake, start_station(settings_factory(cloud_url=fake.url, **timings)) as st:
        await st.create_device("cl-1", "climate")
        remote = await claim(st, fake)
        await set_channels(fake, remote.chip_id, ["device.stateChanged"])
        link = st.ctx.cloud
        assert link is not None

        before = len(remote.notifications)
        await fake.stop()  # the cloud goes away
        await wait_for(lambda: link.state in ("backoff", "connecting"), message="link down")
        caplog.clear()
        async with DeviceClient(st.mqtt_port, st.station_id, "cl-1") as device:
            for i in range(SENT):
                # One at a time: the device runtime folds state changes within one flush together.
                await device.publish("state", {"state": {"temperature": float(i)}})
                await wait_for(
                    lambda i=i: len(link.queue) + link.queue.overflow == i + 1, message=f"queued {i}"
                )

            def failed_reconnects() -> int:
                return sum(1 for r in caplog.records if r.getMessage().startswith("cloud link:"))

            await wait_for(
                lambda: failed_reconnects() >= RETRIES, timeout=20, message="repeated reconnect attempts"
            )
            status = await cloud_status(st)
            assert (status["queue_depth"], status["queue_overflow"]) == (QUEUE, SENT - QUEUE)
            assert len(remote.notifications) == before  # nothing reached a cloud that is not there

            await fake.start()  # back on the same port, with the same tokens
            await wait_for(lambda: len(remote.notifications) - before >= QUEUE, timeout=15, message="replay")
            await wait_state(st, "connected")
            await device.publish("state", {"state": {"temperature": 1000.0}})
            await wait_for(
                lambda: len(remote.notifications) - before >= QUEUE + 1, message="a live notification"
            )

        temperatures = [n["params"]["state"]["temperature"] for n in remote.notifications[before:]]
        # The oldest overflowed; the rest come in order, and what happened after the outage comes last.
        assert temperatures == [float(i) for i in range(SENT - QUEUE, SENT)] + [1000.0]
        status = await cloud_status(st)
        assert (status["queue_depth"], status["queue_overflow"]) == (0, SENT - QUEUE)
