"""netem: Linux's network emulator queueing discipline, sans I/O.

A qdisc sits on a device's egress, as ``tc qdisc add dev vif1.0 root netem
...`` puts one there: every frame the device is handed goes through it
first, and leaves for the device's own transmit when its time comes. This
module is the queue and tc's syntax for it; ``net/qdisc.py`` runs it on a
device with one timer (for the next frame due, none when idle).

What it mirrors (Linux's ``net/sched/sch_netem.c``, iproute2's
``tc/q_netem.c``), for the subset xenlab implements:

* ``delay TIME [JITTER]``: each frame is due ``delay`` after it arrived,
  give or take a jitter drawn uniformly in [-JITTER, +JITTER] (tc's default)
  or, with ``distribution normal``, from a normal law of that deviation
  (cut at 4 deviations, as tc's table is). A delay that comes out negative
  is none. Without ``rate``, jitter reorders frames: the queue is ordered by
  time to send, as netem's tfifo is.
* ``loss PERCENT``: netem decides duplication first, then loss; a frame
  both duplicated and lost goes out once, counted under neither. A lost
  frame is counted under ``loss``.
* ``duplicate PERCENT``: a copy goes through the qdisc again (with
  duplication off, as netem's clone does: it may be lost, corrupted or
  delayed in its own right), counted under ``duplicated``.
* ``corrupt PERCENT``: one random bit of the frame is flipped, counted
  under ``corrupted`` (the frame still goes out: the receiver's checksum
  catches it).
* ``reorder PERCENT [gap DISTANCE]``: with gap N, frames 1..N-1 of each run
  are delayed, and the next is sent at once with probability PERCENT (else
  delayed too, and the run goes on). tc sets gap 1 when none is given: any
  frame goes at once with probability PERCENT. Needs a delay, as tc says.
* ``rate RATE``: frames leave no faster than RATE, each taking
  len * 8 / RATE seconds after the one before it (len is the whole
  Ethernet frame, as qdisc_pkt_len is; no overhead or cell options).
* ``limit PACKETS`` (default 1000): a frame arriving to a full queue is
  dropped, counted under ``limit``.
* ``seed N``: the random generator's seed (tc 6.x's ``seed``).

Not implemented, refused with one line naming it: correlations, ``loss
state|gemodel``, ``ecn``, ``slot``, rate overheads and cells, and the
pareto/paretonormal/custom distribution tables.

The books: frames handed in + ``duplicated`` = frames dequeued + ``loss`` +
``limit`` + what is still queued (``backlog``).
"""
from __future__ import annotations

import collections
import heapq
import random
from dataclasses import dataclass
from typing import Iterable

DEFAULT_LIMIT = 1000                # netem's default queue length (packets)
NORMAL_CUT = 4.0                    # tc's normal table spans about +-4 deviations
MAX_LIMIT = 1 << 20
MAX_DELAY = 3600.0                  # seconds: well past anything a lab wants

DISTRIBUTIONS = ("uniform", "normal")
# The drop reasons a netem counts on its device (net/qdisc.py): lost on
# purpose, over its limit, still queued when the qdisc was deleted.
NETEM_DROPS = ("netem_loss", "netem_limit", "netem_flushed")
UNSUPPORTED_DISTRIBUTIONS = ("pareto", "paretonormal", "experimental", "custom")

# tc's time units (tc_util.c get_time): a bare number is microseconds.
_TIME_UNITS = {
    "s": 1.0, "sec": 1.0, "secs": 1.0,
    "ms": 1e-3, "msec": 1e-3, "msecs": 1e-3,
    "us": 1e-6, "usec": 1e-6, "usecs": 1e-6, "": 1e-6,
    "ns": 1e-9, "nsec": 1e-9, "nsecs": 1e-9,
}
# tc's rate units (tc_util.c get_rate): bits per second; a bare number is bit/s.
_RATE_UNITS = {"": 1, "bit": 1, "bps": 8}
for _i, _p in enumerate("kmgt", 1):
    _RATE_UNITS[f"{_p}bit"] = 1000 ** _i
    _RATE_UNITS[f"{_p}ibit"] = 1024 ** _i
    _RATE_UNITS[f"{_p}bps"] = 8 * 1000 ** _i
    _RATE_UNITS[f"{_p}ibps"] = 8 * 1024 ** _i

USAGE = """\
Usage: ... netem [ limit PACKETS ]
                 [ delay TIME [ JITTER ] ]
                 [ distribution {uniform|normal} ]
                 [ corrupt PERCENT ]
                 [ duplicate PERCENT ]
                 [ loss [random] PERCENT ]
                 [ reorder PERCENT [ gap DISTANCE ] ]
                 [ rate RATE ]
                 [ seed SEED ]"""


