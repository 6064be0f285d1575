"""The xenbus device state machine: netback's set_backend_state walk,
netfront's netback_changed, and both ends played against each other."""
from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenlab.drivers import xenbus_state
from xenlab.drivers.xenbus_state import (Connect, Disconnect, Fatal, Release, SwitchState,
                                         Unregister, backend_on_fatal,
                                         backend_on_frontend_changed, backend_path,
                                         check_transition, frontend_on_backend_changed,
                                         frontend_on_fatal, parse_state)
from xenlab.xen.abi import XenbusState as S
from xenlab.xen.errors import XenError


def states(actions):
    return [a.state for a in actions if isinstance(a, SwitchState)]


@pytest.mark.parametrize("start, target, expected", [
    (S.Initialising, S.InitWait, [SwitchState(S.InitWait)]),
    (S.InitWait, S.Connected, [Connect(), SwitchState(S.Connected)]),
    (S.Initialising, S.Connected, [SwitchState(S.InitWait), Connect(), SwitchState(S.Connected)]),
    (S.Connected, S.Closed, [Disconnect(), SwitchState(S.Closing), SwitchState(S.Closed)]),
    (S.Connected, S.Closing, [Disconnect(), SwitchState(S.Closing)]),
    (S.Closed, S.Connected, [SwitchState(S.InitWait), Connect(), SwitchState(S.Connected)]),
    (S.Closing, S.Connected, [SwitchState(S.Closed), SwitchState(S.InitWait), Connect(),
                              SwitchState(S.Connected)]),
    (S.InitWait, S.Closed, [SwitchState(S.Closing), SwitchState(S.Closed)]),
    (S.Connected, S.Connected, []),
])
def test_backend_path_walks_like_set_backend_state(start, target, expected):
    assert backend_path(start, target) == expected


# The first step of set_backend_state() from each netback state towards each
# target (Linux xen-netback/xenbus.c); the walks above are made of these.
@pytest.mark.parametrize("start, target, step", [
    (S.Initialising, S.InitWait, [SwitchState(S.InitWait)]),
    (S.Initialising, S.Connected, [SwitchState(S.InitWait)]),
    (S.Initialising, S.Closing, [SwitchState(S.InitWait)]),
    (S.Initialising, S.Closed, [SwitchState(S.Closed)]),
    (S.Closed, S.InitWait, [SwitchState(S.InitWait)]),
    (S.Closed, S.Connected, [SwitchState(S.InitWait)]),
    (S.Closed, S.Closing, [SwitchState(S.Closing)]),
    (S.InitWait, S.Connected, [Connect(), SwitchState(S.Connected)]),
    (S.InitWait, S.Closing, [SwitchState(S.Closing)]),
    (S.InitWait, S.Closed, [SwitchState(S.Closing)]),
    (S.Connected, S.InitWait, [Disconnect(), SwitchState(S.Closing)]),
    (S.Connected, S.Closing, [Disconnect(), SwitchState(S.Closing)]),
    (S.Connected, S.Closed, [Disconnect(), SwitchState(S.Closing)]),
    (S.Closing, S.InitWait, [SwitchState(S.Closed)]),
    (S.Closing, S.Connected, [SwitchState(S.Closed)]),
    (S.Closing, S.Closed, [SwitchState(S.Closed)]),
])
def test_each_backend_step_is_set_backend_states(start, target, step):
    actions = backend_path(start, target)
    first = next(i for i, a in enumerate(actions) if isinstance(a, SwitchState))
    assert actions[:first + 1] == step


# Where Linux's set_backend_state() hits BUG(): refused with EINVAL, naming the step.
@pytest.mark.parametrize("start, target", [
    (S.Initialising, S.Initialised), (S.Initialising, S.Reconfiguring),
    (S.Closed, S.Initialised), (S.Closed, S.Initialising),
    (S.InitWait, S.Initialising), (S.InitWait, S.Initialised),
    (S.Connected, S.Initialising), (S.Connected, S.Reconfiguring),
    (S.Closing, S.Initialising), (S.Closing, S.Initialised),
    (S.Unknown, S.Connected), (S.Reconfiguring, S.Connected),
])
def test_backend_path_refuses_impossible_walks(start, target):
    with pytest.raises(XenError, match=f"^EINVAL: netback cannot go from {start.name} "
                                       f"to {target.name}$") as info:
        backend_path(start, target)
    assert info.value.errno == errno.EINVAL


def test_a_step_table_that_cycles_is_an_error_not_a_hang(monkeypatch):
    flip = {S.Closed: S.Closing, S.Closing: S.Closed}
    monkeypatch.setattr(xenbus_state, "_backend_step",
                        lambda state, target: [SwitchState(flip[state])])
    with pytest.raises(AssertionError, match="^backend state walk Closed -> Connected did not end$"):
        backend_path(S.Closed, S.Connected)


