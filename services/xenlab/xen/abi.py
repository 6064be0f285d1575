"""The Xen ABI xenlab mirrors, in one place.

Every offset, size, flag and status code that crosses a process boundary is
defined here, commented as the Xen public headers comment it:

* ``xen/include/public/io/ring.h``   - the shared ring header and sizing
* ``xen/include/public/io/netif.h``  - netif tx/rx requests and responses
* ``xen/include/public/io/xenbus.h`` - XenbusState
* ``xen/include/public/grant_table.h`` - grant entries, GTF_* and GNTST_*
* ``xen/include/public/event_channel.h`` and ``xen.h`` - ports, VIRQs,
  shared_info and vcpu_info layout (x86_64)

No other module repeats an offset: they import the names below.
"""
from __future__ import annotations

import enum
import struct

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

# --------------------------------------------------------------------------
# Domain ids (xen.h)
# --------------------------------------------------------------------------
DOMID_FIRST_RESERVED = 0x7FF0
DOMID_SELF = 0x7FF0
DOMID_IO = 0x7FF1
DOMID_XEN = 0x7FF2
DOMID_INVALID = 0x7FF4

# sched.h: SHUTDOWN_* reasons for SCHEDOP_shutdown
SHUTDOWN_poweroff = 0
SHUTDOWN_reboot = 1
SHUTDOWN_suspend = 2
SHUTDOWN_crash = 3
SHUTDOWN_watchdog = 4
SHUTDOWN_REASONS = {"poweroff": SHUTDOWN_poweroff, "reboot": SHUTDOWN_reboot,
                    "suspend": SHUTDOWN_suspend, "crash": SHUTDOWN_crash,
                    "watchdog": SHUTDOWN_watchdog}

# --------------------------------------------------------------------------
# io/ring.h: a shared ring is one page. The header holds the four free-running
# u32 indexes, a private area for the users of the ring, and padding; the
# slots start at byte 64.
# --------------------------------------------------------------------------
RING_HEADER = struct.Struct("<IIII4s44s")   # req_prod, req_event, rsp_prod, rsp_event, pvt, __pad
RING_REQ_PROD = 0     # u32, written by the frontend
RING_REQ_EVENT = 4    # u32, "notify me when req_prod passes this", written by the backend
RING_RSP_PROD = 8     # u32, written by the backend
RING_RSP_EVENT = 12   # u32, "notify me when rsp_prod passes this", written by the frontend
RING_PVT = 16         # 4 bytes private to the ring's users (netif: unused)
RING_SLOTS_OFFSET = 64
assert RING_HEADER.size == RING_SLOTS_OFFSET


def ring_size(slot_size: int, page_size: int = PAGE_SIZE) -> int:
    """__CONST_RING_SIZE: slots that fit after the header, rounded down to 2^n."""
    n = (page_size - RING_SLOTS_OFFSET) // slot_size
    size = 1
    while size * 2 <= n:
        size *= 2
    return size


# --------------------------------------------------------------------------
# io/netif.h
# --------------------------------------------------------------------------
# A ring slot is the union of request and response, so its size is the larger.
NETIF_TX_REQUEST = struct.Struct("<IHHHH")   # gref, offset, flags, id, size
NETIF_TX_RESPONSE = struct.Struct("<Hh")     # id, status
NETIF_EXTRA_INFO = struct.Struct("<BB6s")    # type, flags, union (gso / mcast / hash)
NETIF_EXTRA_GSO = struct.Struct("<HBBH")     # the union's gso: size, type, pad, features
NETIF_RX_REQUEST = struct.Struct("<HHI")     # id, pad, gref
NETIF_RX_RESPONSE = struct.Struct("<HHHh")   # id, offset, flags, status (status > 0: bytes)
NETIF_TX_SLOT = max(NETIF_TX_REQUEST.size, NETIF_TX_RESPONSE.size, NETIF_EXTRA_INFO.size)  # 12
NETIF_RX_SLOT = max(NETIF_RX_REQUEST.size, NETIF_RX_RESPONSE.size, NETIF_EXTRA_INFO.size)  # 8
NET_TX_RING_SIZE = ring_size(NETIF_TX_SLOT)   # 256
NET_RX_RING_SIZE = ring_size(NETIF_RX_SLOT)   # 256

# netif_tx_request.flags
NETTXF_csum_blank = 1 << 0       # protocol checksum field is blank in the packet
NETTXF_data_validated = 1 << 1   # packet data has been validated against the checksum
NETTXF_more_data = 1 << 2        # packet continues in the next request descriptor
NETTXF_extra_info = 1 << 3       # packet to be followed by extra descriptor(s)

