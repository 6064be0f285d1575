"""`xl console`, `xl sysrq` and `xl trigger` on the command line: what is
refused before anything is sent, and `xl console`'s line-by-line mode
against a fake console: each line sent once the previous one has been
echoed and answered with a prompt, Ctrl-] ending it, the console's end
ending it with one clear line."""
from __future__ import annotations

import asyncio
import io
import os

import pytest

from xenlab.cli import console as xl_console
from xenlab.cli.main import main


@pytest.mark.parametrize("argv, words", [
    (["xl", "console", "-t", "serial", "web"], "no serial console is emulated"),
    (["xl", "console", "-n", "1", "web"], "a domain has one PV console, number 0"),
    (["xl", "sysrq", "web", "ab"], "Invalid sysrq: one letter"),
])
def test_refused_in_one_line_before_anything_is_sent(argv, words, capsys, tmp_path):
    assert main(argv, {"XENLAB_RUNDIR": str(tmp_path)}) == 1
    err = capsys.readouterr().err
    assert words in err and len(err.splitlines()) == 1


def test_an_unknown_trigger_is_a_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["xl", "trigger", "web", "kick"], {"XENLAB_RUNDIR": str(tmp_path)})
    assert exit_.value.code == 2
    assert "nmi|reset|init|power|sleep|s3resume" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["console", "sysrq", "trigger"])
def test_each_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["xl", command, "--help"], {})
    assert exit_.value.code == 0
    assert "DOM" in capsys.readouterr().out


def test_a_line_is_answered_by_its_echo_then_a_prompt():
    session = xl_console.Attached(None, 1, io.BytesIO())
    session.seen += b"root@web:~# "                        # an old prompt, before the echo
    assert not session.answered(b"uptime\n")
    session.seen += b"uptime\r\n 12:00:00 up 1 min\r\n"
    assert not session.answered(b"uptime\n")
    session.seen += b"root@web:~# "
    assert session.answered(b"uptime\n")


class FakeGuest:
    """Domains.Console and Console.Write of one domain whose shell answers
    each line with its echo, one line of output and a prompt."""

    def __init__(self, answer: bool = True):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.written: list[bytes] = []
        self.answer = answer
        self.domains, self.console = self, self
        self.queue.put_nowait(b"root@web:~# ")

    async def Console(self, request):          # noqa: N802 - the gRPC method's name
        while True:
            data = await self.queue.get()
            if data is None:
                return
            yield type("Chunk", (), {"data": data})

    async def Write(self, request, timeout=None):   # noqa: N802
        self.written.append(request.data)
        if self.answer:
            line = request.data.rstrip(b"\n")
            self.queue.put_nowait(line + b"\r\nout of " + line + b"\r\nroot@web:~# ")
        return type("Reply", (), {"accepted": len(request.data)})


async def run_console(guest: FakeGuest, stdin: bytes, timeout: float = 5.0) -> bytes:
    r, w = os.pipe()
    os.write(w, stdin)
    os.close(w)
    out = io.BytesIO()
    try:
        await xl_console.attach(guest, 1, stdin_fd=r, line_timeout=timeout, out=out)
    finally:
        os.close(r)
    return out.getvalue()


async def test_lines_go_one_at_a_time_and_the_command_ends_after_the_last():
    guest = FakeGuest()
    out = await run_console(guest, b"ip addr\nuptime\nlast")
    assert guest.written == [b"ip addr\n", b"uptime\n", b"last\n"]
    assert out.endswith(b"last\r\nout of last\r\nroot@web:~# ")


async def test_ctrl_bracket_ends_line_by_line_input_too():
    guest = FakeGuest()
    await run_console(guest, b"uptime\n\x1dip addr\n")
    assert guest.written == [b"uptime\n"]


async def test_a_line_never_answered_is_one_clear_error():
    guest = FakeGuest(answer=False)
    with pytest.raises(xl_console.ConsoleError, match="no prompt came back within 0.2s"):
        await run_console(guest, b"uptime\n", timeout=0.2)


async def test_the_console_ending_is_one_clear_error():
    guest = FakeGuest(answer=False)
    guest.queue.put_nowait(None)
    with pytest.raises(xl_console.ConsoleError, match="the console ended"):
        await run_console(guest, b"uptime\n")


class FullGuest(FakeGuest):
    """A guest whose input queue is full for its first two writes."""

    def __init__(self):
        super().__init__()
        self.refusals = 2

    async def Write(self, request, timeout=None):   # noqa: N802
        if self.refusals:
            self.refusals -= 1
            raise FakeAborted()
        return await super().Write(request, timeout)


class FakeAborted(__import__("grpc").aio.AioRpcError):
    def __init__(self):
        import grpc
        super().__init__(grpc.StatusCode.ABORTED, None, None, "EAGAIN: input it has not read")


async def test_a_full_input_queue_is_waited_out_not_an_error():
    guest = FullGuest()
    out = await run_console(guest, b"uptime\n")
    assert guest.written == [b"uptime\n"] and guest.refusals == 0
    assert out.endswith(b"out of uptime\r\nroot@web:~# ")
