"""XEN_SYSCTL_physinfo from /proc/cpuinfo: topology, speed, hw_caps words."""
from __future__ import annotations

from xenlab.hypervisor.physinfo import hw_caps, parse_cpuinfo, read_physinfo

CPUINFO = """processor\t: 0
physical id\t: 0
siblings\t: 4
cpu cores\t: 2
cpu MHz\t\t: 2300.125
flags\t\t: fpu sse2 pni hypervisor lm nx syscall lahf_lm abm avx2

processor\t: 1
physical id\t: 1
siblings\t: 4
cpu cores\t: 2
cpu MHz\t\t: 2300.000
flags\t\t: fpu

"""


def test_topology_and_speed_come_from_cpuinfo():
    info = parse_cpuinfo(CPUINFO)
    assert (info["nr_sockets"], info["cores_per_socket"], info["threads_per_core"]) == (2, 2, 2)
    assert info["cpu_khz"] == 2300125


def test_flags_become_xens_featureset_bits():
    words = hw_caps(parse_cpuinfo(CPUINFO)["flags"])
    assert words[0] == 1 << 0 | 1 << 26            # fpu, sse2: CPUID.1:EDX
    assert words[1] == 1 << 0 | 1 << 31            # pni, hypervisor: CPUID.1:ECX
    assert words[2] == 1 << 11 | 1 << 20 | 1 << 29  # syscall, nx, lm: 0x80000001:EDX
    assert words[3] == 1 << 0 | 1 << 5              # lahf_lm, abm: 0x80000001:ECX
    assert words[4:] == [0, 0, 0, 0]                # avx2 (leaf 7) is not read
    assert len(words) == 8


def test_no_cpuinfo_gives_one_plain_cpu():
    info = parse_cpuinfo("")
    assert (info["cpu_khz"], info["cores_per_socket"], info["threads_per_core"]) == (0, 1, 1)


def test_this_host_is_read(tmp_path):
    info = read_physinfo()
    assert info["nr_cpus"] >= 1 and info["max_cpu_id"] == info["nr_cpus"] - 1
    assert info["virt_caps"] == "pv hvm hap shadow gnttab-v1" and len(info["hw_caps"]) == 8
    missing = read_physinfo(proc=tmp_path, sys_dir=tmp_path)
    assert missing["nr_nodes"] == 1 and missing["hw_caps"] == [0] * 8
