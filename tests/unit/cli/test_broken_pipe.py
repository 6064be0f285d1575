"""`xenlab status | head`: a reader that leaves early ends the command
quietly, as a command SIGPIPE ended, never with a traceback."""
import os
import subprocess
import sys

# A command whose output outgrows any pipe buffer, run through the real
# entry point (what the console script calls).
SCRIPT = """
import sys
from xenlab.cli import main as cli
cli._main = lambda argv, env: print("Domain-0 0 256 2 r-----\\n" * 20000) or 0
sys.exit(cli.main([]))
"""


def test_a_closed_stdout_ends_the_command_without_a_traceback():
    read, write = os.pipe()
    os.close(read)                      # the reader is gone before anything is written
    try:
        proc = subprocess.run([sys.executable, "-c", SCRIPT], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert proc.stderr == ""
    assert proc.returncode == 128 + 13  # SIGPIPE