class NetemError(ValueError):
    """A netem specification tc would refuse, or one xenlab does not implement."""


@dataclass(frozen=True)
class NetemConfig:
    """One netem's parameters: times in seconds, probabilities in [0, 1],
    rate in bits per second (0: unlimited)."""

    limit: int = DEFAULT_LIMIT
    delay: float = 0.0
    jitter: float = 0.0
    distribution: str = "uniform"
    loss: float = 0.0
    duplicate: float = 0.0
    corrupt: float = 0.0
    reorder: float = 0.0
    gap: int = 0
    rate: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.limit <= MAX_LIMIT:
            raise NetemError(f"limit must be 1 to {MAX_LIMIT} packets, not {self.limit}")
        for name in ("delay", "jitter"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_DELAY:
                raise NetemError(f"{name} must be 0 to {MAX_DELAY:g}s, not {value:g}s")
        for name in ("loss", "duplicate", "corrupt", "reorder"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise NetemError(f"{name} must be 0% to 100%, not {value * 100:g}%")
        if self.distribution not in DISTRIBUTIONS:
            raise NetemError(f"unknown distribution {self.distribution!r}")
        if self.rate < 0 or self.gap < 0:
            raise NetemError("rate and gap cannot be negative")
        if self.reorder and not self.delay:
            raise NetemError("reordering not possible without specifying some delay")

    def format(self) -> str:
        """The options as ``tc qdisc show`` prints them (netem_print_opt)."""
        out = [f"limit {self.limit}"]
        if self.delay:
            out.append(f"delay {format_time(self.delay)}")
            if self.jitter:
                out[-1] += f"  {format_time(self.jitter)}"
        if self.loss:
            out.append(f"loss {format_percent(self.loss)}")
        if self.duplicate:
            out.append(f"duplicate {format_percent(self.duplicate)}")
        if self.reorder:
            out.append(f"reorder {format_percent(self.reorder)}")
        if self.corrupt:
            out.append(f"corrupt {format_percent(self.corrupt)}")
        if self.rate:
            out.append(f"rate {format_rate(self.rate)}")
        if self.seed is not None:
            out.append(f"seed {self.seed}")
        if self.gap:
            out.append(f"gap {self.gap}")
        return " ".join(out)

    def args(self) -> list[str]:
        """tc arguments that parse back to this configuration."""
        out = ["limit", str(self.limit)]
        if self.delay:
            out += ["delay", format_time(self.delay)]
            if self.jitter:
                out += [format_time(self.jitter)]
                if self.distribution != "uniform":
                    out += ["distribution", self.distribution]
        for name in ("loss", "duplicate", "corrupt"):
            if getattr(self, name):
                out += [name, format_percent(getattr(self, name))]
        if self.reorder:
            out += ["reorder", format_percent(self.reorder), "gap", str(self.gap)]
        if self.rate:
            out += ["rate", f"{self.rate}bit"]
        if self.seed is not None:
            out += ["seed", str(self.seed)]
        return out


# -- tc's syntax -------------------------------------------------------------------
def parse_time(text: str) -> float:
    number, unit = _split_unit(text)
    if unit.lower() not in _TIME_UNITS:
        raise NetemError(f'illegal time "{text}" (units: s, ms, us, ns)')
    return number * _TIME_UNITS[unit.lower()]


def parse_rate(text: str) -> int:
    if text.endswith("%"):
        raise NetemError(f'rate "{text}": a share of the device\'s speed is not supported')
    number, unit = _split_unit(text)
    if unit.lower() not in _RATE_UNITS:
        raise NetemError(f'illegal rate "{text}" (units: bit, kbit, mbit, gbit, bps, kbps, ...)')
    bits = round(number * _RATE_UNITS[unit.lower()])
    if bits <= 0:
        raise NetemError(f'rate "{text}" must be more than 0')
    return bits


def parse_percent(text: str) -> float:
    """tc's get_percent: "1%", or a bare number, which is a percentage too."""
    body = text[:-1] if text.endswith("%") else text
    try:
        value = float(body)
    except ValueError:
        raise NetemError(f'illegal percentage "{text}"') from None
    if not 0 <= value <= 100:
        raise NetemError(f'percentage "{text}" is not between 0% and 100%')
    return value / 100


def _split_unit(text: str) -> tuple[float, str]:
    i = len(text)
    while i and text[i - 1].isalpha():
        i -= 1
    try:
        number = float(text[:i])
    except ValueError:
        raise NetemError(f'illegal value "{text}"') from None
    if number != number or number in (float("inf"), float("-inf")) or number < 0:
        raise NetemError(f'illegal value "{text}"')
    return number, text[i:]


def _is_number(text: str) -> bool:
    """A value (a time, a rate, a percentage) rather than the next option."""
    try:
        _split_unit(text[:-1] if text.endswith("%") else text)
    except NetemError:
        return False
    return True


_UNSUPPORTED = {
    "ecn": "ecn", "slot": "slot",
    "state": "loss state (a Markov loss model)", "gemodel": "loss gemodel (Gilbert-Elliott)",
}


def parse_netem(args: Iterable[str]) -> NetemConfig:
    """tc's netem options into a configuration; an option not given has
    netem's default (``tc qdisc change`` sends them all again, as add does)."""
    args = list(args)
    fields: dict = {}
    i = 0

    def value(what: str) -> str:
        nonlocal i
        if i + 1 >= len(args):
            raise NetemError(f'"{args[i]}" needs {what}')
        i += 1
        return args[i]

    def no_correlation(option: str) -> None:
        if i + 1 < len(args) and _is_number(args[i + 1]):
            raise NetemError(f"{option}: correlation is not supported (got {args[i + 1]!r})")

    while i < len(args):
        word = args[i]
        if word == "limit":
            text = value("a number of packets")
            if not text.isdigit():
                raise NetemError(f'illegal "limit" {text!r}')
            fields["limit"] = int(text)
        elif word in ("delay", "latency"):
            fields["delay"] = parse_time(value("a time"))
            if i + 1 < len(args) and _is_number(args[i + 1]):
                i += 1
                fields["jitter"] = parse_time(args[i])
                no_correlation("delay")
        elif word in ("distribution", "drop"):
            name = value("a distribution name")
            if word == "drop" or name in UNSUPPORTED_DISTRIBUTIONS:
                raise NetemError(f"distribution {name} is not supported (uniform, normal)")
            if name not in DISTRIBUTIONS:
                raise NetemError(f'no distribution "{name}" (uniform, normal)')
            fields["distribution"] = name
        elif word == "loss":
            text = value("a percentage")
            if text in _UNSUPPORTED:
                raise NetemError(f"{_UNSUPPORTED[text]} is not supported")
            if text == "random":
                text = value("a percentage")
            fields["loss"] = parse_percent(text)
            no_correlation("loss")
        elif word in ("duplicate", "corrupt"):
            fields[word] = parse_percent(value("a percentage"))
            no_correlation(word)
        elif word == "reorder":
            fields["reorder"] = parse_percent(value("a percentage"))
            no_correlation("reorder")
        elif word == "gap":
            text = value("a distance")
            if not text.isdigit():
                raise NetemError(f'illegal "gap" {text!r}')
            fields["gap"] = int(text)
        elif word == "rate":
            fields["rate"] = parse_rate(value("a rate"))
            if i + 1 < len(args) and _is_number(args[i + 1]):
                raise NetemError("rate: packet overhead and cell size are not supported")
        elif word == "seed":
            text = value("a number")
            if not text.isdigit():
                raise NetemError(f'illegal "seed" {text!r}')
            fields["seed"] = int(text)
        elif word in ("help", "--help", "-h"):
            raise NetemError(USAGE)
        elif word in _UNSUPPORTED:
            raise NetemError(f"{_UNSUPPORTED[word]} is not supported")
        else:
            raise NetemError(f'what is "{word}"?')
        i += 1
    if fields.get("jitter") and not fields.get("delay"):
        raise NetemError("jitter needs a delay")
    if fields.get("distribution", "uniform") != "uniform" and not fields.get("jitter"):
        raise NetemError("distribution specified but no latency and jitter values")
    # tc (q_netem.c): reorder with no gap means gap 1; and a gap with no
    # reorder is refused.
    if fields.get("reorder") and not fields.get("gap"):
        fields["gap"] = 1
    if fields.get("gap") and not fields.get("reorder"):
        raise NetemError("gap needs reorder")
    return NetemConfig(**fields)


def format_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.6g}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.6g}ms"
    return f"{seconds * 1e6:.6g}us"


