"""`xenlab bridge monitor` ends on Ctrl-C (SIGINT) with status 0, as
bridge(8)'s does: promptly when its streams close, and within STOP_GRACE
when one does not (the CLI leaves anyway and says so)."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

WATCHER = textwrap.dedent("""
    import asyncio, sys
    from xenlab.cli.bridge import _until_interrupted

    async def watch(stubborn):
        print("watching", flush=True)
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if not stubborn:
                    raise
                print("ignoring the cancel", flush=True)

    sys.exit(asyncio.run(_until_interrupted(watch(sys.argv[1] == "stubborn"))))
""")


@pytest.mark.parametrize("kind", ["polite", "stubborn"])
def test_ctrl_c_ends_a_monitor_even_if_its_stream_does_not_close(kind):
    proc = subprocess.Popen([sys.executable, "-c", WATCHER, kind], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "watching\n"
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    waited = time.monotonic() - started
    assert proc.returncode == 0, err
    if kind == "stubborn":
        assert "ignoring the cancel" in out and "leaving anyway" in err
        assert waited >= 2.0        # it gave the stream its grace first
    else:
        assert "leaving anyway" not in err
