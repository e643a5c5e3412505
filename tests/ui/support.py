"""The e2e tests' tools: an up-to-date UI build, Debian's Chromium, and logging in through the UI."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
DIST = ROOT / "src" / "waystation" / "web" / "dist"
CHROMIUM = os.environ.get("WAYSTATION_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = ROOT / "docs" / "images"
# Time limit for one expectation in the browser (ms): live updates arrive well within it.
EXPECT_MS = 15_000


def _newest(paths: list[Path]) -> float:
    newest = 0.0
    for path in paths:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        newest = max([newest, *(f.stat().st_mtime for f in files)])
    return newest


def dist_is_stale() -> bool:
    index = DIST / "index.html"
    if not index.is_file():
        return True
    sources = [WEB / "src", WEB / "public", WEB / "index.html", WEB / "package.json", WEB / "vite.config.ts"]
    return _newest([p for p in sources if p.exists()]) > index.stat().st_mtime


def ensure_build() -> None:
    """Build the UI when its sources are newer than the build (the station serves the build)."""
    if not dist_is_stale():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is needed to build the web UI (scripts/bootstrap.sh installs Node.js)")
    if not (WEB / "node_modules").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True)
    subprocess.run([npm, "run", "build"], cwd=WEB, check=True)


def ensure_chromium() -> str:
    """Debian's Chromium; install it when we can (root with apt-get), skip only when that is impossible."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False, env=env)
    if Path(CHROMIUM).exists():
        return CHROMIUM
    pytest.skip(f"Chromium is not installed at {CHROMIUM} and could not be installed with apt-get")


async def login(page: Page, base_url: str, username: str, password: str) -> None:
    """Log in through the login form, as a person would, and wait for the live stream."""
    await page.goto(f"{base_url}/login")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_test_id("live-indicator")).to_have_text("Live")
