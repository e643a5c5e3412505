"""The provisioning manager: runs the BLE bridge child, scans while someone watches, drives provisionings.

- The bridge (`waystation ble-bridge`) is a child process that dies with the station (PR_SET_PDEATHSIG);
  if it exits, it is started again with backoff, and the scan resumes if clients are still connected.
- Scanning runs while at least one provisioning WebSocket client is connected: the first one starts it,
  the last one leaving stops it and clears the candidate cache. A new client first gets the scan state
  and the current candidates.
- A provisioning writes the payload over the bridge, then waits for the device's first MQTT message
  (its handshake) on the bus; `record_outcome` audits it and publishes `provisioning.result`.
- Writes go to the bridge one at a time, each with an `id` the bridge echoes in `write_result`: the radio
  connects to one device at a time anyway, so the write timeout measures this write and not a queue, and
  a late answer to a write the station gave up on cannot be taken for the answer to a retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import sys
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from waystation.broker.acl import device_username
from waystation.broker.embedded import _die_with_parent
from waystation.broker.emqx_http import LOGIN_REFUSED_EVENT
from waystation.bus import Bus, Event, Gap, TypeFilter
from waystation.config import Settings
from waystation.db import Database
from waystation.devices.runtime import DeviceRuntime
from waystation.provisioning.ble import messages
from waystation.provisioning.ble import service as ble_service
from waystation.provisioning.ble.jobs import Provisioning
from waystation.provisioning.ble.refusals import BrokerLog

if TYPE_CHECKING:
    from waystation.context import AppContext

log = logging.getLogger(__name__)

CLIENT_QUEUE = 500  # messages waiting per WebSocket client; beyond, the oldest are dropped
CANDIDATE_UPDATE_SECONDS = 1.0  # a candidate's rssi reaches clients at most this often
KEPT_JOBS = 200  # finished provisionings remembered for GET /api/v1/provisioning/{id}
HEALTHY_RUN_SECONDS = 10.0  # a bridge that lived this long resets the restart backoff
MAX_CANDIDATES = 256  # candidates kept per scan; beyond, the one heard least recently is dropped


def ble_wanted(settings: Settings) -> bool:
    return settings.ble_enabled or settings.ble_simulate


def bridge_command(settings: Settings) -> list[str]:
    if settings.ble_bridge_command:
        return shlex.split(settings.ble_bridge_command)
    command = [sys.executable, "-m", "waystation", "ble-bridge"]
    return [*command, "--simulate"] if settings.ble_simulate else command


def ble_manager(ctx: AppContext) -> ProvisioningManager | None:
    """The manager for this station, or None when BLE provisioning is off. Refused logins are visible
    only in the embedded Mosquitto's log."""
    if not ble_wanted(ctx.settings):
        return None
    broker = ctx.broker
    path = broker.log_path if broker is not None and broker.kind == "mosquitto" else None
    return ProvisioningManager(ctx.settings, ctx.db, ctx.bus, ctx.devices, BrokerLog(path))


@dataclass
class Candidate:
    address: str
    name: str | None
    rssi: int
    service_uuids: list[str]
    service_data: dict[str, str]
    last_seen: float = field(default_factory=time.monotonic)
    last_sent: float = 0.0

    @property
    def type_hint(self) -> str | None:
        """The device type the firmware announces in its service data (version byte 1, then ASCII)."""
        for raw in self.service_data.values():
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                data = bytes.fromhex(raw)
                if len(data) > 1 and data[0] == 1:
                    return data[1:].decode("ascii")[:64] or None
        return None

    def public(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "name": self.name,
            "rssi": self.rssi,
            "service_uuids": self.service_uuids,
            "service_data": self.service_data,
            "type_hint": self.type_hint,
        }


class ClientFeed:
    """What one provisioning WebSocket client has still to receive (bounded, drop-oldest)."""

    def __init__(self, visible_stations: frozenset[str] | None) -> None:
        self.visible_stations = visible_stations
        self._queue: deque[dict[str, Any]] = deque(maxlen=CLIENT_QUEUE)
        self._wake = asyncio.Event()

    def put(self, message: dict[str, Any]) -> None:
        station_id = message.get("station_id")
        visible = self.visible_stations
        if station_id is not None and visible is not None and station_id not in visible:
            return  # another station's provisioning
        self._queue.append(message)
        self._wake.set()

    async def get(self) -> dict[str, Any]:
        while not self._queue:
            self._wake.clear()
            await self._wake.wait()
        return self._queue.popleft()


