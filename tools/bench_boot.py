"""The cost of a direct-paging kernel's boot-time direct map, in process:
the kernel's build of it and the hypervisor's validation at the pin, for a
domain of PAGES frames (default 65,536: Domain-0's 256 MiB). Prints the
fastest and slowest of RUNS boots.

    python tools/bench_boot.py [PAGES] [RUNS]
"""
import sys
import time

from xenlab.testing.paging_machine import PagingMachine


def main() -> None:
    pages = int(sys.argv[1]) if len(sys.argv) > 1 else 65536
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        PagingMachine("direct", pages=pages)
        times.append(time.perf_counter() - started)
    print(f"direct map of {pages} pages, {runs} boots: fastest {min(times):.3f} s, "
          f"slowest {max(times):.3f} s")


if __name__ == "__main__":
    main()
