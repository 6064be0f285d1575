"""Xen's own xenstore tools (Debian's xenstore-utils: Xen 4.17's
libxenstore) against a running hypervisor, through XENSTORED_PATH or
XENSTORED_RUNDIR, as a Xen engineer would use them on a lab."""
from __future__ import annotations

import asyncio
import os
import shutil
import stat
import sys

import grpc
import pytest

from xs_client import HDR, TRANSACTION_END, TRANSACTION_START, ERROR, XsClient
from xenlab.proto import xenstore_pb2 as xs_pb

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("xenstore-read") is None,
                       reason="Debian's xenstore-utils is not installed (./dev setup installs it, as root)"),
]

WAIT = 20.0


def tools_env(sock) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XENSTORED_")}
    return {**env, "XENSTORED_PATH": str(sock)}


async def run(*argv: str, env: dict) -> tuple[int, str, str]:
    """A command, without blocking the loop the in-process hypervisor runs on."""
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    return proc.returncode, out.decode(), err.decode()


async def ok(*argv: str, env: dict) -> str:
    rc, out, err = await run(*argv, env=env)
    assert rc == 0, f"{' '.join(argv)} exited {rc}: {err}"
    return out


@pytest.fixture
def env(hypervisor):
    return tools_env(hypervisor.hv.rundir.xenstored_socket)


async def test_xenstore_ls_lists_every_domain(hypervisor, env):
    ids = [(await hypervisor.create_domain(name))[0] for name in ("web", "db")]
    out = await ok("xenstore-ls", "/local/domain", env=env)
    top = {line.split(" = ")[0] for line in out.splitlines() if not line.startswith(" ")}
    assert top == {"0", *map(str, ids)}
    for domid, name in zip(ids, ("web", "db")):
        assert f' name = "{name}"' in out
    assert (await ok("xenstore-list", "/local/domain", env=env)).split() == ["0", *map(str, ids)]


async def test_xenstore_write_and_read_round_trip(hypervisor, env):
    await ok("xenstore-write", "/tool/utils/a", "hello", "/tool/utils/b", "with spaces", env=env)
    assert await ok("xenstore-read", "/tool/utils/a", "/tool/utils/b", env=env) == \
        "hello\nwith spaces\n"
    reply = await hypervisor.dom0.xenstore.Read(xs_pb.PathRequest(path="/tool/utils/b"))
    assert reply.value == b"with spaces"
    await hypervisor.dom0.xenstore.Write(xs_pb.WriteRequest(path="/tool/utils/c", value=b"from gRPC"))
    assert await ok("xenstore-read", "/tool/utils/c", env=env) == "from gRPC\n"
    rc, _, err = await run("xenstore-read", "/tool/utils/missing", env=env)
    assert rc == 1 and "couldn't read path" in err


async def test_xenstore_chmod_and_a_refusal(hypervisor, env):
    domid, guest = await hypervisor.create_domain("guest")
    path = f"/local/domain/{domid}/data/secret"
    await ok("xenstore-write", path, "s3cret", env=env)
    await ok("xenstore-chmod", path, "n0", env=env)
    assert "(n0)" in await ok("xenstore-ls", "-p", f"/local/domain/{domid}/data", env=env)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await guest.xenstore.Read(xs_pb.PathRequest(path=path))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await ok("xenstore-chmod", path, "n0", f"r{domid}", env=env)
    assert f"(n0,r{domid})" in await ok("xenstore-ls", "-p", f"/local/domain/{domid}/data", env=env)
    assert (await guest.xenstore.Read(xs_pb.PathRequest(path=path))).value == b"s3cret"


