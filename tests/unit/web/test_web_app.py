"""The web view's pure pieces: xl's state flags as the events name them."""
import pytest

pytest.importorskip("aiohttp", reason="the web extra is not installed: pip install 'xenlab[web]'")

from xenlab.web.app import run_state  # noqa: E402


@pytest.mark.parametrize("flags, state", [("r-----", "running"), ("-b----", "running"),
                                          ("--p---", "paused"), ("---s--", "shutdown"),
                                          ("----c-", "crashed"), ("-----d", "dying"),
                                          ("---s-d", "dying")])
def test_xl_state_flags_are_the_events_states(flags, state):
    assert run_state(flags) == state