def test_every_walk_between_netback_states_ends_and_obeys_the_edges():
    netback_states = [S.Initialising, S.InitWait, S.Connected, S.Closing, S.Closed]
    for start in netback_states:
        for target in [S.InitWait, S.Connected, S.Closing, S.Closed]:
            if start == S.Closed and target == S.Closed:
                continue
            try:
                actions = backend_path(start, target)
            except XenError:
                continue
            state = start
            for new in states(actions):
                check_transition(state, new)
                state = new
            assert state == target


def test_connect_and_disconnect_happen_only_on_their_edges():
    for actions in (backend_path(S.Closed, S.Connected), backend_path(S.Connected, S.Closed)):
        kinds = [type(a) for a in actions]
        assert kinds.count(Connect) + kinds.count(Disconnect) == 1


def test_backend_reactions():
    assert backend_on_frontend_changed(S.InitWait, S.Initialising, True) == []
    assert backend_on_frontend_changed(S.InitWait, S.Connected, True) == \
        [Connect(), SwitchState(S.Connected)]
    assert backend_on_frontend_changed(S.Connected, S.Connected, True) == []
    assert backend_on_frontend_changed(S.Connected, S.Closing, True) == \
        [Disconnect(), SwitchState(S.Closing)]
    assert backend_on_frontend_changed(S.Closing, S.Closed, True) == [SwitchState(S.Closed)]
    assert backend_on_frontend_changed(S.Closing, S.Closed, False) == \
        [SwitchState(S.Closed), Unregister()]
    # "prepare for reconnect"
    assert backend_on_frontend_changed(S.Closed, S.Initialising, True) == [SwitchState(S.InitWait)]
    # a frontend that vanished after we saw it
    assert backend_on_frontend_changed(S.Connected, S.Unknown, True) == \
        [Disconnect(), SwitchState(S.Closing), SwitchState(S.Closed), Unregister()]
    # ...but not one the toolstack has not written yet
    assert backend_on_frontend_changed(S.InitWait, S.Unknown, True) == []


def test_frontend_reactions():
    assert frontend_on_backend_changed(S.Initialising, S.InitWait) == \
        [Connect(), SwitchState(S.Connected)]
    assert frontend_on_backend_changed(S.Connected, S.InitWait) == []
    assert frontend_on_backend_changed(S.Connected, S.Connected) == []
    assert frontend_on_backend_changed(S.Connected, S.Closing) == \
        [Disconnect(), SwitchState(S.Closed)]
    assert frontend_on_backend_changed(S.Closed, S.Closed) == [Release()]
    assert frontend_on_backend_changed(S.Connected, S.Closed) == \
        [Disconnect(), SwitchState(S.Closed), Release()]
    assert frontend_on_backend_changed(S.Connected, S.Unknown) == \
        [Disconnect(), SwitchState(S.Closed), Release()]
    assert frontend_on_backend_changed(S.Initialising, S.Unknown) == []
    # xenbus_frontend_closed() from a state with no data path up: no Disconnect
    assert frontend_on_backend_changed(S.Initialising, S.Closing) == [SwitchState(S.Closed)]
    assert frontend_on_backend_changed(S.Closing, S.Closed) == [SwitchState(S.Closed), Release()]
    assert frontend_on_backend_changed(S.Closed, S.Closing) == []


def test_fatal_goes_closing_with_the_data_path_down():
    assert backend_on_fatal(S.Connected) == [Disconnect(), SwitchState(S.Closing)]
    assert backend_on_fatal(S.InitWait) == [SwitchState(S.Closing)]
    assert backend_on_fatal(S.Closed) == []
    assert frontend_on_fatal(S.Connected) == [Disconnect(), SwitchState(S.Closing)]
    assert frontend_on_fatal(S.Initialising) == [SwitchState(S.Closing)]


@pytest.mark.parametrize("text, state", [("4", S.Connected), (" 2\n", S.InitWait), (None, S.Unknown),
                                         ("0", S.Unknown), ("8", S.Reconfigured)])
def test_parse_state(text, state):
    assert parse_state(text) == state


@pytest.mark.parametrize("text", ["", "x", "99", "-1", "4x", "²", "٣", "４", "\udcff", "4\x00",
                                  "9" * 5000])
def test_a_state_node_that_is_not_a_state_is_the_other_ends_error(text):
    # was read as Unknown ('٣' as Initialised) and, for '²', raised ValueError
    with pytest.raises(XenError) as err:
        parse_state(text, "frontend")
    assert err.value.errno == errno.EINVAL
    assert err.value.message.startswith("saw state ") and err.value.message.endswith(" at frontend")


@pytest.mark.parametrize("frontend", [S.InitWait, S.Reconfiguring, S.Reconfigured])
@pytest.mark.parametrize("own", [S.InitWait, S.Connected, S.Closing, S.Closed])
def test_a_frontend_state_netback_never_expects_is_fatal(own, frontend):
    assert backend_on_frontend_changed(own, frontend, True) == \
        [Fatal(errno.EINVAL, f"saw state {int(frontend)} at frontend")]


