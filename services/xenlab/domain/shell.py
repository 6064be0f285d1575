"""The guest's console shell, as a pure core: a line discipline, a command
parser and the renderers of each command's output. No I/O and no clock:
``Shell.feed`` takes the bytes typed on the console and returns what to
echo and which commands to run; the caller (domain/getty.py) runs them
against the guest's network and clock and writes what the renderers make
of the results.

The line discipline is n_tty's canonical mode with echo: a line ends at CR
or LF (CR LF is one end), DEL and BS erase a character ("\\b \\b"), Ctrl-U
the line, Ctrl-C abandons it ("^C"), other control characters are ignored,
and a line longer than N_TTY_BUF_SIZE is cut there.

Output layouts are the Linux tools': iproute2's ``ip addr`` and
``ip neigh``, procps' ``uptime``, iputils' ``ping``; errors are worded as
they word theirs.
"""
from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface

LINE_MAX = 4095                 # N_TTY_BUF_SIZE - 1
PING_MAX_COUNT = 1000           # what the console's ping accepts (the agent's limit is its own)
PING_DEFAULT_COUNT = 4          # -c when not given: a script's ping ends (Ctrl-C stops one sooner)
PING_DATA = 56                  # bytes of ICMP data, as iputils' default


# -- commands --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class IpAddr:
    device: str = ""            # "": every interface


@dataclass(frozen=True)
class IpNeigh:
    device: str = ""


@dataclass(frozen=True)
class Ping:
    dst: str
    count: int = PING_DEFAULT_COUNT


@dataclass(frozen=True)
class Uptime:
    pass


@dataclass(frozen=True)
class Failed:
    """A line that is not a command this shell runs: ``message`` says why."""
    message: str


Command = Help | IpAddr | IpNeigh | Ping | Uptime | Failed

HELP = """\
Commands:
  ip addr [show [dev] IFNAME]   the interfaces and their addresses
  ip neigh [show [dev] IFNAME]  the ARP cache
  ping ADDRESS [-c COUNT]       ICMP echo (COUNT defaults to 4)
  uptime                        how long the domain has been up
  help                          this list
Ctrl-C stops the command running; Ctrl-] leaves xl console.
"""


def parse(line: str) -> Command | None:
    """One command line; None for an empty one."""
    try:
        argv = shlex.split(line)
    except ValueError as err:
        return Failed(f"-sh: syntax error: {err}")
    if not argv:
        return None
    name, args = argv[0], argv[1:]
    if name == "help":
        return Help()
    if name == "uptime":
        return Uptime() if not args else Failed(f"uptime: invalid option -- '{args[0]}'")
    if name == "ping":
        return _parse_ping(args)
    if name == "ip":
        return _parse_ip(args)
    return Failed(f"-sh: {name}: command not found")


def _parse_ping(args: list[str]) -> Command:
    dst, count = None, PING_DEFAULT_COUNT
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-c" or (arg.startswith("-c") and len(arg) > 2):
            value = arg[2:] if len(arg) > 2 else (args[i + 1] if i + 1 < len(args) else None)
            if value is None:
                return Failed("ping: option requires an argument -- 'c'")
            if not value.isdigit() or not 1 <= int(value) <= PING_MAX_COUNT:
                return Failed(f"ping: invalid argument: '{value}': out of range: "
                              f"1 <= value <= {PING_MAX_COUNT}")
            count = int(value)
            i += 1 if len(arg) > 2 else 2
            continue
        if arg.startswith("-") and arg != "-":
            return Failed(f"ping: invalid option -- '{arg[1:2]}'")
        if dst is not None:
            return Failed("ping: usage error: only one destination address")
        dst = arg
        i += 1
    if dst is None:
        return Failed("ping: usage error: Destination address required")
    try:
        IPv4Address(dst)
    except ValueError:
        return Failed(f"ping: {dst}: Name or service not known")
    return Ping(dst, count)


_IP_OBJECTS = {"address": "addr", "addr": "addr", "a": "addr", "neighbour": "neigh",
               "neighbor": "neigh", "neigh": "neigh", "n": "neigh"}


