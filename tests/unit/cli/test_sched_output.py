"""What xl prints for vcpu-list, sched-credit, cpupool-list, uptime and xentop,
column for column as tools/xl and tools/xentop print them."""
from __future__ import annotations

import pytest

from xenlab.cli import sched_output as so
from xenlab.proto import sched_pb2


def test_vcpu_list_layout():
    vcpus = [
        sched_pb2.VcpuInfo(domid=0, name="Domain-0", vcpu=0, online=True, cpu=1, running=True,
                           time=12.34, hard=[0, 1, 2, 3], soft=[0, 1, 2, 3]),
        sched_pb2.VcpuInfo(domid=5, name="web", vcpu=1, online=True, cpu=3, blocked=True,
                           time=0.05, hard=[0, 1, 3], soft=[0, 1, 2, 3]),
        sched_pb2.VcpuInfo(domid=5, name="web", vcpu=2, online=False, cpu=-1, time=0,
                           hard=[2], soft=[0, 1, 2, 3]),
    ]
    assert so.format_vcpu_list(vcpus, 4).splitlines() == [
        "Name                                ID  VCPU   CPU State   Time(s) Affinity (Hard / Soft)",
        # xl prints CPU with "%5u" right after VCPU's "%5u": no space between them.
        "Domain-0                             0     0    1   r--      12.3  all / all",
        "web                                  5     1    3   -b-       0.1  0-1,3 / all",
        "web                                  5     2    -   --p       0.0  2 / all",
    ]


def test_sched_credit_layout_per_pool():
    pools = [sched_pb2.Cpupool(poolid=0, name="Pool-0", sched="credit"),
             sched_pb2.Cpupool(poolid=1, name="fast", sched="credit2"),
             sched_pb2.Cpupool(poolid=2, name="slow", sched="credit")]
    params = [sched_pb2.SchedParams(domid=0, name="Domain-0", weight=256, cap=0, poolid=0),
              sched_pb2.SchedParams(domid=7, name="busy", weight=512, cap=25, poolid=2),
              sched_pb2.SchedParams(domid=8, name="quick", weight=256, cap=0, poolid=1)]
    assert so.format_sched_pools(pools, params, "credit").splitlines() == [
        "Cpupool Pool-0: tslice=30ms ratelimit=1000us migration-delay=0us",
        "Name                                ID Weight  Cap",
        "Domain-0                             0    256    0",
        "Cpupool slow: tslice=30ms ratelimit=1000us migration-delay=0us",
        "Name                                ID Weight  Cap",
        "busy                                 7    512   25",
    ]
    assert so.format_sched_pools(pools, params, "credit2").splitlines() == [
        "Cpupool fast: ratelimit=1000us",
        "Name                                ID Weight  Cap",
        "quick                                8    256    0",
    ]
    assert so.format_sched_pools(pools, params, "credit", only="slow").splitlines()[0] == \
        "Cpupool slow: tslice=30ms ratelimit=1000us migration-delay=0us"


def test_cpupool_list_layout():
    pools = [sched_pb2.Cpupool(poolid=0, name="Pool-0", sched="credit", cpus=[0, 1, 2], domains=[0, 3]),
             sched_pb2.Cpupool(poolid=1, name="p1", sched="credit2", cpus=[3])]
    assert so.format_cpupool_list(pools).splitlines() == [
        "Name               CPUs   Sched     Active   Domain count",
        "Pool-0               3    credit       y          2",
        "p1                   1   credit2       y          0",
    ]
    assert so.format_cpupool_list(pools, cpus_only=True).splitlines() == [
        "Name               CPU list", "Pool-0             0,1,2", "p1                 3"]


@pytest.mark.parametrize("seconds, long, short", [
    (0, " 0:00:00", " 0:00"),
    (3725, " 1:02:05", " 1:02"),
    (86400 + 61, "1 day,  0:01:01", "1 day,  0:01"),
    (3 * 86400 + 7200, "3 days,  2:00:00", "3 days,  2:00"),
])
def test_uptime_strings(seconds, long, short):
    assert so.uptime_to_string(seconds) == long
    assert so.uptime_to_string(seconds, short=True) == short


def test_uptime_lines():
    assert so.uptime_header() == "Name                                ID Uptime\n"
    assert so.uptime_line("web", 3, 65) == "web                                  3  0:01:05\n"
    assert so.uptime_line("web", 3, 65, short=True, now=0).endswith(" up  0:01, web (3)\n")


def test_xentop_state_letters_are_in_its_own_order():
    assert so.xentop_state("r-----") == "-----r"
    assert so.xentop_state("-b----") == "--b---"
    assert so.xentop_state("---sc-") == "-s-c--"
    assert so.xentop_state("--p---") == "----p-"


