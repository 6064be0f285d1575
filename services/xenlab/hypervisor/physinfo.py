"""XEN_SYSCTL_physinfo from the real host: its CPUs, their topology and
speed, its NUMA nodes, and its CPU features as Xen's hw_caps words.

hw_caps holds x86 featureset words (xen/include/public/arch-x86/
cpufeatureset.h): word 0 is CPUID.1:EDX, 1 is CPUID.1:ECX, 2 is
CPUID.0x80000001:EDX, 3 is CPUID.0x80000001:ECX. Those four are rebuilt
from the flags Linux prints in /proc/cpuinfo, by the bit each flag is
(arch/x86/include/asm/cpufeatures.h); words 4-7 (leaf 0xd and 7) are left
0: Linux's names for them are not kept here. A flag Linux hides (it
renames ``pni``, it drops bits it does not use) is a 0 bit.
"""
from __future__ import annotations

import os
import platform
import re
import sys
from pathlib import Path

# Linux's flag name -> (Xen word, bit).
_WORD0 = ["fpu", "vme", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic", None, "sep",
          "mtrr", "pge", "mca", "cmov", "pat", "pse36", "pn", "clflush", None, "dts", "acpi",
          "mmx", "fxsr", "sse", "sse2", "ss", "ht", "tm", "ia64", "pbe"]
_WORD1 = ["pni", "pclmulqdq", "dtes64", "monitor", "ds_cpl", "vmx", "smx", "est", "tm2", "ssse3",
          "cid", "sdbg", "fma", "cx16", "xtpr", "pdcm", None, "pcid", "dca", "sse4_1", "sse4_2",
          "x2apic", "movbe", "popcnt", "tsc_deadline_timer", "aes", "xsave", "osxsave", "avx",
          "f16c", "rdrand", "hypervisor"]
_WORD2 = {11: "syscall", 19: "mp", 20: "nx", 22: "mmxext", 25: "fxsr_opt", 26: "pdpe1gb",
          27: "rdtscp", 29: "lm", 30: "3dnowext", 31: "3dnow"}
_WORD3 = {0: "lahf_lm", 1: "cmp_legacy", 2: "svm", 3: "extapic", 4: "cr8_legacy", 5: "abm",
          6: "sse4a", 7: "misalignsse", 8: "3dnowprefetch", 9: "osvw", 10: "ibs", 11: "xop",
          12: "skinit", 13: "wdt", 15: "lwp", 16: "fma4", 17: "tce", 19: "nodeid_msr", 21: "tbm",
          22: "topoext", 23: "perfctr_core", 24: "perfctr_nb", 26: "bpext", 27: "ptsc",
          28: "perfctr_llc", 29: "mwaitx"}
FLAG_BITS: dict[str, tuple[int, int]] = {}
for _word, _names in ((0, dict(enumerate(_WORD0))), (1, dict(enumerate(_WORD1))), (2, _WORD2), (3, _WORD3)):
    for _bit, _name in _names.items():
        if _name:
            FLAG_BITS[_name] = (_word, _bit)
HW_CAP_WORDS = 8


def hw_caps(flags) -> list[int]:
    words = [0] * HW_CAP_WORDS
    for flag in flags:
        if flag in FLAG_BITS:
            word, bit = FLAG_BITS[flag]
            words[word] |= 1 << bit
    return words


def parse_cpuinfo(text: str) -> dict:
    """The first processor's flags and MHz, and the topology: sockets
    (distinct physical ids), cores per socket, threads per core."""
    blocks = [b for b in text.split("\n\n") if b.strip()]
    procs = []
    for block in blocks:
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        procs.append(fields)
    first = procs[0] if procs else {}
    mhz = first.get("cpu MHz", "0")
    khz = int(round(float(mhz) * 1000)) if re.fullmatch(r"[0-9]+(\.[0-9]*)?", mhz) else 0
    sockets = len({p.get("physical id", "0") for p in procs}) or 1
    cores = _int(first.get("cpu cores"), 1)
    siblings = _int(first.get("siblings"), cores)
    return dict(flags=first.get("flags", "").split(), cpu_khz=khz, nr_sockets=sockets,
                cores_per_socket=cores, threads_per_core=max(1, siblings // max(1, cores)))


def _int(text, default: int) -> int:
    return int(text) if text and text.isdigit() else default


def read_physinfo(proc: Path = Path("/proc"), sys_dir: Path = Path("/sys")) -> dict:
    try:
        cpu = parse_cpuinfo((proc / "cpuinfo").read_text())
    except OSError:
        cpu = parse_cpuinfo("")
    nodes = len(list((sys_dir / "devices/system/node").glob("node[0-9]*"))) or 1
    ncpu = os.cpu_count() or 1
    uname = platform.uname()
    return dict(version=uname.version, machine=uname.machine, nr_cpus=ncpu, max_cpu_id=ncpu - 1, nr_nodes=nodes,
                cores_per_socket=cpu["cores_per_socket"], threads_per_core=cpu["threads_per_core"],
                nr_sockets=cpu["nr_sockets"], cpu_khz=cpu["cpu_khz"], hw_caps=hw_caps(cpu["flags"]),
                # xl's order: PV and HVM/PVH guests (xl.cfg type=), HAP and
                # shadow paging (hap=); grant tables are v1 only.
                virt_caps="pv hvm hap shadow gnttab-v1",
                commandline=" ".join(sys.argv), cc_compiler=f"{platform.python_implementation()} "
                f"{platform.python_version()} ({platform.python_compiler()})",
                cc_compile_date=" ".join(platform.python_build()[1:]))