@dataclass
class PendingWrite:
    """The one `connect_and_write` the bridge is working on."""

    id: str
    address: str
    future: asyncio.Future[tuple[bool, str | None]]


class ProvisioningManager:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        bus: Bus,
        devices: DeviceRuntime | None,
        broker_log: BrokerLog,
    ) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.devices = devices
        self.broker_log = broker_log
        self.command = bridge_command(settings)
        self.candidates: dict[str, Candidate] = {}
        self.scanning = False
        self.restarts = 0
        self.jobs: OrderedDict[str, Provisioning] = OrderedDict()
        self._clients: set[ClientFeed] = set()
        self._proc: asyncio.subprocess.Process | None = None
        self._ready = False
        self._ready_event = asyncio.Event()
        self._pending_write: PendingWrite | None = None
        self._write_lock = asyncio.Lock()
        self._reserved: set[str] = set()  # addresses whose POST /provisioning/add is still registering
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: set[str] = set()  # provisionings waiting for their device to join
        self._overlapped: dict[str, bool] = {}

    # --- the bridge child ------------------------------------------------------------------------

    @property
    def bridge_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    @property
    def bridge_ready(self) -> bool:
        return self._ready

    def status(self) -> dict[str, Any]:
        """The bridge and scan state for `GET /api/v1/provisioning/status` and the status projections."""
        state = "running" if self._ready else ("starting" if self._proc is not None else "restarting")
        return {
            "state": state,
            "simulated": self.settings.ble_simulate,
            "scanning": self.scanning,
            "clients": len(self._clients),
            "candidates": len(self.candidates),
            "restarts": self.restarts,
            "provisionings_running": sum(1 for job in self.jobs.values() if not job.finished),
        }

    async def run(self) -> None:
        """Keep the bridge running, restarting it with backoff, until cancelled."""
        base = self.settings.ble_restart_backoff_base_seconds
        delay = base
        sweeper = asyncio.create_task(self._sweep_candidates(), name="ble-candidates")
        try:
            while True:
                started = time.monotonic()
                try:
                    await self._run_bridge()
                except OSError as exc:
                    log.error("cannot start the BLE bridge %s: %s", self.command[:4], exc)
                self._bridge_gone()
                if time.monotonic() - started >= HEALTHY_RUN_SECONDS:
                    delay = base
                log.warning("BLE bridge exited; restarting in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.ble_restart_backoff_max_seconds)
                self.restarts += 1
        finally:
            sweeper.cancel()
            await self.close()

    async def _run_bridge(self) -> None:
        log_path = self.settings.data_dir / "logs" / "ble-bridge.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as logfile:
            proc = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=logfile,
                preexec_fn=_die_with_parent,  # never outlives the station, however it dies
                limit=messages.MAX_LINE_BYTES * 2,
            )
        self._proc = proc
        log.info("BLE bridge started (pid %d)", proc.pid)
        assert proc.stdout is not None
        try:
            while True:
                try:
                    line = await proc.stdout.readline()
                except ValueError:
                    log.warning("BLE bridge sent an over-long line; ignored")
                    continue
                if not line:
                    break
                try:
                    self._on_message(messages.decode(line))
                except messages.BadMessage as exc:
                    log.warning("BLE bridge sent a bad line: %s", exc)
        finally:
            await self._stop_process(proc)

    async def _stop_process(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        log.info("BLE bridge (pid %d) ended with code %s", proc.pid, proc.returncode)

    def _bridge_gone(self) -> None:
        self._proc = None
        self._ready = False
        self._ready_event.clear()
        pending, self._pending_write = self._pending_write, None
        if pending is not None and not pending.future.done():
            pending.future.set_result((False, "the BLE bridge exited during the write"))
        if self.scanning:
            self.scanning = False
            self._broadcast({"type": "scan", "state": "stopped", "reason": "bridge_exited"})

    def _send(self, message: dict[str, Any]) -> bool:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None or not self._ready:
            return False
        try:
            proc.stdin.write(messages.encode(message))
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            return False
        return True

    def _on_message(self, message: dict[str, Any]) -> None:
        name = message["event"]
        if name == "ready":
            self._ready = True
            self._ready_event.set()
            log.info("BLE bridge ready (%s)", message.get("mode", "?"))
            if self._clients:
                self._start_scan()
        elif name == "scan_started":
            self.scanning = True
            self._broadcast({"type": "scan", "state": "started"})
            if not self._clients:
                self._send({"event": "stop_scan"})  # the last client left while it was starting
        elif name == "scan_stopped":
            self.scanning = False
            self._broadcast({"type": "scan", "state": "stopped"})
        elif name == "discovered":
            self._on_discovered(message)
        elif name == "write_result":
            self._on_write_result(message)
        elif name == "error":
            log.warning("BLE bridge: %s", str(message.get("error"))[:300])

    def _on_write_result(self, message: dict[str, Any]) -> None:
        pending = self._pending_write
        write_id = message.get("id")
        address = str(message.get("address", "")).upper()
        # Matched by the echoed id; a bridge that echoes none (PROTOCOLS §8 makes `id` an extra) by
        # address, which is safe enough as only one write is ever outstanding.
        if write_id is not None:
            matches = pending is not None and write_id == pending.id
        else:
            matches = pending is not None and address == pending.address
        if pending is None or not matches or pending.future.done():
            log.info("BLE bridge answered a write the station no longer waits for (%s)", address[:64])
            return
        self._pending_write = None
        error = message.get("error")
        pending.future.set_result((message.get("ok") is True, str(error)[:300] if error else None))

    # --- scanning and candidates -----------------------------------------------------------------

    def _start_scan(self) -> None:
        self._send({"event": "start_scan", "service_uuid": self.settings.ble_service_uuid})

    def _on_discovered(self, message: dict[str, Any]) -> None:
        if not self._clients:
            return  # a late advertisement after the scan was stopped
        address = message.get("address")
        rssi = message.get("rssi")
        if not isinstance(address, str) or not address or not isinstance(rssi, int):
            return
        name = message.get("name")
        uuids = message.get("service_uuids")
        data = message.get("service_data")
        key = address.upper()
        candidate = self.candidates.pop(
            key, None
        )  # re-inserted below: the dict runs least recently heard first
        new = candidate is None
        if new:
            while len(self.candidates) >= MAX_CANDIDATES:
                lost = next(iter(self.candidates))
                del self.candidates[lost]
                self._broadcast({"type": "candidate_lost", "address": lost})
        candidate = Candidate(
            address=key,
            name=str(name)[:64] if isinstance(name, str) else None,
            rssi=rssi,
            service_uuids=[str(u) for u in uuids][:16] if isinstance(uuids, list) else [],
            service_data={str(k): str(v)[:128] for k, v in list(data.items())[:8]}
            if isinstance(data, dict)
            else {},
            last_sent=candidate.last_sent if candidate else 0.0,
        )
        self.candidates[key] = candidate
        now = time.monotonic()
        if new or now - candidate.last_sent >= CANDIDATE_UPDATE_SECONDS:
            candidate.last_sent = now
            self._broadcast({"type": "candidate", **candidate.public()})
        if new:
            self.bus.emit("provisioning.candidate", candidate.public())

    async def _sweep_candidates(self) -> None:
        ttl = self.settings.ble_candidate_ttl_seconds
        while True:
            await asyncio.sleep(min(ttl / 4, 5.0))
            cutoff = time.monotonic() - ttl
            for key in [k for k, c in self.candidates.items() if c.last_seen < cutoff]:
                del self.candidates[key]
                self._broadcast({"type": "candidate_lost", "address": key})

    def candidate(self, address: str) -> Candidate | None:
        return self.candidates.get(address.upper())

    # --- clients ---------------------------------------------------------------------------------

    def connect(self, visible_stations: frozenset[str] | None) -> ClientFeed:
        feed = ClientFeed(visible_stations)
        feed.put({"type": "scan", "state": "started" if self.scanning else "stopped"})
        for candidate in self.candidates.values():
            feed.put({"type": "candidate", **candidate.public()})
        first = not self._clients
        self._clients.add(feed)
        if first:
            self._start_scan()  # if the bridge is not ready yet, `ready` starts it
        return feed

    def disconnect(self, feed: ClientFeed) -> None:
        self._clients.discard(feed)
        if not self._clients:
            self._send({"event": "stop_scan"})
            self.candidates.clear()

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def _broadcast(self, message: dict[str, Any]) -> None:
        for feed in self._clients:
            feed.put(message)

    # --- provisioning ----------------------------------------------------------------------------

    def busy(self, address: str) -> bool:
        key = address.upper()
        return key in self._reserved or any(j.address == key and not j.finished for j in self.jobs.values())

    def reserve(self, address: str) -> bool:
        """Claim `address` for a provisioning being registered, before the caller's first await, so two
        concurrent requests cannot both pass `busy()`; False if it is taken. Always `release` it after
        `start` or on failure."""
        if self.busy(address):
            return False
        self._reserved.add(address.upper())
        return True

    def release(self, address: str) -> None:
        self._reserved.discard(address.upper())

    def job(self, provisioning_id: str) -> Provisioning | None:
        return self.jobs.get(provisioning_id)

    def start(self, job: Provisioning, payload: dict[str, Any]) -> None:
        """Drive `job` in the background: write, wait for the join, record the outcome."""
        self.jobs[job.id] = job
        while len(self.jobs) > KEPT_JOBS:
            oldest = next(iter(self.jobs))
            if not self.jobs[oldest].finished:
                break
            self.jobs.popitem(last=False)
        task = asyncio.create_task(self._drive(job, payload), name=f"provision-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drive(self, job: Provisioning, payload: dict[str, Any]) -> None:
        # Subscribed before the write, so a device quicker than us cannot slip past. Only the device's own
        # MQTT traffic counts (`device.online`, from its first message): `device.updated` would also come
        # from an admin editing the new device meanwhile.
        joins = self.bus.subscribe(
            TypeFilter(["device.online", LOGIN_REFUSED_EVENT]),
            maxsize=1000,
            station_ids={job.station_id},
        )
        try:
            mark = self.broker_log.mark()
            self._progress(job)
            ok, error = await self._write(job.address, payload)
            del payload  # the credentials are not kept a moment longer than the write
            if not ok:
                job.fail("write_failed", error or "the BLE write failed")
            else:
                job.state = "waiting_for_join"
                self._progress(job)
                # Refused logins cannot be told apart by device: note whether another provisioning was
                # waiting at the same time, which makes them ambiguous.
                self._overlapped[job.id] = bool(self._waiting)
                for other in self._waiting:
                    self._overlapped[other] = True
                self._waiting.add(job.id)
                try:
                    joined, refused = await self._joined(joins, job.device_id)
                finally:
                    self._waiting.discard(job.id)
                if joined:
                    job.succeed()
                elif refused:
                    job.fail(
                        "wrong_credentials",
                        f"the broker refused {refused} login(s) of {device_username(job.device_id)}: "
                        "the device is not using the password written to it",
                    )
                else:
                    self._diagnose(job, mark, self._overlapped.get(job.id, False))
        except asyncio.CancelledError:
            self._interrupted(job)
            raise
        except Exception as exc:
            log.exception("provisioning %s crashed", job.id)
            if not job.finished:
                job.fail("write_failed", f"internal error: {type(exc).__name__}")
        finally:
            joins.close()
            self._overlapped.pop(job.id, None)
        try:
            await ble_service.record_outcome(self.db, self.devices, job)
        except Exception:
            log.exception("recording the outcome of provisioning %s failed", job.id)
        self._broadcast({"type": "result", **ble_service.result_event(job), "station_id": job.station_id})
        log.info("provisioning %s of %s: %s %s", job.id, job.address, job.state, job.reason or "")

    async def _write(self, address: str, payload: dict[str, Any]) -> tuple[bool, str | None]:
        # One write at a time (queued in arrival order): the timeout below starts when this write is
        # sent, so a write never fails at the station while the bridge has it still queued.
        async with self._write_lock:
            return await self._write_now(address, payload)

    async def _write_now(self, address: str, payload: dict[str, Any]) -> tuple[bool, str | None]:
        timeout = self.settings.ble_write_timeout_seconds
        if not self._ready:
            # A bridge being restarted gets a moment to come back before the write counts as failed.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready_event.wait(), min(timeout, 10.0))
        pending = PendingWrite(
            f"w_{uuid.uuid4().hex[:12]}", address, asyncio.get_running_loop().create_future()
        )
        self._pending_write = pending
        sent = self._send(
            {
                "event": "connect_and_write",
                "id": pending.id,
                "address": address,
                "service_uuid": self.settings.ble_service_uuid,
                "characteristic_uuid": self.settings.ble_characteristic_uuid,
                "payload": payload,
            }
        )
        try:
            if not sent:
                return False, "the BLE bridge is not running"
            return await asyncio.wait_for(pending.future, timeout)
        except TimeoutError:
            return False, f"the bridge did not answer within {timeout:g}s"
        finally:
            if self._pending_write is pending:
                self._pending_write = None

    async def _joined(self, joins: Any, device_id: str) -> tuple[bool, int]:
        """Whether the device's first message (normally its handshake) reached the station in time, and
        how many of its logins a broker that names them (EMQX over HTTP) refused meanwhile."""
        username = device_username(device_id)
        refused = 0
        deadline = time.monotonic() + self.settings.provisioning_join_timeout_seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                item: Event | Gap = await asyncio.wait_for(joins.get(), left)
            except TimeoutError:
                break
            if not isinstance(item, Event):
                continue
            if item.type == LOGIN_REFUSED_EVENT:
                refused += item.data.get("username") == username
            elif item.data.get("device_id") == device_id:
                return True, refused
        return False, refused

    def _diagnose(self, job: Provisioning, mark: int, overlapped: bool) -> None:
        timeout = self.settings.provisioning_join_timeout_seconds
        refused = self.broker_log.refusals_since(mark)
        if refused and overlapped:
            job.fail(
                "not_joined",
                f"the device did not join within {timeout:g}s; the broker refused {refused} login(s) "
                "meanwhile, but another provisioning was waiting too, so they may not be this device's "
                "(provision one device at a time to tell wrong credentials apart)",
            )
        elif refused:
            job.fail(
                "wrong_credentials",
                f"the device did not join within {timeout:g}s and the broker refused {refused} login(s) "
                "meanwhile: the device is not using the credentials written to it",
            )
        elif self.broker_log.visible:
            job.fail(
                "not_joined",
                f"the device did not join within {timeout:g}s and never tried to log in to the broker "
                "(check its Wi-Fi signal and the SSID and password the agent set)",
            )
        else:
            job.fail(
                "not_joined",
                f"the device did not join within {timeout:g}s; this station cannot see its broker's "
                "refused logins (only the embedded Mosquitto's log and EMQX over HTTP show them): look "
                f"in the broker's log for the user {device_username(job.device_id)}",
            )

    def _interrupted(self, job: Provisioning) -> None:
        """A provisioning whose task was cancelled (station shutdown, or the manager crashed and its
        supervisor restarts it): failed, so `busy()` frees its address and clients learn how it ended."""
        if job.finished:
            return
        if job.state == "writing":
            job.fail("write_failed", "interrupted: the provisioning manager stopped during the write")
        else:
            job.fail("not_joined", "interrupted: the provisioning manager stopped while waiting for the join")
        self._broadcast({"type": "result", **ble_service.result_event(job), "station_id": job.station_id})

    def _progress(self, job: Provisioning) -> None:
        self._broadcast(
            {
                "type": "progress",
                "provisioning_id": job.id,
                "address": job.address,
                "device_id": job.device_id,
                "state": job.state,
                "station_id": job.station_id,
            }
        )

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for job in self.jobs.values():
            self._interrupted(job)  # also those whose task was cancelled before it ever ran
        proc = self._proc
        if proc is not None:
            await self._stop_process(proc)
        self._bridge_gone()  # a supervisor may run() this manager again: start from a clean state