def test_cpu_percent_is_of_one_cpu():
    assert so.cpu_percent(10.0, 12.0, 1.0) == 200.0
    assert so.cpu_percent(10.0, 10.25, 1.0) == 25.0
    assert so.cpu_percent(10.0, 9.0, 1.0) == 0.0       # a restarted domain's counter
    assert so.cpu_percent(1.0, 2.0, 0.0) == 0.0


def test_xentop_batch_table_layout():
    rows = [so.TopRow(3, "a-very-long-name", "-b----", 12.9, 25.04, 16384, 32768, 2, 1, 4096, 10240),
            so.TopRow(0, "Domain-0", "r-----", 100.0, 3.0, 262144, 262144, 1, 0, 0, 0)]
    lines = so.xentop_table(rows, total_kb=1048576).splitlines()
    assert lines[0] == ("      NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  MAXMEM(k) MAXMEM(%) "
                        "VCPUS NETS NETTX(k) NETRX(k) VBDS   VBD_OO   VBD_RD   VBD_WR  VBD_RSECT  "
                        "VBD_WSECT SSID")
    assert lines[1] == ("a-very-lon --b---         12   25.0      16384    1.6      32768       3.1"
                        "     2    1        4       10    0        0        0        0          0"
                        "          0    0")
    assert lines[2].startswith("  Domain-0 -----r        100    3.0     262144   25.0")
    assert all(len(line) == len(lines[0]) for line in lines)


def test_xentop_summary():
    rows = [so.TopRow(0, "Domain-0", "r-----", 1, 0, 1, 1, 1, 0, 0, 0),
            so.TopRow(1, "a", "-b----", 1, 0, 1, 1, 1, 0, 0, 0),
            so.TopRow(2, "b", "--p---", 1, 0, 1, 1, 1, 0, 0, 0)]
    lines = so.xentop_summary(rows, "4.19-xenlab", 2048, 1024, 4, 2300, now=0).splitlines()
    assert lines[0].startswith("xentop - ") and lines[0].endswith("   Xen 4.19-xenlab")
    assert lines[1] == "3 domains: 1 running, 1 blocked, 1 paused, 0 crashed, 0 dying, 0 shutdown "
    assert lines[2] == "Mem: 2048k total, 1024k used, 1024k free    CPUs: 4 @ 2300MHz"


def test_xl_info_with_physinfo_has_xls_fields_in_xls_order():
    from xenlab.cli import output
    from xenlab.proto import domains_pb2
    text = output.format_host_info(
        domains_pb2.HostInfo(host="lab", release="6.1", nr_cpus=4, xen_version="4.19-xenlab",
                             total_memory_kb=2 << 20, free_memory_kb=1 << 20,
                             sharing_freed_kb=300 * 1024 + 5, sharing_used_kb=20 * 1024,
                             page_sharing="on: ksmd started by the hypervisor"),
        sched_pb2.PhysInfo(version="#1 SMP", machine="x86_64", max_cpu_id=3, nr_nodes=1,
                           cores_per_socket=2, threads_per_core=2, cpu_khz=2300125,
                           hw_caps=[0x1f8bfbff, 0xf7fa3203, 0, 0, 0, 0, 0, 0],
                           virt_caps="pv gnttab-v1", free_cpus=1, scheduler="credit",
                           commandline="xenlab hypervisor", cc_compiler="CPython"))
    values = dict((line[:23].rstrip(), line[25:]) for line in text.splitlines())
    keys = list(values)
    order = ["host", "release", "version", "machine", "nr_cpus", "max_cpu_id", "nr_nodes",
             "cores_per_socket", "threads_per_core", "cpu_mhz", "hw_caps", "virt_caps",
             "total_memory", "free_memory", "sharing_freed_memory", "sharing_used_memory",
             "outstanding_claims", "free_cpus", "xen_major", "xen_minor", "xen_extra",
             "xen_version", "xen_caps", "xen_scheduler", "xen_pagesize", "xen_commandline",
             "cc_compiler"]
    assert [k for k in keys if k in order] == order and keys[-1] == "xend_config_format"
    assert values["cpu_mhz"] == "2300.125"
    assert values["hw_caps"] == "1f8bfbff:f7fa3203:00000000:00000000:00000000:00000000:00000000:00000000"
    assert values["virt_caps"] == "pv gnttab-v1" and values["free_cpus"] == "1"
    assert values["xen_scheduler"] == "credit" and values["total_memory"] == "2048"
    assert (values["sharing_freed_memory"], values["sharing_used_memory"]) == ("300", "20")
    assert values["page_sharing"] == "on: ksmd started by the hypervisor"
