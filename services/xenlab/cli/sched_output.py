"""What xl prints for the scheduling commands (vcpu-list, sched-credit,
cpupool-list, uptime, dmesg) and xentop's batch view, column for column
as tools/xl and tools/xentop print them. Pure: protobuf messages in,
text out."""
from __future__ import annotations

import time
from dataclasses import dataclass

from xenlab.xen.sched import MIGRATION_DELAY_US, RATELIMIT_US, TSLICE_MS, format_cpulist


# --------------------------------------------------------------------------
# xl vcpu-list (xl_vcpu.c print_vcpuinfo)

def format_vcpu_list(vcpus, nr_cpus: int) -> str:
    lines = [f"{'Name':<32} {'ID':>5} {'VCPU':>5} {'CPU':>5} {'State':>5} {'Time(s)':>9} "
             f"Affinity (Hard / Soft)"]
    for v in vcpus:
        head = f"{v.name:<32} {v.domid:>5} {v.vcpu:>5}"
        if not v.online or v.cpu < 0:
            state = f"{'-':>5} {'-':>3}-{'p' if not v.online else '-'} "
        else:
            state = f"{v.cpu:>5} {'r' if v.running else '-':>3}{'b' if v.blocked else '-'}- "
        hard = format_cpulist(v.hard, nr_cpus)
        soft = format_cpulist(v.soft, nr_cpus)
        lines.append(f"{head}{state}{v.time:9.1f}  {hard} / {soft}")
    return "".join(line + "\n" for line in lines)


# --------------------------------------------------------------------------
# xl sched-credit / sched-credit2 (xl_sched.c)

def sched_header() -> str:
    return f"{'Name':<33} {'ID':>4} {'Weight':>6} {'Cap':>4}\n"


def sched_row(p) -> str:
    return f"{p.name:<33} {p.domid:>4} {p.weight:>6} {p.cap:>4}\n"


def pool_line(pool, sched: str) -> str:
    if sched == "credit2":
        return f"Cpupool {pool.name}: ratelimit={RATELIMIT_US}us\n"
    return (f"Cpupool {pool.name}: tslice={TSLICE_MS}ms ratelimit={RATELIMIT_US}us "
            f"migration-delay={MIGRATION_DELAY_US}us\n")


def format_sched_pools(pools, params, sched: str, only: str = "") -> str:
    """Every pool of scheduler ``sched`` (or only the one named), each with
    its line and its domains, as sched_domain_output."""
    out = []
    for pool in pools:
        if pool.sched != sched or (only and only not in (pool.name, str(pool.poolid))):
            continue
        out.append(pool_line(pool, sched))
        out.append(sched_header())
        out.extend(sched_row(p) for p in params if p.poolid == pool.poolid)
    return "".join(out)


# --------------------------------------------------------------------------
# xl cpupool-list (xl_cpupool.c main_cpupoollist)

def format_cpupool_list(pools, cpus_only: bool = False) -> str:
    out = [f"{'Name':<19}" + ("CPU list\n" if cpus_only else "CPUs   Sched     Active   Domain count\n")]
    for pool in pools:
        if cpus_only:
            out.append(f"{pool.name:<19}" + ",".join(str(c) for c in pool.cpus) + "\n")
        else:
            out.append(f"{pool.name:<19}{len(pool.cpus):>3} {pool.sched:>9}       y       "
                       f"{len(pool.domains):>4}\n")
    return "".join(out)


# --------------------------------------------------------------------------
# xl uptime (xl_info.c uptime_to_string, print_uptime)

def uptime_to_string(seconds: int, short: bool = False) -> str:
    day, rest = divmod(int(seconds), 86400)
    hour, rest = divmod(rest, 3600)
    minute, sec = divmod(rest, 60)
    days = f"{day} days, " if day > 1 else ("1 day, " if day == 1 else "")
    if short:
        return f"{days}{hour:2d}:{minute:02d}"
    return f"{days}{hour:2d}:{minute:02d}:{sec:02d}"


def uptime_header() -> str:
    return f"{'Name':<33} {'ID':>4} Uptime\n"