def _parse_ip(args: list[str]) -> Command:
    if not args:
        return Failed("Usage: ip OBJECT { COMMAND | help }\nwhere  OBJECT := { address | neighbour }")
    obj = _IP_OBJECTS.get(args[0])
    if obj is None:
        return Failed(f'Object "{args[0]}" is unknown, try "ip help".')
    rest = args[1:]
    if rest and rest[0] in ("show", "list", "ls", "sh", "s"):
        rest = rest[1:]
    elif rest:
        return Failed(f'Command "{rest[0]}" is unknown, try "ip {obj} help".')
    if rest and rest[0] == "dev":
        rest = rest[1:]
        if not rest:
            return Failed('Command line is not complete. Try option "help"')
    if len(rest) > 1:
        return Failed(f'Error: either "dev" is duplicate, or "{rest[1]}" is a garbage.')
    device = rest[0] if rest else ""
    return IpAddr(device) if obj == "addr" else IpNeigh(device)


# -- the line discipline and the shell ---------------------------------------------------------

@dataclass
class Feed:
    """What one ``feed`` produced: bytes to echo, then the commands of the
    lines it completed (None for an empty line), in order."""
    echo: bytes = b""
    lines: list[str] = field(default_factory=list)


class Shell:
    """The console's line discipline and prompt."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self._line = bytearray()
        self._last_cr = False

    def prompt(self) -> bytes:
        return f"root@{self.hostname}:~# ".encode()

    def feed(self, data: bytes) -> Feed:
        out = Feed()
        echo = bytearray()
        for byte in data:
            if byte == 0x0A and self._last_cr:      # the LF of a CR LF
                self._last_cr = False
                continue
            self._last_cr = byte == 0x0D
            if byte in (0x0D, 0x0A):
                echo += b"\r\n"
                out.lines.append(self._line.decode("utf-8", errors="replace"))
                self._line.clear()
            elif byte in (0x7F, 0x08):
                if self._line:
                    self._erase_char()
                    echo += b"\b \b"
            elif byte == 0x15:                       # Ctrl-U: kill the line
                echo += b"\b \b" * len(self._line)
                self._line.clear()
            elif byte == 0x03:                       # Ctrl-C: abandon the line
                echo += b"^C\r\n" + self.prompt()
                self._line.clear()
            elif byte < 0x20:
                continue
            elif len(self._line) < LINE_MAX:
                self._line.append(byte)
                echo.append(byte)
        out.echo = bytes(echo)
        return out

    def _erase_char(self) -> None:
        """One character, not one byte: a UTF-8 continuation byte goes with its lead."""
        while self._line:
            byte = self._line.pop()
            if byte & 0xC0 != 0x80:
                break


# -- renderers -------------------------------------------------------------------------------

@dataclass(frozen=True)
class InterfaceView:
    index: int
    name: str
    mac: bytes
    mtu: int
    up: bool
    address: IPv4Interface | None       # None: no IPv4 address


def _mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def render_ip_addr(interfaces: list[InterfaceView], device: str = "") -> str:
    """iproute2's ``ip addr show`` of Ethernet interfaces."""
    shown = [i for i in interfaces if not device or i.name == device]
    if device and not shown:
        return f'Device "{device}" does not exist.\n'
    lines = []
    for i in shown:
        flags = "BROADCAST,MULTICAST,UP,LOWER_UP" if i.up else "BROADCAST,MULTICAST"
        state = "UP" if i.up else "DOWN"
        lines.append(f"{i.index}: {i.name}: <{flags}> mtu {i.mtu} qdisc noqueue state {state} "
                     f"group default")
        lines.append(f"    link/ether {_mac(i.mac)} brd ff:ff:ff:ff:ff:ff")
        if i.address is not None:
            net = i.address.network
            brd = f" brd {net.broadcast_address}" if net.prefixlen < 31 else ""
            lines.append(f"    inet {i.address.with_prefixlen}{brd} scope global {i.name}")
            lines.append("       valid_lft forever preferred_lft forever")
    return "".join(line + "\n" for line in lines)


@dataclass(frozen=True)
class NeighbourView:
    ip: IPv4Address
    device: str
    mac: bytes | None                   # None: resolution under way (INCOMPLETE)
    state: str = "REACHABLE"            # or STALE, DELAY, PROBE (Linux's NUD states)