def test_initialised_at_the_frontend_changes_nothing():
    assert backend_on_frontend_changed(S.InitWait, S.Initialised, True) == []


def test_check_transition():
    check_transition(S.Connected, S.Connected)
    check_transition(S.Closing, S.Closed)
    with pytest.raises(XenError, match="^EINVAL: xenbus state Connected -> InitWait is not "
                                       "allowed$") as info:
        check_transition(S.Connected, S.InitWait)
    assert info.value.errno == errno.EINVAL


class Pair:
    """Both ends, each reacting to what it last read of the other, as the
    watches deliver it: one end moves per step, in any order."""

    def __init__(self):
        self.front, self.back = S.Initialising, S.Initialising
        self.connected_front = self.connected_back = False
        self.released = False
        self.log: list[str] = []

    def apply(self, side: str, actions) -> None:
        for a in actions:
            self.log.append(f"{side}:{a}")
            if isinstance(a, SwitchState):
                own = self.front if side == "front" else self.back
                check_transition(own, a.state)
                if side == "front":
                    self.front = a.state
                else:
                    self.back = a.state
            elif isinstance(a, Connect):
                if side == "front":
                    self.connected_front = True
                else:
                    assert self.connected_front, "netback mapped rings nobody granted"
                    self.connected_back = True
            elif isinstance(a, Disconnect):
                if side == "back":
                    self.connected_back = False
            elif isinstance(a, Release):
                assert not self.connected_back, "netfront ended grants netback still maps"
                self.released = True

    def step_front(self):
        self.apply("front", frontend_on_backend_changed(self.front, self.back))

    def step_back(self, online=True):
        self.apply("back", backend_on_frontend_changed(self.back, self.front, online))


@given(st.lists(st.sampled_from(["front", "back"]), min_size=0, max_size=20))
def test_the_two_ends_connect_then_close_cleanly_in_any_order(order):
    pair = Pair()
    pair.apply("back", backend_path(S.Initialising, S.InitWait))     # netback_probe
    for side in order:
        pair.step_front() if side == "front" else pair.step_back()
    for _ in range(4):          # let both settle
        pair.step_front()
        pair.step_back()
    assert (pair.front, pair.back) == (S.Connected, S.Connected)
    assert pair.connected_back
    # the toolstack detaches: online=0, backend state Closing (libxl's device remove)
    pair.apply("back", backend_path(pair.back, S.Closing))
    for _ in range(4):
        pair.step_front()
        pair.step_back(online=False)
    assert (pair.front, pair.back) == (S.Closed, S.Closed)
    assert pair.released and not pair.connected_back


def test_a_closed_frontend_and_a_new_backend_reconnect():
    # The toolstack marked the backend Closed when its kernel died.
    assert frontend_on_backend_changed(S.Connected, S.Closed) == \
        [Disconnect(), SwitchState(S.Closed), Release()]
    # A new kernel's netback probes: InitWait, and waits for the Closed frontend.
    assert backend_on_frontend_changed(S.InitWait, S.Closed, True) == []
    assert frontend_on_backend_changed(S.Closed, S.InitWait) == \
        [Release(), SwitchState(S.Initialising), Connect(), SwitchState(S.Connected)]
    # Detaching still closes: online=0.
    assert backend_on_frontend_changed(S.InitWait, S.Closed, False) == \
        [SwitchState(S.Closing), SwitchState(S.Closed), Unregister()]
    # A frontend that failed on its own (Closing) does not come back by itself.
    assert frontend_on_backend_changed(S.Closing, S.InitWait) == []


@given(st.lists(st.sampled_from(["front", "back"]), min_size=0, max_size=20))
def test_after_the_backend_kernel_restarts_both_ends_connect_again_in_any_order(order):
    pair = Pair()
    pair.apply("back", backend_path(S.Initialising, S.InitWait))
    for _ in range(3):
        pair.step_front()
        pair.step_back()
    assert (pair.front, pair.back) == (S.Connected, S.Connected)
    # The backend kernel dies: the hypervisor drops its mappings and the
    # toolstack writes Closed; the frontend lets go before a new kernel
    # probes (Hypervisor.backend_gone waits for that).
    pair.connected_back, pair.released = False, False
    pair.back = S.Closed
    pair.step_front()
    assert pair.front == S.Closed and pair.released
    pair.connected_front = False
    # A new kernel: its netback starts from Initialising, as at probe.
    pair.back = S.Initialising
    pair.apply("back", backend_path(S.Initialising, S.InitWait))
    for side in order:
        pair.step_front() if side == "front" else pair.step_back()
    for _ in range(4):
        pair.step_front()
        pair.step_back()
    assert (pair.front, pair.back) == (S.Connected, S.Connected)
    assert pair.connected_front and pair.connected_back