# netif_rx_response.flags
NETRXF_data_validated = 1 << 0
NETRXF_csum_blank = 1 << 1
NETRXF_more_data = 1 << 2
NETRXF_extra_info = 1 << 3
NETRXF_gso_prefix = 1 << 4

# netif_tx_response.status / netif_rx_response.status
NETIF_RSP_DROPPED = -2
NETIF_RSP_ERROR = -1
NETIF_RSP_OKAY = 0
NETIF_RSP_NULL = 1               # no response: used for auxiliary requests

# netif_extra_info.type and .flags
XEN_NETIF_EXTRA_TYPE_NONE = 0        # never used - invalid
XEN_NETIF_EXTRA_TYPE_GSO = 1         # u.gso
XEN_NETIF_EXTRA_TYPE_MCAST_ADD = 2   # u.mcast
XEN_NETIF_EXTRA_TYPE_MCAST_DEL = 3   # u.mcast
XEN_NETIF_EXTRA_TYPE_HASH = 4        # u.hash
XEN_NETIF_EXTRA_TYPE_XDP = 5         # u.xdp
XEN_NETIF_EXTRA_TYPE_MAX = 6
XEN_NETIF_EXTRA_FLAG_MORE = 1 << 0   # another extra info descriptor follows
XEN_NETIF_GSO_TYPE_NONE = 0
XEN_NETIF_GSO_TYPE_TCPV4 = 1
XEN_NETIF_GSO_TYPE_TCPV6 = 2

# Slot limits (netif.h XEN_NETIF_NR_SLOTS_MIN; netback's fatal_skb_slots)
XEN_NETIF_NR_SLOTS_MIN = 18      # a backend must accept at least this many slots
FATAL_SKB_SLOTS_DEFAULT = 20     # netback: more slots than this disables the vif
ETH_HLEN = 14                    # netback: a first slot shorter than this is an error
ETH_MIN_MTU = 68
ETH_DATA_LEN = 1500              # default MTU
XEN_NETIF_MAX_TX_SIZE = 0xFFFF   # a frame's total size field is u16

# --------------------------------------------------------------------------
# io/xenbus.h
# --------------------------------------------------------------------------
class XenbusState(enum.IntEnum):
    Unknown = 0
    Initialising = 1
    InitWait = 2        # finished early initialisation, waiting for the peer's details
    Initialised = 3     # waiting for a connection from the peer
    Connected = 4
    Closing = 5         # the device is being closed due to an error or an unplug
    Closed = 6
    Reconfiguring = 7
    Reconfigured = 8


# --------------------------------------------------------------------------
# grant_table.h (v1)
# --------------------------------------------------------------------------
GRANT_ENTRY_V1 = struct.Struct("<HHI")   # flags, domid, frame
GRANT_ENTRIES_PER_FRAME = PAGE_SIZE // GRANT_ENTRY_V1.size   # 512
GNTTAB_NR_RESERVED_ENTRIES = 8   # refs 0..7 belong to the toolstack
# xl.cfg max_grant_frames: Xen's default (opt_max_grant_frames) is 64 frames,
# 32768 entries. The frames are the domain's own (GNTTABOP_setup_table), so a
# domain that never grows its table costs no more for the limit.
DEFAULT_MAX_GRANT_FRAMES = 64
GNTTABOP_SETUP_RETRIES = 4       # _set_status: CAS attempts on an entry that keeps changing

GTF_invalid = 0
GTF_permit_access = 1
GTF_accept_transfer = 2
GTF_transfer_committed = 1 << 2    # overloads GTF_readonly's bit for transfer entries
GTF_transfer_completed = 1 << 3
GTF_type_mask = 3
GTF_readonly = 1 << 2      # restrict @domid to read-only mappings and accesses
GTF_reading = 1 << 3       # grant entry is currently mapped for reading by @domid
GTF_writing = 1 << 4       # grant entry is currently mapped for writing by @domid

GNTMAP_device_map = 1 << 0
GNTMAP_host_map = 1 << 1
GNTMAP_readonly = 1 << 2

GNTCOPY_source_gref = 1 << 0
GNTCOPY_dest_gref = 1 << 1

GNTST_okay = 0
GNTST_general_error = -1
GNTST_bad_domain = -2
GNTST_bad_gntref = -3
GNTST_bad_handle = -4
GNTST_bad_virt_addr = -5
GNTST_bad_dev_addr = -6
GNTST_no_device_space = -7
GNTST_permission_denied = -8
GNTST_bad_page = -9
GNTST_bad_copy_arg = -10
GNTST_address_too_big = -11
GNTST_eagain = -12
GNTST_no_space = -13       # out of space (handles or table frames)
GNTST_NAMES = {
    GNTST_okay: "okay",
    GNTST_general_error: "undefined error",
    GNTST_bad_domain: "unrecognised domain id",
    GNTST_bad_gntref: "invalid grant reference",
    GNTST_bad_handle: "invalid mapping handle",
    GNTST_bad_virt_addr: "invalid virtual address",
    GNTST_bad_dev_addr: "invalid device address",
    GNTST_no_device_space: "no spare translation slot in the I/O MMU",
    GNTST_permission_denied: "permission denied",
    GNTST_bad_page: "bad page",
    GNTST_bad_copy_arg: "copy arguments cross page boundary",
    GNTST_address_too_big: "page address size too large",
    GNTST_eagain: "operation not done; try again",
    GNTST_no_space: "out of space",
}

