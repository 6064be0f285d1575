"""What xenlab's tests use, shipped for users' tests too.

* ``ManualClock`` (``.clock``): the clock to hand a sans-I/O core (bridge,
  FDB, IP stack, credit scheduler) so that a test moves time itself.
* ``eventually`` (``.eventually``): wait for a condition another task or
  process brings about, failing with what was awaited.
* ``in_process_lab`` / ``InProcessLab`` (``.lab``): a hypervisor in this
  process, and domain kernels booted on it with the drivers and guest agent
  the caller injects.
* ``HypervisorProcess``, ``RunningLab`` (``.processes``): labs of real
  processes.
* ``check_invariants(hv)``: what must hold in the hypervisor's cores
  whatever the guests did (xenlab.testing_invariants); the hostile peers for
  fuzzing drivers are in xenlab.testing_hostile.

None of this needs pytest: the pytest fixtures built on it are in
``xenlab.testing.plugin``, registered through the ``pytest11`` entry point.
"""
from xenlab.osutil import exec_only_forks

# Labs fork their services from the test process: gRPC's fork handlers must
# be off before grpc loads (xenlab.osutil.exec_only_forks).
exec_only_forks()

from xenlab.rundir import short_tempdir  # noqa: E402
from xenlab.testing.clock import ManualClock  # noqa: E402
from xenlab.testing.eventually import Unmet, eventually, eventually_blocking  # noqa: E402
from xenlab.testing.lab import (  # noqa: E402
    InProcessLab, in_process_lab, no_agent, no_drivers, start_in_process_lab)
from xenlab.testing.processes import (  # noqa: E402
    HypervisorProcess, RunningLab, start_hypervisor_process, stop_hypervisor_process)
from xenlab.testing.rpc import call_each  # noqa: E402
from xenlab.testing_invariants import check_invariants, invariant_violations  # noqa: E402

__all__ = [
    "HypervisorProcess", "InProcessLab", "ManualClock", "RunningLab", "Unmet", "call_each",
    "check_invariants", "eventually", "eventually_blocking", "in_process_lab",
    "invariant_violations", "no_agent", "no_drivers", "short_tempdir", "start_hypervisor_process",
    "start_in_process_lab", "stop_hypervisor_process",
]
