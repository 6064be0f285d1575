"""What a domain process boots with, as Xen's start_info page (xen.h
``struct start_info``): its id, its credentials, where the hypervisor and
its doorbell are, its store and console rings. The launcher writes it (launchers/) and
the domain kernel reads it (domain/); both sides import it from here.

It goes to the process on its standard input, as JSON, so that the secret
never shows up in `ps` or the environment.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class StartInfo:
    """What a domain process needs to boot, as Xen's start_info page."""
    domid: int
    name: str
    secret: str
    hypervisor: str          # gRPC address
    doorbell: str            # unix socket path ("" when none)
    vcpus: int
    console_log: str         # where the launcher sends the domain's stdout/stderr
    agent: str = ""          # where the guest agent listens; "" lets the domain choose
    agent_token: str = ""    # what callers of the guest agent must present (the toolstack has it)
    # Descriptors the launcher handed over (-1: none; the domain opens paths).
    memory_fd: int = -1      # the domain's memory object
    doorbell_fd: int = -1    # a connected doorbell socket
    # The ids the process drops to once its memory is mapped (-1: stay as started).
    uid: int = -1
    gid: int = -1
    groups: list[int] = field(default_factory=list)
    store_gfn: int = 0       # the xenstore ring page (start_info's store_mfn)
    store_port: int = 0      # its event channel (store_evtchn); 0: no ring, use gRPC
    cmd_line: str = ""       # the kernel command line (xl.cfg's cmdline=, or root= and extra=)
    console_gfn: int = 0     # the console ring page (start_info's console.domU.mfn)
    console_port: int = 0    # its event channel (console.domU.evtchn); 0: no console ring
    # A restored domain: the gfn of its kernel's suspend record (the gfn it
    # passed to SCHEDOP_shutdown suspend); its kernel resumes from it. -1: a
    # fresh boot.
    resume_gfn: int = -1
    # How its page tables are virtualized: direct | shadow | hap
    # (xenlab.xen.paging.PagingMode). Not direct: its paging pool comes
    # read-only with the doorbell's OK (HELLO_PAGING).
    paging_mode: str = "direct"
    # Domain-0's: xenstored's unix socket, which its xenbus speaks xs_wire.h
    # over in place of a store ring ("": none; store_port, then gRPC).
    xenstored: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "StartInfo":
        data = json.loads(text)
        fields = cls.__dataclass_fields__.values()
        required = (dataclasses.MISSING, dataclasses.MISSING)
        return cls(**{f.name: data[f.name] for f in fields
                      if f.name in data or (f.default, f.default_factory) == required})