# --------------------------------------------------------------------------
# event_channel.h / xen.h
# --------------------------------------------------------------------------
VIRQ_TIMER = 0       # V. Timebase update, and/or requested timeout
VIRQ_DEBUG = 1       # V. Request guest to dump debug info
VIRQ_CONSOLE = 2     # G. (DOM0) Bytes received on emergency console
VIRQ_DOM_EXC = 3     # G. (DOM0) Exceptional event for some domain
VIRQ_TBUF = 4
VIRQ_DEBUGGER = 6
VIRQ_XENOPROF = 7
VIRQ_CON_RING = 8
VIRQ_PCPU_STATE = 9
VIRQ_MEM_EVENT = 10
VIRQ_ARGO = 11
VIRQ_ENOMEM = 12
VIRQ_XENPMU = 13
VIRQ_ARCH_0 = 16     # VIRQ_ARCH_0..7: left to the architecture (x86: VIRQ_MCA)
# xenlab's stand-in for the PV NMI callback (CALLBACKTYPE_nmi): an NMI sent
# to a domain (xl trigger D nmi) is raised on this per-vCPU VIRQ, which x86
# Xen leaves unused (hypervisor/triggers.py).
VIRQ_NMI = VIRQ_ARCH_0 + 1
NR_VIRQS = 24
# Per-vCPU VIRQs ("V." above); the others are global to the domain.
VIRQ_PER_VCPU = frozenset({VIRQ_TIMER, VIRQ_DEBUG, VIRQ_XENOPROF, VIRQ_XENPMU, VIRQ_NMI})
# Global VIRQs only the hardware/control domain may bind.
VIRQ_PRIVILEGED = frozenset({VIRQ_CONSOLE, VIRQ_DOM_EXC, VIRQ_TBUF, VIRQ_PCPU_STATE,
                             VIRQ_MEM_EVENT, VIRQ_ENOMEM})


class EvtchnState(enum.IntEnum):
    """EVTCHNSTAT_* as EVTCHNOP_status reports them."""
    closed = 0
    unbound = 1
    interdomain = 2
    pirq = 3
    virq = 4
    ipi = 5


# shared_info on x86_64 (xen.h, arch-x86/xen.h).
XEN_LEGACY_MAX_VCPUS = 32
BITS_PER_XEN_ULONG = 64
EVTCHN_2L_NR_CHANNELS = BITS_PER_XEN_ULONG * BITS_PER_XEN_ULONG   # 4096
VCPU_INFO_SIZE = 64
VCPU_UPCALL_PENDING = 0      # u8 evtchn_upcall_pending
VCPU_UPCALL_MASK = 1         # u8 evtchn_upcall_mask
VCPU_PENDING_SEL = 8         # xen_ulong_t evtchn_pending_sel
SHARED_INFO_EVTCHN_PENDING = XEN_LEGACY_MAX_VCPUS * VCPU_INFO_SIZE             # 2048
SHARED_INFO_EVTCHN_MASK = SHARED_INFO_EVTCHN_PENDING + BITS_PER_XEN_ULONG * 8  # 2560
SHARED_INFO_WC_VERSION = SHARED_INFO_EVTCHN_MASK + BITS_PER_XEN_ULONG * 8      # 3072
SHARED_INFO_WC = struct.Struct("<III")   # wc_version, wc_sec, wc_nsec

# Page tables, mmu_update and mmuext_op: xenlab.xen.paging.
# Extents in one XENMEM_increase/decrease_reservation call: Linux's balloon
# driver hands over one page of frame numbers (frame_list) per hypercall, and
# the lab's hypervisor takes no more.
MAX_EXTENTS = PAGE_SIZE // 8
# xen.h: the M2P entry of a frame no domain owns (~0UL on x86_64).
INVALID_M2P_ENTRY = (1 << 64) - 1

MMU_NORMAL_PT_UPDATE = 0       # ptr's low 2 bits select the update type
MMU_MACHPHYS_UPDATE = 1
MMU_PT_UPDATE_PRESERVE_AD = 2

# --------------------------------------------------------------------------
# xl conventions
# --------------------------------------------------------------------------
DOM0_NAME = "Domain-0"
