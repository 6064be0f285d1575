"""The xenbus device state machine (io/xenbus.h), as a pure core.

Each end of a split device publishes its XenbusState in its own xenstore
directory and watches the other end's. This module decides what one end does
when the other end's state changes; it returns actions, and the driver's
asyncio adapter carries them out in order:

* ``Connect``     set up the data path (netfront: rings, grants, event
                  channel; netback: map, bind, vif, hotplug);
* ``Disconnect``  take the data path down (netback's backend_disconnect,
                  netfront stopping its queues);
* ``Release``     free what the other end may have been using (netfront:
                  end grant access, close the port, free the frames). Only
                  once the backend is Closed or gone: it has unmapped by then;
* ``SwitchState`` write our own ``state`` node (xenbus_switch_state);
* ``Unregister``  the device goes away on our side (device_unregister).

The backend side mirrors Linux netback's set_backend_state(), which walks
through the intermediate states (so that Connect and Disconnect happen on
exactly the edges where Linux does them); the frontend side mirrors
netfront's netback_changed().

One addition Linux does not have: a backend kernel may die and return (a
driver domain is a process here). The toolstack then marks its backends
Closed (``Hypervisor.backend_gone``), so the frontend stops and releases;
the new kernel's netback waits in InitWait for a Closed frontend instead
of closing too, and a Closed frontend that sees InitWait starts over.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass

from xenlab.xen.abi import XenbusState
from xenlab.xen.errors import XenError

S = XenbusState

# The edges a device's own state may take. xenbus_switch_state() does not
# police them in Linux; the adapter does, so that a bug here shows up as an
# error rather than as a peer confused by an impossible sequence.
ALLOWED_TRANSITIONS: dict[XenbusState, frozenset[XenbusState]] = {
    S.Unknown: frozenset({S.Initialising, S.Closed}),
    S.Initialising: frozenset({S.InitWait, S.Initialised, S.Connected, S.Closing, S.Closed}),
    S.InitWait: frozenset({S.Initialised, S.Connected, S.Closing, S.Closed}),
    S.Initialised: frozenset({S.Connected, S.Closing, S.Closed}),
    S.Connected: frozenset({S.Closing, S.Closed, S.Reconfiguring}),
    S.Closing: frozenset({S.Closed}),
    S.Closed: frozenset({S.Initialising, S.InitWait, S.Closing}),
    S.Reconfiguring: frozenset({S.Reconfigured, S.Closing, S.Closed}),
    S.Reconfigured: frozenset({S.Connected, S.Closing, S.Closed}),
}


def check_transition(old: XenbusState, new: XenbusState) -> None:
    """Refuse an edge a well-behaved end never takes (same state is a no-op)."""
    if old != new and new not in ALLOWED_TRANSITIONS[old]:
        raise XenError(errno.EINVAL, f"xenbus state {old.name} -> {new.name} is not allowed")


def parse_state(text: str | None) -> XenbusState:
    """A ``state`` node's value; missing or garbage reads as Unknown, as
    xenbus_read_driver_state() does."""
    if text is None:
        return S.Unknown
    try:
        return XenbusState(int(text.strip()))
    except ValueError:
        return S.Unknown


# -- actions ----------------------------------------------------------------
@dataclass(frozen=True)
class SwitchState:
    state: XenbusState


@dataclass(frozen=True)
class Connect:
    pass


@dataclass(frozen=True)
class Disconnect:
    pass


@dataclass(frozen=True)
class Release:
    pass


@dataclass(frozen=True)
class Unregister:
    pass


Action = SwitchState | Connect | Disconnect | Release | Unregister


# -- backend ------------------------------------------------------------------
def backend_path(current: XenbusState, target: XenbusState) -> list[Action]:
    """set_backend_state(): the steps from current to target, with the
    connect/disconnect on the edges netback does them."""
    actions: list[Action] = []
    state = current
    for _ in range(8):
        if state == target:
            return actions
        step = _backend_step(state, target)
        actions.extend(step)
        state = next(a.state for a in reversed(step) if isinstance(a, SwitchState))
    raise AssertionError(f"backend state walk {current.name} -> {target.name} did not end")


def _backend_step(state: XenbusState, target: XenbusState) -> list[Action]:
    def refuse() -> XenError:
        return XenError(errno.EINVAL, f"netback cannot go from {state.name} to {target.name}")

    if state == S.Initialising:
        if target in (S.InitWait, S.Connected, S.Closing):
            return [SwitchState(S.InitWait)]
        if target == S.Closed:
            return [SwitchState(S.Closed)]
        raise refuse()
    if state == S.Closed:
        if target in (S.InitWait, S.Connected):
            return [SwitchState(S.InitWait)]
        if target == S.Closing:
            return [SwitchState(S.Closing)]
        raise refuse()
    if state == S.InitWait:
        if target == S.Connected:
            return [Connect(), SwitchState(S.Connected)]
        if target in (S.Closing, S.Closed):
            return [SwitchState(S.Closing)]
        raise refuse()
    if state == S.Connected:
        if target in (S.InitWait, S.Closing, S.Closed):
            return [Disconnect(), SwitchState(S.Closing)]
        raise refuse()
    if state == S.Closing:
        if target in (S.InitWait, S.Connected, S.Closed):
            return [SwitchState(S.Closed)]
        raise refuse()
    raise refuse()


def backend_on_frontend_changed(own: XenbusState, frontend: XenbusState,
                                online: bool) -> list[Action]:
    """netback's frontend_changed()."""
    if frontend == S.Initialising:
        if own == S.Closed:
            # "prepare for reconnect"
            return backend_path(own, S.InitWait)
        return []
    if frontend == S.Connected:
        if own == S.Connected:
            return []
        return backend_path(own, S.Connected)
    if frontend == S.Closing:
        return backend_path(own, S.Closing)
    if frontend == S.Closed:
        if own == S.InitWait and online:
            # A new backend kernel (a driver domain restarted) finds the
            # frontend its predecessor left Closed: the frontend reconnects on
            # seeing InitWait, so wait for it rather than close (Linux's
            # netback has no such restart and would go Closed here).
            return []
        actions = backend_path(own, S.Closed)
        if not online:
            actions.append(Unregister())
        return actions
    if frontend == S.Unknown:
        if own in (S.Initialising, S.InitWait):
            # Not there yet (the toolstack may write the backend first):
            # nothing of ours depends on it.
            return []
        return backend_path(own, S.Closed) + [Unregister()]
    return []   # InitWait, Initialised, Reconfiguring, Reconfigured