def format_percent(p: float) -> str:
    return f"{p * 100:g}%"


def format_rate(bits: int) -> str:
    """As tc's sprint_rate: the largest unit that keeps the figure whole
    (or under a thousand)."""
    units = ("bit", "Kbit", "Mbit", "Gbit", "Tbit")
    value, i = float(bits), 0
    while i < len(units) - 1 and value >= 1000 and (value % 1000 == 0 or value >= 1_000_000):
        value /= 1000
        i += 1
    return f"{value:.6g}{units[i]}"


# -- the queue ---------------------------------------------------------------------------
COUNTERS = ("enqueued", "sent", "loss", "limit", "duplicated", "corrupted", "reordered")


class Netem:
    """One netem queue. ``enqueue`` frames as the device is handed them;
    ``dequeue`` what is due; ``next_due`` says when to look again (None:
    nothing queued). Time is whatever clock the caller reads (seconds)."""

    def __init__(self, config: NetemConfig, rng: random.Random | None = None):
        self.config = config
        self.rng = rng if rng is not None else random.Random(config.seed)
        self.counters: collections.Counter = collections.Counter({k: 0 for k in COUNTERS})
        self._tfifo: list[tuple[float, int, bytes]] = []     # (time to send, seq, frame)
        self._head: collections.deque[bytes] = collections.deque()   # reordered: out first
        self._seq = 0
        self._counter = 0            # frames since the last reordered one (netem's q->counter)
        self._last_due: float | None = None    # the latest time to send queued (rate's reference)

    def change(self, config: NetemConfig) -> None:
        """New parameters for frames from now on (what is queued keeps its time)."""
        if config.seed is not None and config.seed != self.config.seed:
            self.rng.seed(config.seed)
        self.config = config

    @property
    def backlog(self) -> int:
        return len(self._tfifo) + len(self._head)

    def enqueue(self, frames: Iterable[bytes], now: float) -> None:
        for frame in frames:
            self.counters["enqueued"] += 1
            self._enqueue(frame, now, may_duplicate=True)

    def _enqueue(self, frame: bytes, now: float, may_duplicate: bool) -> None:
        cfg, rng = self.config, self.rng
        # netem_enqueue: duplication is decided first, then loss takes one copy.
        copies = 1
        if may_duplicate and cfg.duplicate and rng.random() < cfg.duplicate:
            copies += 1
        if cfg.loss and rng.random() < cfg.loss:
            copies -= 1
        if copies == 0:
            self.counters["loss"] += 1
            return
        if copies > 1:
            self.counters["duplicated"] += 1
            self._enqueue(frame, now, may_duplicate=False)
        if cfg.corrupt and rng.random() < cfg.corrupt and frame:
            frame = flip_bit(frame, rng)
            self.counters["corrupted"] += 1
        if self.backlog >= cfg.limit:
            self.counters["limit"] += 1
            return
        if cfg.gap == 0 or self._counter < cfg.gap - 1 or rng.random() >= cfg.reorder:
            due = now + self._delay()
            if cfg.rate:
                if self._last_due is not None and self.backlog:
                    due = max(self._last_due, due)
                due += len(frame) * 8 / cfg.rate
            self._counter += 1
            self._seq += 1
            heapq.heappush(self._tfifo, (due, self._seq, frame))
            self._last_due = due if self._last_due is None else max(self._last_due, due)
        else:
            # Sent now, ahead of everything delayed (__qdisc_enqueue_head).
            self._counter = 0
            self.counters["reordered"] += 1
            self._head.append(frame)

    def _delay(self) -> float:
        cfg = self.config
        if not cfg.jitter:
            return cfg.delay
        if cfg.distribution == "normal":
            x = max(-NORMAL_CUT, min(NORMAL_CUT, self.rng.gauss(0.0, 1.0)))
        else:
            x = self.rng.uniform(-1.0, 1.0)
        return max(0.0, cfg.delay + cfg.jitter * x)

    def dequeue(self, now: float) -> list[bytes]:
        """The frames due by ``now``, in the order they leave."""
        out = list(self._head)
        self._head.clear()
        tfifo = self._tfifo
        while tfifo and tfifo[0][0] <= now:
            out.append(heapq.heappop(tfifo)[2])
        if not tfifo:
            self._last_due = None
        self.counters["sent"] += len(out)
        return out

    def next_due(self) -> float | None:
        """When the next frame is due (now, for a reordered one); None when empty."""
        if self._head:
            return float("-inf")
        return self._tfifo[0][0] if self._tfifo else None

    def flush(self) -> list[bytes]:
        """Everything queued, in order (the qdisc is being replaced or deleted)."""
        out = list(self._head) + [f for _, _, f in sorted(self._tfifo)]
        self._head.clear()
        self._tfifo.clear()
        self._last_due = None
        return out


def flip_bit(frame: bytes, rng: random.Random) -> bytes:
    """One random bit of the frame flipped, as netem's corrupt does
    (``skb->data[random below headlen] ^= 1 << random below 8``)."""
    i = rng.randrange(len(frame))
    out = bytearray(frame)
    out[i] ^= 1 << rng.randrange(8)
    return bytes(out)
