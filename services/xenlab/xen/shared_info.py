"""The event-channel part of shared_info, over a page of shared memory.

Layout (x86_64, xen.h): ``vcpu_info[32]`` of 64 bytes each, then
``evtchn_pending[64]`` and ``evtchn_mask[64]`` (xen_ulong_t each), the 2-level
event channel ABI of Xen's event_2l.c. Both sides use the same class: the
hypervisor calls ``set_pending``/``unmask``; the guest calls ``scan`` from its
upcall handler and ``mask``/``is_masked`` on its own ports.
"""
from __future__ import annotations

from xenlab.xen import abi
from xenlab.xen.atomic import AtomicWords


class SharedInfo:
    def __init__(self, buf, offset: int = 0, nr_vcpus: int = abi.XEN_LEGACY_MAX_VCPUS):
        self.nr_vcpus = min(nr_vcpus, abi.XEN_LEGACY_MAX_VCPUS)
        self._pending = AtomicWords(buf, offset + abi.SHARED_INFO_EVTCHN_PENDING,
                                    abi.BITS_PER_XEN_ULONG)
        self._mask = AtomicWords(buf, offset + abi.SHARED_INFO_EVTCHN_MASK,
                                 abi.BITS_PER_XEN_ULONG)
        # Word 0 of each vcpu_info holds evtchn_upcall_pending (byte 0) and
        # evtchn_upcall_mask (byte 1); word 1 is evtchn_pending_sel.
        self._vcpu = AtomicWords(buf, offset, abi.XEN_LEGACY_MAX_VCPUS * abi.VCPU_INFO_SIZE // 8)

    def release(self) -> None:
        for words in (self._pending, self._mask, self._vcpu):
            words.release()

    def _vcpu_word(self, vcpu: int, off: int) -> int:
        return (vcpu * abi.VCPU_INFO_SIZE + off) // 8

    # -- hypervisor side ---------------------------------------------------
    def set_pending(self, port: int, vcpu: int = 0) -> bool:
        """evtchn_2l_set_pending: True when the vCPU must get an upcall now."""
        if self._pending.test_and_set_bit(port):
            return False                      # already pending: no new edge
        if self._mask.test_bit(port):
            return False                      # masked: stays pending until unmask
        return self._mark_events_pending(port, vcpu)

    def unmask(self, port: int, vcpu: int = 0) -> bool:
        """evtchn_2l_unmask: clear the mask; re-raise if the port is pending."""
        was_masked = self._mask.test_and_clear_bit(port)
        if was_masked and self._pending.test_bit(port):
            return self._mark_events_pending(port, vcpu)
        return False

    def _mark_events_pending(self, port: int, vcpu: int) -> bool:
        sel = self._vcpu_word(vcpu, abi.VCPU_PENDING_SEL)
        word = port // abi.BITS_PER_XEN_ULONG
        if self._vcpu.fetch_or(sel, 1 << word) >> word & 1:
            return False                      # the vCPU already has this word selected
        up = self._vcpu_word(vcpu, abi.VCPU_UPCALL_PENDING)
        return not self._vcpu.fetch_or(up, 1) & 1

    def clear_port(self, port: int) -> None:
        """Forget a closed port's pending and mask bits."""
        self._pending.test_and_clear_bit(port)
        self._mask.test_and_clear_bit(port)

    # -- guest side -----------------------------------------------------------
    def mask(self, port: int) -> None:
        self._mask.test_and_set_bit(port)

    def is_masked(self, port: int) -> bool:
        return self._mask.test_bit(port)

    def is_pending(self, port: int) -> bool:
        return self._pending.test_bit(port)

    def upcall_pending(self, vcpu: int = 0) -> bool:
        return bool(self._vcpu.load(self._vcpu_word(vcpu, abi.VCPU_UPCALL_PENDING)) & 1)

    def scan(self, vcpu: int = 0) -> list[int]:
        """The upcall handler: clear upcall_pending, take the selector, and
        return (clearing them) the pending, unmasked ports, lowest first.

        Clearing a pending bit before its handler runs is what makes a send
        that races with the handler raise a fresh edge rather than be lost.
        """
        self._vcpu.fetch_and(self._vcpu_word(vcpu, abi.VCPU_UPCALL_PENDING), ~1)
        sel = self._vcpu.exchange(self._vcpu_word(vcpu, abi.VCPU_PENDING_SEL), 0)
        ports: list[int] = []
        while sel:
            word = (sel & -sel).bit_length() - 1
            sel &= sel - 1
            ready = self._pending.load(word) & ~self._mask.load(word)
            while ready:
                bit = (ready & -ready).bit_length() - 1
                ready &= ready - 1
                port = word * abi.BITS_PER_XEN_ULONG + bit
                if self._pending.test_and_clear_bit(port):
                    ports.append(port)
        return ports