def backend_on_fatal(own: XenbusState) -> list[Action]:
    """xenbus_dev_fatal() on the backend: Closing, with the data path down."""
    if own == S.Connected:
        return [Disconnect(), SwitchState(S.Closing)]
    if own in (S.Closing, S.Closed):
        return []
    return [SwitchState(S.Closing)]


# -- frontend -------------------------------------------------------------------
def frontend_on_backend_changed(own: XenbusState, backend: XenbusState) -> list[Action]:
    """netfront's netback_changed()."""
    if backend == S.InitWait:
        if own == S.Initialising:
            return [Connect(), SwitchState(S.Connected)]
        if own == S.Closed:
            # The backend came back (a new driver domain kernel probed its
            # directory): start over as a freshly probed frontend would,
            # with what the old connection held given back first.
            return [Release(), SwitchState(S.Initialising), Connect(), SwitchState(S.Connected)]
        return []
    if backend == S.Closing:
        return _frontend_closed(own)
    if backend == S.Closed:
        # Closed without Closing first: netfront treats it as a missed Closing.
        # Either way the backend has unmapped everything by now.
        return _frontend_closed(own) + [Release()]
    if backend == S.Unknown:
        if own == S.Initialising:
            return []   # not written yet; netfront ignores Unknown
        # The backend directory went away (its domain died, or the toolstack
        # removed it): nobody maps our pages any more.
        return _frontend_closed(own) + [Release()]
    return []   # Initialising, Initialised, Connected, Reconfiguring, Reconfigured


def _frontend_closed(own: XenbusState) -> list[Action]:
    """xenbus_frontend_closed(): stop and go Closed."""
    if own == S.Closed:
        return []
    if own == S.Connected:
        return [Disconnect(), SwitchState(S.Closed)]
    return [SwitchState(S.Closed)]


def frontend_on_fatal(own: XenbusState) -> list[Action]:
    """xenbus_dev_fatal() on the frontend: Closing, with the queues stopped."""
    if own == S.Connected:
        return [Disconnect(), SwitchState(S.Closing)]
    if own in (S.Closing, S.Closed):
        return []
    return [SwitchState(S.Closing)]
