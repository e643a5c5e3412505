"""The log files: several worker processes share `logs/app.log` and its rotation without losing lines."""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path

import pytest

from waystation import logs

LINES_PER_PROCESS = 1500
PROCESSES = 3


def _write_lines(data_dir: str, worker: int) -> None:
    logs.setup_logging(Path(data_dir), console=False, shared=True)
    log = logging.getLogger("waystation.test")
    for n in range(LINES_PER_PROCESS):
        log.info("worker %d line %05d %s", worker, n, "x" * 200)
    logging.shutdown()


def _lines(log_dir: Path, name: str) -> list[str]:
    found: list[str] = []
    for path in sorted(log_dir.glob(f"{name}*")):
        if path.name.endswith(".lock") or path.name.startswith("."):
            continue
        found += [line for line in path.read_text().splitlines() if "waystation.test" in line]
    return found


@pytest.mark.timeout(60)
def test_workers_share_the_rotating_log_without_losing_a_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small files, so three processes writing at once rotate many times.
    monkeypatch.setattr(logs, "APP_LOG_BYTES", 100_000)
    monkeypatch.setattr(logs, "APP_LOG_BACKUPS", 50)
    context = multiprocessing.get_context("fork")  # the children keep the patched sizes
    workers = [context.Process(target=_write_lines, args=(str(tmp_path), w)) for w in range(PROCESSES)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(50)
        assert p.exitcode == 0
    log_dir = tmp_path / "logs"
    assert len([p for p in log_dir.glob("app.log.*") if not p.name.endswith(".lock")]) >= 5  # it rotated
    # No process kept writing into a file another one had rotated away: none grew past the limit.
    sizes = {p.name: p.stat().st_size for p in log_dir.glob("app.log*") if not p.name.endswith(".lock")}
    assert max(sizes.values()) <= 100_000 + 300, sizes
    lines = _lines(log_dir, "app.log")
    expected = {f"worker {w} line {n:05d}" for w in range(PROCESSES) for n in range(LINES_PER_PROCESS)}
    seen = [line.split(": ", 1)[1][: len("worker 0 line 00000")] for line in lines]
    assert len(seen) == len(expected) and set(seen) == expected  # every line once, none torn


def test_one_process_keeps_the_standard_handler(tmp_path: Path) -> None:
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in logging.root.manager.loggerDict}
    root_level = root.level
    logs.setup_logging(tmp_path, console=False)
    managed = [h for h in root.handlers if getattr(h, "_waystation_handler", False)]
    try:
        assert {type(h) for h in managed} == {logging.handlers.RotatingFileHandler}
    finally:
        for h in managed:
            root.removeHandler(h)
            h.close()
        root.setLevel(root_level)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
