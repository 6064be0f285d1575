"""The gRPC Events stream: the hub as a broker behaves towards its
subscribers (filters, retained states first, cleared topics, a slow
subscriber cut off), the servicer over a real gRPC server, and a source
publishing through the Fanout so that MQTT and gRPC carry the same bytes."""
import asyncio
import errno

import grpc
import pytest

from xenlab.events import server as events_server
from xenlab.events import topics as t
from xenlab.events.config import BrokerAddress, EventsConfig
from xenlab.events.sources import ServiceEvents
from xenlab.events.stream import EventHub, Fanout
from xenlab.proto import events_pb2, events_pb2_grpc
from xenlab.rpc import start_server
from xenlab.xen.errors import XenError

TOPICS = t.Topics("hub")
INFO = {"domid": 1, "name": "web", "uuid": "u1"}


def state(domid=1, what="running"):
    return t.domain_state(TOPICS, {**INFO, "domid": domid}, what, 1.0)


def fdb(kind="learn"):
    return t.fdb_event(TOPICS, {"bridge": "xenbr0", "kind": kind, "mac": "00:16:3e:00:00:01",
                                "port": "vif1.0"}, 2.0)


def drain(sub):
    out = []
    while not sub.queue.empty():
        item = sub.queue.get_nowait()
        if item is not None:
            out.append(item)
    return out


def test_a_late_subscriber_gets_the_current_states_first_flagged_retained_then_live_ones_unflagged():
    hub = EventHub(TOPICS)
    hub.publish(state(1, "created"))
    hub.publish(state(1, "running"))        # supersedes created: one state per topic
    hub.publish(fdb())                      # an event: not kept for later subscribers
    sub = hub.subscribe()
    hub.publish(fdb("move"))
    got = drain(sub)
    assert [(m.topic, r) for m, r in got] == [(TOPICS.domain_state(1), True),
                                              (TOPICS.fdb("xenbr0", "move"), False)]
    assert t.decode(got[0][0].payload)["state"] == "running"


def test_a_cleared_topic_is_forgotten_and_passed_on_to_those_listening():
    hub = EventHub(TOPICS)
    hub.publish(state(1))
    listening = hub.subscribe()
    drain(listening)
    hub.publish(t.cleared(TOPICS.domain_state(1)))
    assert [(m.payload, r) for m, r in drain(listening)] == [(b"", False)]
    assert drain(hub.subscribe()) == []


def test_filters_are_mqtts():
    hub = EventHub(TOPICS)
    hub.publish(state(1))
    hub.publish(state(2))
    sub = hub.subscribe(["xenlab/hub/domain/2/#", "xenlab/+/bridge/+/fdb/learn"])
    hub.publish(fdb("learn"))
    hub.publish(fdb("age"))
    assert [m.topic for m, _ in drain(sub)] == [TOPICS.domain_state(2), TOPICS.fdb("xenbr0", "learn")]


def test_without_retained_only_what_happens_from_now_on():
    hub = EventHub(TOPICS)
    hub.publish(state(1))
    sub = hub.subscribe(retained=False)
    assert drain(sub) == []


@pytest.mark.parametrize("bad", ["a/#/b", "a/b#", "a+/b"])
def test_a_malformed_filter_is_einval_naming_it(bad):
    with pytest.raises(XenError) as err:
        EventHub(TOPICS).subscribe([bad])
    assert err.value.errno == errno.EINVAL and repr(bad) in err.value.message


async def test_a_subscriber_that_falls_behind_is_cut_off_not_left_missing_events():
    hub = EventHub(TOPICS, backlog=3)
    slow, other = hub.subscribe(), hub.subscribe(retained=False)
    for _ in range(5):
        hub.publish(fdb())
    for _ in range(3):
        assert await slow.get() is not None
    with pytest.raises(XenError) as err:
        await slow.get()
    assert err.value.errno == errno.ENOSPC
    # The hub goes on for everyone else, and publishing never failed.
    assert other.overflowed and hub.published == 5
    assert hub.subscribers == 0


def test_a_fanout_hands_every_sink_the_same_message():
    got = [[], []]
    sinks = [type("S", (), {"publish": lambda self, m, i=i: got[i].append(m)})() for i in range(2)]
    message = state()
    Fanout(TOPICS, sinks).publish(message)
    assert got[0][0] is got[1][0] is message


async def test_service_events_without_a_broker_still_stream():
    async with ServiceEvents(EventsConfig(None, TOPICS), "hypervisor") as ev:
        assert ev.mqtt is None
        sub = ev.hub.subscribe()
        ev.publisher.publish(state())
        assert (await sub.get())[0].topic == TOPICS.domain_state(1)
    assert await sub.get() is None              # leaving ends the streams


def test_events_config_args_round_trip_without_a_broker():
    import argparse
    from xenlab.events import config as c
    parser = argparse.ArgumentParser()
    c.add_arguments(parser)
    for broker in (None, BrokerAddress("127.0.0.1", 1999)):
        config = EventsConfig(broker, TOPICS, 2.0)
        assert c.config_from_args(parser.parse_args(config.args())) == config
    assert c.config_from_args(parser.parse_args([])) is None


async def test_the_events_service_streams_over_grpc_and_refuses_whom_authorize_refuses(tmp_path):
    hub = EventHub(TOPICS)
    hub.publish(state(1))

    def authorize(context):
        if dict(context.invocation_metadata()).get("who") != "dom0":
            raise XenError(errno.EACCES, "the event stream needs a privileged domain")

    server, _ = await start_server(f"unix:{tmp_path}/ev.sock",
                                   [events_server.register(hub, authorize)],
                                   [events_server.SERVICE_NAME])
    try:
        async with grpc.aio.insecure_channel(f"unix:{tmp_path}/ev.sock") as channel:
            stub = events_pb2_grpc.EventsStub(channel)
            refused = stub.Subscribe(events_pb2.SubscribeRequest())
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await refused.read()
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

            bad = stub.Subscribe(events_pb2.SubscribeRequest(topics=["a/#/b"]),
                                 metadata=(("who", "dom0"),))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await bad.read()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            call = stub.Subscribe(events_pb2.SubscribeRequest(topics=["xenlab/hub/#"]),
                                  metadata=(("who", "dom0"),))
            first = await call.read()
            assert (first.topic, first.payload, first.retained) == \
                (TOPICS.domain_state(1), state(1).payload, True)
            await call.initial_metadata()
            message = fdb()
            hub.publish(message)
            live = await asyncio.wait_for(call.read(), 10)
            assert (live.topic, live.payload, live.retained) == (message.topic, message.payload, False)
            call.cancel()
    finally:
        await server.stop(0)


def test_xenlab_events_refuses_a_broker_and_grpc_together_and_names_a_missing_lab(tmp_path, capsys):
    from xenlab.cli.main import main
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    assert main(["events", "--grpc", "--broker", "mqtt://127.0.0.1:1", "--rundir", str(run)]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert main(["events", "--grpc", "--rundir", str(run), "--timeout", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no lab" in err