async def test_xenstore_watch_sees_xl_network_attach(hypervisor, env):
    domid, _ = await hypervisor.create_domain("watched")
    watched = f"/local/domain/{domid}/device/vif"
    watch = await asyncio.create_subprocess_exec(
        "xenstore-watch", "-n", "2", watched, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        first = await asyncio.wait_for(watch.stdout.readline(), WAIT)
        assert first.decode().strip() == watched            # a new watch fires at once
        await ok(sys.executable, "-m", "xenlab.cli.main", "xl", "--rundir", str(hypervisor.rundir),
                 "network-attach", str(domid), "bridge=xenbr0", env=env)
        second = await asyncio.wait_for(watch.stdout.readline(), WAIT)
        assert second.decode().strip().startswith(watched)
        assert await asyncio.wait_for(watch.wait(), WAIT) == 0
    finally:
        if watch.returncode is None:
            watch.kill()
            await watch.wait()
    assert await ok("xenstore-read", f"{watched}/0/state", env=env) == "1\n"


async def test_xenstore_rm(hypervisor, env):
    await ok("xenstore-write", "/tool/rm/a/b", "x", env=env)
    await ok("xenstore-rm", "/tool/rm/a", env=env)
    rc, _, _ = await run("xenstore-exists", "/tool/rm/a", env=env)
    assert rc == 1
    await ok("xenstore-write", "/tool/rm/deep/er/leaf", "", "/tool/rm/keep", "v", env=env)
    await ok("xenstore-rm", "-t", "/tool/rm/deep/er/leaf", env=env)     # tidy: empty parents go too
    assert await ok("xenstore-list", "/tool/rm", env=env) == "keep\n"
    assert not hypervisor.hv.xenstore.exists("/tool/rm/deep")


class ConflictingProxy:
    """Between a tool and xenstored: before the tool's first
    TRANSACTION_END goes through, another client writes what the
    transaction wrote, so that xenstored must answer EAGAIN."""

    def __init__(self, upstream, rival_path: str):
        self.upstream = upstream
        self.rival_path = rival_path
        self.starts = 0
        self.eagains = 0
        self.interfered = False
        self.server = None

    async def start(self, path) -> None:
        self.server = await asyncio.start_unix_server(self._serve, path=str(path))

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(str(self.upstream))
        back = asyncio.create_task(self._pump(up_reader, writer, self._reply))
        try:
            await self._pump(reader, up_writer, self._request)
        finally:
            await back
            writer.close()

    async def _pump(self, reader, writer, look) -> None:
        try:
            while True:
                head = await reader.readexactly(HDR.size)
                type_, _, _, n = HDR.unpack(head)
                payload = await reader.readexactly(n)
                await look(type_, payload)
                writer.write(head + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def _request(self, type_: int, payload: bytes) -> None:
        self.starts += type_ == TRANSACTION_START
        if type_ == TRANSACTION_END and not self.interfered:
            self.interfered = True
            rival = await XsClient.connect(self.upstream)
            await rival.write(self.rival_path, "rival")
            await rival.close()

    async def _reply(self, type_: int, payload: bytes) -> None:
        self.eagains += type_ == ERROR and payload == b"EAGAIN\0"


async def test_a_transaction_with_a_conflicting_writer_is_retried(hypervisor, env, sock_dir):
    proxy = ConflictingProxy(hypervisor.hv.rundir.xenstored_socket, "/tool/tx/a")
    await proxy.start(sock_dir / "proxy.sock")
    try:
        # xenstore with several writes does them in one transaction, and
        # starts over when xs_transaction_end fails with EAGAIN.
        await ok("xenstore", "write", "/tool/tx/a", "1", "/tool/tx/b", "2",
                 env=tools_env(sock_dir / "proxy.sock"))
    finally:
        await proxy.close()
    assert proxy.interfered and proxy.eagains == 1 and proxy.starts == 2
    assert await ok("xenstore-read", "/tool/tx/a", "/tool/tx/b", env=env) == "1\n2\n"


def test_xenstored_rundir_of_a_hypervisor_process(hypervisor_process):
    """`xenlab hypervisor` serves the socket where XENSTORED_RUNDIR finds it."""
    import subprocess
    sock = hypervisor_process.rundir / "xenstored" / "socket"
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    env = {k: v for k, v in os.environ.items() if not k.startswith("XENSTORED_")}
    result = subprocess.run(["xenstore-read", "/local/domain/0/name"], capture_output=True,
                            text=True, timeout=WAIT, env={**env, "XENSTORED_RUNDIR": str(sock.parent)})
    assert (result.returncode, result.stdout) == (0, "Domain-0\n"), result.stderr
    info = hypervisor_process.xl("info").stdout
    assert f"xenstored_path         : {sock}\n" in info