def render_ip_neigh(entries: list[NeighbourView], device: str = "",
                    devices: tuple[str, ...] = ()) -> str:
    """iproute2's ``ip neigh show``: the entries, by address."""
    if device and devices and device not in devices:
        return f'Cannot find device "{device}"\n'
    lines = []
    for e in sorted(entries, key=lambda e: (e.device, e.ip)):
        if device and e.device != device:
            continue
        dev = "" if device else f"dev {e.device} "
        if e.mac is None:
            lines.append(f"{e.ip} {dev}INCOMPLETE")
        else:
            lines.append(f"{e.ip} {dev}lladdr {_mac(e.mac)} {e.state}")
    return "".join(line + "\n" for line in lines)


def render_uptime(clock_hms: str, up_seconds: float) -> str:
    """procps' ``uptime``: the time of day and how long the domain has been up
    (its users and load average are not kept by this kernel, so not shown)."""
    minutes = int(up_seconds) // 60
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    parts = []
    if days:
        parts.append(f"{days} day{'s' if days != 1 else ''}")
    parts.append(f"{hours:2d}:{minutes:02d}" if hours else f"{minutes} min")
    return f" {clock_hms} up {', '.join(parts)}\n"


_UNREACH = {0: "Destination Net Unreachable", 1: "Destination Host Unreachable",
            2: "Destination Protocol Unreachable", 3: "Destination Port Unreachable",
            4: "Frag needed and DF set", 9: "Destination Net Prohibited",
            10: "Destination Host Prohibited", 13: "Communication prohibited by filter"}


def render_ping_header(dst: str, size: int = PING_DATA) -> str:
    return f"PING {dst} ({dst}) {size}({size + 28}) bytes of data.\n"


def render_ping_reply(dst: str, seq: int, rtt: float, size: int = PING_DATA) -> str:
    """One reply, as iputils prints it when it arrives."""
    return f"{size + 8} bytes from {dst}: icmp_seq={seq} time={rtt * 1000:.3f} ms\n"


def render_ping(dst: str, result, elapsed: float, size: int = PING_DATA,
                replies_shown: bool = False) -> str:
    """iputils' replies (unless ``replies_shown`` as they came), errors and
    statistics for a finished run: ``result`` is a GuestNetwork PingResult
    (transmitted, received, rtts, errors, unreachable, error)."""
    if result.error and not result.unreachable:
        return f"ping: {result.error}\n"
    lines = []
    events = [] if replies_shown else [(seq, render_ping_reply(dst, seq, rtt, size).rstrip("\n"))
                                       for seq, rtt in result.rtts]
    for err in result.errors:
        if err.type == 3:
            text = _UNREACH.get(err.code, f"Dest Unreachable, Bad Code: {err.code}")
        elif err.type == 11:
            text = "Time to live exceeded"
        else:
            text = f"Bad ICMP type: {err.type}"
        events.append((err.seq, f"From {err.src} icmp_seq={err.seq} {text}"))
    lost = (set(range(1, result.transmitted + 1)) - {seq for seq, _ in result.rtts}
            - {err.seq for err in result.errors})
    if result.unreachable and lost:
        src = result.src or dst
        events.extend((seq, f"From {src} icmp_seq={seq} Destination Host Unreachable")
                      for seq in sorted(lost))
    lines.extend(text for _, text in sorted(events, key=lambda e: e[0]))
    lines.append("")
    lines.append(f"--- {dst} ping statistics ---")
    sent, got = result.transmitted, result.received
    loss = 0 if not sent else round(100 * (sent - got) / sent)
    errors = len(result.errors) + (len(lost) if result.unreachable else 0)
    errs = f", +{errors} errors" if errors else ""
    lines.append(f"{sent} packets transmitted, {got} received{errs}, {loss}% packet loss, "
                 f"time {int(elapsed * 1000)}ms")
    if result.rtts:
        ms = [rtt * 1000 for _, rtt in result.rtts]
        avg = sum(ms) / len(ms)
        mdev = math.sqrt(max(0.0, sum(m * m for m in ms) / len(ms) - avg * avg))
        lines.append(f"rtt min/avg/max/mdev = {min(ms):.3f}/{avg:.3f}/{max(ms):.3f}/{mdev:.3f} ms")
    return "".join(line + "\n" for line in lines)
