"""Headless Chromium for tests: find (or apt-get install) it, dump a page's DOM after its JS ran,
take a screenshot. Each call uses a fresh throwaway profile directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]


def find_chromium() -> str | None:
    if os.path.exists("/usr/bin/chromium"):
        return "/usr/bin/chromium"
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_chromium(timeout: float = 600) -> tuple[str | None, str]:
    """(path, "") when Chromium is there or could be installed; (None, reason) otherwise."""
    path = find_chromium()
    if path:
        return path, ""
    if not shutil.which("apt-get"):
        return None, "chromium is not installed and there is no apt-get to install it"
    if os.geteuid() != 0:
        return None, "chromium is not installed and installing it needs root (apt-get install -y chromium)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    deadline = time.monotonic() + timeout
    log = []
    for cmd in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "chromium"]):
        left = deadline - time.monotonic()
        if left <= 0:
            return None, f"installing chromium took longer than {timeout:.0f}s"
        try:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            return None, f"`{' '.join(cmd)}` did not finish within {timeout:.0f}s"
        log.append(f"$ {' '.join(cmd)} -> {r.returncode}\n{r.stderr[-800:]}")
        path = find_chromium()
        if path:
            return path, ""
    return None, "could not install chromium with apt-get:\n" + "\n".join(log)


def _run(chromium: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="rft-ds-chromium-")
    try:
        return subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def dump_dom(chromium: str, url: str, timeout: float = 180) -> str:
    """The page's DOM serialized after load (inline scripts have run)."""
    r = _run(chromium, ["--dump-dom", url], timeout)
    if r.returncode != 0 or "<html" not in r.stdout:
        raise RuntimeError(f"chromium --dump-dom {url} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r.stdout


def screenshot(chromium: str, url: str, png: str, width: int = 1200, height: int = 900,
               timeout: float = 180) -> None:
    r = _run(chromium, [f"--screenshot={png}", f"--window-size={width},{height}", url], timeout)
    if r.returncode != 0 or not os.path.exists(png):
        raise RuntimeError(f"chromium --screenshot {url} failed ({r.returncode}): {r.stderr[-2000:]}")