def uptime_line(name: str, domid: int, seconds: float, short: bool = False,
                now: float | None = None) -> str:
    if short:
        clock = time.strftime("%H:%M:%S", time.localtime(now))
        return f" {clock} up {uptime_to_string(seconds, True)}, {name} ({domid})\n"
    return f"{name:<33} {domid:>4} {uptime_to_string(seconds)}\n"


# --------------------------------------------------------------------------
# xentop (tools/xentop/xentop.c): batch mode's table

XENTOP_FIELDS = [("NAME", 10), ("STATE", 6), ("CPU(sec)", 10), ("CPU(%)", 6), ("MEM(k)", 10),
                 ("MEM(%)", 6), ("MAXMEM(k)", 10), ("MAXMEM(%)", 9), ("VCPUS", 5), ("NETS", 4),
                 ("NETTX(k)", 8), ("NETRX(k)", 8), ("VBDS", 4), ("VBD_OO", 8), ("VBD_RD", 8),
                 ("VBD_WR", 8), ("VBD_RSECT", 10), ("VBD_WSECT", 10), ("SSID", 4)]


@dataclass(frozen=True)
class TopRow:
    """One domain in one sample."""
    domid: int
    name: str
    state: str           # xl list's six letters, r b p s c d
    cpu_time: float      # seconds
    cpu_pct: float
    mem_kb: int
    maxmem_kb: int
    vcpus: int
    nets: int
    net_tx: int          # bytes the domain sent (its vifs' rx in the backend)
    net_rx: int


def xentop_state(xl_state: str) -> str:
    """xentop's letters are d s b c p r, in that order (state_funcs)."""
    have = set(xl_state.replace("-", ""))
    return "".join(c if c in have else "-" for c in "dsbcpr")


def cpu_percent(before: float, after: float, elapsed: float) -> float:
    """get_cpu_pct: CPU seconds used over wall seconds passed, in percent
    of one CPU (a domain with two busy vCPUs shows 200)."""
    return 0.0 if elapsed <= 0 else max(0.0, (after - before) / elapsed * 100.0)


def xentop_header() -> str:
    return " ".join(f"{name:>{width}}" for name, width in XENTOP_FIELDS) + "\n"


def xentop_row(r: TopRow, total_kb: int) -> str:
    mem_pct = r.mem_kb / total_kb * 100 if total_kb else 0.0
    max_pct = f"{r.maxmem_kb / total_kb * 100:9.1f}" if total_kb else f"{'n/a':>9}"
    cells = [f"{r.name[:10]:>10}", f"{xentop_state(r.state):>6}", f"{int(r.cpu_time):>10}",
             f"{r.cpu_pct:6.1f}", f"{r.mem_kb:>10}", f"{mem_pct:6.1f}", f"{r.maxmem_kb:>10}",
             max_pct, f"{r.vcpus:>5}", f"{r.nets:>4}", f"{r.net_tx // 1024:>8}",
             f"{r.net_rx // 1024:>8}", f"{0:>4}", f"{0:>8}", f"{0:>8}", f"{0:>8}", f"{0:>10}",
             f"{0:>10}", f"{0:>4}"]
    return " ".join(cells) + "\n"


def xentop_summary(rows, version: str, total_kb: int, free_kb: int, nr_cpus: int, mhz: int,
                   now: float | None = None) -> str:
    """The interactive view's first lines (do_summary)."""
    counts = dict(r=0, b=0, p=0, s=0, c=0, d=0)
    for r in rows:
        letters = r.state.replace("-", "")
        for c in "rbpscd":
            if c in letters:
                counts[c] += 1
                break
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    return (f"xentop - {clock}   Xen {version}\n"
            f"{len(rows)} domains: {counts['r']} running, {counts['b']} blocked, {counts['p']} paused, "
            f"{counts['c']} crashed, {counts['d']} dying, {counts['s']} shutdown \n"
            f"Mem: {total_kb}k total, {total_kb - free_kb}k used, {free_kb}k free    "
            f"CPUs: {nr_cpus} @ {mhz}MHz\n")


def xentop_table(rows, total_kb: int) -> str:
    """Header and one line per domain, sorted by name (xentop's default sort)."""
    ordered = sorted(rows, key=lambda r: r.name.lower())
    return xentop_header() + "".join(xentop_row(r, total_kb) for r in ordered)
