"""The README's quick start, run as a newcomer runs it: every command in it sees the store the daemon writes."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import Daemon, wait_until, write_image

ROOT = Path(__file__).resolve().parent.parent


def quick_start() -> list[list[str]]:
    """The command lines of the README's "Two commands" section, in order (comments dropped)."""
    section = (ROOT / "README.md").read_text().split("## Two commands", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```sh")[1:]]
    return [shlex.split(line.split("#")[0]) for b in blocks for line in b.splitlines() if line.split("#")[0].strip()]


@pytest.mark.timeout(180)
def test_every_quick_start_command_sees_the_store_the_daemon_writes(tmp_path: Path, model_dir: Path):
    commands = quick_start()
    assert commands[:2] == [["scripts/run"], ["scripts/test"]]
    lookers = commands[2:]
    assert lookers and all(c[0] == "scripts/clipwatch" for c in lookers)  # never another store by mistake
    # The quick start as written, but in a directory of the test's own, with the test's model (no hub here).
    env = {"CLIPWATCH_QUICKSTART_DIR": str(tmp_path / "data"), "CLIPWATCH_MODEL__NAME": str(model_dir),
           "CLIPWATCH_MODEL__DEVICE": "cpu", "CLIPWATCH_METRICS__LISTEN": "", "CLIPWATCH_LOG__FORMAT": "json"}
    daemon = Daemon(env, [str(ROOT / "scripts" / "run")])
    try:
        wait_until(lambda: daemon.saw("scan_finished"), timeout=120, what="the daemon to start")
        write_image(tmp_path / "data" / "inbox" / "dropped.jpg", seed=1)

        def status() -> dict[str, object] | None:
            done = subprocess.run([str(ROOT / "scripts" / "clipwatch"), "db", "status", "--json"], env=env_of(env),
                                  capture_output=True, text=True, check=True)
            report: dict[str, object] = json.loads(done.stdout)
            return report if report["rows"] else None

        report = wait_until(status, timeout=60, what="the dropped image's row, seen by scripts/clipwatch")
        running = next(e for e in daemon.events if e.get("event") == "running")
        assert report["location"] == running["store"] == f"sqlite://{tmp_path}/data/clipwatch.sqlite3"  # type: ignore[index]
        for command in lookers:
            done = subprocess.run([str(ROOT / command[0]), *command[1:]], env=env_of(env), capture_output=True,
                                  text=True, cwd=ROOT)
            assert done.returncode == 0, (command, done.stderr)
    finally:
        assert daemon.stop() == 0


def env_of(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}
