"""The pure part of xenlab.events: topic names, payloads against their
documented schema, the change trackers, broker addresses and [mqtt]."""
import json

import pytest

from xenlab.bridge.fdb import FdbEvent
from xenlab.events import topics as t
from xenlab.events.config import BrokerAddress
from xenlab.events.sources import DomainTracker, VifTracker, affected_domains
from xenlab.lab.spec import parse_lab
from xenlab.xen.errors import ConfigError

TOPICS = t.Topics("lab1")
NOW = 1700000000.25

VIF = dict(domid=3, devid=0, backend_id=0, mac="00:16:3e:00:00:01", bridge="xenbr0",
           ip="10.0.0.1/24", vifname="vif3.0", state=4, backend_state=2, hotplug_status="",
           backend_path="/local/domain/0/backend/vif/3/0")
DOMAIN = dict(domid=3, name="web", uuid="u-1", state="-b----", memory_kb=32768, maxmem_kb=65536,
              target_kb=32768, vcpus=1, cpu_time=0.5, privileged=False, shutdown_reason="",
              pid=1234, launcher="local")


def every_payload() -> list[t.Message]:
    fdb = FdbEvent("move", "xenbr0", bytes.fromhex("00163e000001"), "vif2.0", "vif1.0").to_dict()
    return [
        t.domain_state(TOPICS, DOMAIN, "running", NOW),
        t.vif_state(TOPICS, VIF, True, NOW),
        t.vif_hotplug(TOPICS, {**VIF, "hotplug_status": "error"}, "no bridge", NOW),
        t.vif_stats(TOPICS, 3, 0, "vif3.0", 0, "connected",
                    {"tx_packets": 1, "tx_bytes": 60, "rx_packets": 2, "rx_bytes": 120,
                     "drop_not_connected": 4}, NOW),
        t.fdb_event(TOPICS, fdb, NOW),
        t.bridge_stats(TOPICS, "xenbr0", {"rx": 1}, {"no_egress": 1}, {"learned": 1, "entries": 1}, 2, NOW),
        t.port_stats(TOPICS, "xenbr0", "vif3.0", 1, "forwarding", {"rx_packets": 1}, {}, {"tx_packets": 1}, NOW),
        t.port_state(TOPICS, "xenbr0", {"name": "vif3.0", "port_no": 1, "state": "blocking",
                                        "role": "alternate", "learning": True}, True,
                     "1: vif3.0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 master xenbr0 state blocking "
                     "priority 32 cost 2 ", NOW),
        t.service_status(TOPICS, "bridge", True, 42, {"published": 3, "dropped": 1}, NOW),
        t.vif_link(TOPICS, {**VIF, "frontend_link": "down"}, NOW),
    ]


def test_topics_sit_under_prefix_and_host():
    assert TOPICS.domain_state(3) == "xenlab/lab1/domain/3/state"
    assert TOPICS.vif(3, 0, "state") == "xenlab/lab1/domain/3/vif/0/state"
    assert TOPICS.fdb("xenbr0", "learn") == "xenlab/lab1/bridge/xenbr0/fdb/learn"
    assert TOPICS.port_stats("xenbr0", "vif3.0") == "xenlab/lab1/bridge/xenbr0/port/vif3.0/stats"
    assert TOPICS.service_status("dom0") == "xenlab/lab1/service/dom0/status"
    assert t.Topics("h", "site/xen").all() == "site/xen/h/#"


@pytest.mark.parametrize("host", ["", "a/b", "a+", "#", "x\0"])
def test_a_host_that_is_not_one_topic_level_is_refused(host):
    with pytest.raises(ConfigError):
        t.Topics(host)


def test_a_prefix_with_a_wildcard_is_refused():
    with pytest.raises(ConfigError):
        t.Topics("h", "xenlab/+")


def test_a_name_that_cannot_be_a_level_is_replaced_not_refused():
    assert TOPICS.port_stats("br0", "a/b+") == "xenlab/lab1/bridge/br0/port/a_b_/stats"


@pytest.mark.parametrize("message", every_payload(), ids=lambda m: m.topic.split("/", 2)[2])
def test_every_payload_has_the_envelope_and_exactly_its_documented_fields(message):
    data = t.decode(message.payload)
    doc = t.DOCS[data["type"]]
    assert data["schema"] == t.SCHEMA == 1
    assert data["time"] == NOW and data["host"] == "lab1"
    assert set(data) == set(t.ENVELOPE) | set(doc.fields)
    assert message.retain is doc.retained
    pattern = "xenlab/lab1/" + doc.pattern
    assert len(message.topic.split("/")) == len(pattern.split("/"))
    assert all(p.startswith("<") or p == m for p, m in zip(pattern.split("/"), message.topic.split("/")))


def test_every_documented_type_has_a_builder_exercised():
    assert {t.decode(m.payload)["type"] for m in every_payload()} == set(t.DOCS)


def test_states_are_retained_events_and_counters_are_not():
    retained = {doc.type for doc in t.TOPICS if doc.retained}
    assert retained == {"domain.state", "vif.state", "vif.link", "service.status", "port.state"}


def test_vif_state_names_the_xenbus_states():
    data = t.decode(t.vif_state(TOPICS, VIF, True, NOW).payload)
    assert (data["frontend_state_name"], data["backend_state_name"]) == ("Connected", "InitWait")


def test_fdb_event_topic_carries_the_kind_and_payload_the_move():
    fdb = FdbEvent("move", "xenbr0", bytes.fromhex("00163e000001"), "vif2.0", "vif1.0").to_dict()
    message = t.fdb_event(TOPICS, fdb, NOW)
    assert message.topic.endswith("/bridge/xenbr0/fdb/move")
    data = json.loads(message.payload)
    assert (data["mac"], data["port"], data["old_port"]) == ("00:16:3e:00:00:01", "vif2.0", "vif1.0")


def test_vif_stats_split_drops_from_counters():
    data = t.decode(every_payload()[3].payload)
    assert data["counters"] == {"tx_packets": 1, "tx_bytes": 60, "rx_packets": 2, "rx_bytes": 120}
    assert data["drops"] == {"not_connected": 4}


def test_an_unknown_domain_state_is_a_bug():
    with pytest.raises(ValueError):
        t.domain_state(TOPICS, DOMAIN, "sleeping", NOW)


def test_decode_refuses_what_is_not_ours():
    with pytest.raises(ValueError):
        t.decode(b'{"schema": 2}')


# -- broker addresses -------------------------------------------------------------------
@pytest.mark.parametrize("text, host, port", [
    ("mqtt://127.0.0.1:1884", "127.0.0.1", 1884),
    ("mqtt://broker", "broker", 1883),
    ("mqtt://[::1]:2000", "::1", 2000),
])
def test_broker_addresses(text, host, port):
    address = BrokerAddress.parse(text)
    assert (address.host, address.port) == (host, port)
    assert BrokerAddress.parse(str(address)) == address


@pytest.mark.parametrize("text", ["127.0.0.1:1883", "http://h:1", "mqtt://", "mqtt://h:x",
                                  "mqtt://h:1/path", "mqtt://u@h:1"])
def test_malformed_broker_addresses_are_refused(text):
    with pytest.raises(ConfigError):
        BrokerAddress.parse(text)


# -- what changed ---------------------------------------------------------------------
def dom(domid, state, uuid=None, name="d"):
    return {**DOMAIN, "domid": domid, "name": name, "uuid": uuid or f"u-{domid}", "run_state": state}


def states(changes):
    return [(info["domid"], state) for info, state in changes]


def test_domain_tracker_follows_a_lifecycle():
    tracker = DomainTracker()
    assert states(tracker.update([dom(0, "running")])) == [(0, "created"), (0, "running")]
    assert states(tracker.update([dom(0, "running"), dom(1, "paused")])) == [(1, "created"), (1, "paused")]
    assert states(tracker.update([dom(0, "running"), dom(1, "paused")])) == []
    assert states(tracker.update([dom(0, "running"), dom(1, "running")])) == [(1, "running")]
    assert states(tracker.update([dom(0, "running"), dom(1, "dying")])) == [(1, "dying")]
    assert states(tracker.update([dom(0, "running")])) == [(1, "destroyed")]


def test_domain_tracker_sees_a_reused_id_as_a_new_domain():
    tracker = DomainTracker()
    tracker.update([dom(4, "running", "old")])
    changes = tracker.update([dom(4, "running", "new", name="again")])
    assert [(i["uuid"], s) for i, s in changes] == [("old", "destroyed"), ("new", "created"),
                                                    ("new", "running")]


def test_a_domain_first_seen_dying_is_never_announced():
    tracker = DomainTracker()
    assert tracker.update([dom(5, "dying")]) == []
    assert tracker.update([]) == []


def test_vif_tracker_reports_changes_hotplug_and_removal():
    tracker = VifTracker()
    kinds = lambda changes: [(k, v["state"], v["backend_state"], v["hotplug_status"]) for k, v in changes]
    assert kinds(tracker.update(3, [{**VIF, "state": 1, "backend_state": 1}])) == [("state", 1, 1, "")]
    assert tracker.update(3, [{**VIF, "state": 1, "backend_state": 1}]) == []
    assert kinds(tracker.update(3, [{**VIF, "state": 4, "backend_state": 4, "hotplug_status": "connected"}])) \
        == [("state", 4, 4, "connected"), ("hotplug", 4, 4, "connected")]
    # Another change that keeps hotplug-status is no new hotplug event.
    assert kinds(tracker.update(3, [{**VIF, "state": 5, "backend_state": 4, "hotplug_status": "connected"}])) \
        == [("state", 5, 4, "connected")]
    assert tracker.domids() == {3}
    assert kinds(tracker.update(3, [])) == [("removed", 0, 0, "")]
    assert tracker.domids() == set()


def test_vif_tracker_reports_each_link_change_once_and_no_state_for_it():
    tracker = VifTracker()
    up = {**VIF, "state": 4, "backend_state": 4, "frontend_link": "up", "backend_link": "up"}
    # A vif whose links are up from the start has no link message: nothing changed.
    assert [k for k, _ in tracker.update(3, [up])] == ["state"]
    down = {**up, "backend_link": "down"}
    assert [(k, v["backend_link"]) for k, v in tracker.update(3, [down])] == [("link", "down")]
    assert tracker.update(3, [down]) == []
    assert [(k, v["frontend_link"]) for k, v in tracker.update(3, [{**down, "frontend_link": "down"}])] \
        == [("link", "down")]
    assert [k for k, _ in tracker.update(3, [up])] == ["link"]
    assert tracker.forget_links(3) == {VIF["devid"]} and tracker.forget_links(3) == set()
    # First seen with a side down (a publisher that started late): said at once.
    fresh = VifTracker()
    assert [k for k, _ in fresh.update(3, [down])] == ["state", "link"]


def test_vif_link_message_says_which_side_is_down():
    message = t.vif_link(TOPICS, {**VIF, "frontend_link": "down", "backend_link": "up"}, NOW)
    payload = t.decode(message.payload)
    assert message.topic == TOPICS.vif(VIF["domid"], VIF["devid"], "link") and message.retain
    assert (payload["link"], payload["frontend"], payload["backend"]) == ("down", "down", "up")
    payload = t.decode(t.vif_link(TOPICS, VIF, NOW).payload)
    assert (payload["link"], payload["frontend"], payload["backend"]) == ("up", "up", "up")


@pytest.mark.parametrize("path, domids", [
    ("/local/domain", None),
    ("/local/domain/5", None),
    ("/local/domain/5/device/vif/0/state", {5}),
    ("/local/domain/5/device", {5}),
    ("/local/domain/0/backend/vif/7/0/hotplug-status", {7}),
    ("/local/domain/0/backend/vif", None),
    ("/local/domain/0/backend/vbd/7/51712/state", set()),
    ("/local/domain/5/memory/target", set()),
    ("/local/domain/5/device/vbd/51712/state", set()),
])
def test_which_domains_a_xenstore_change_concerns(path, domids):
    assert affected_domains(path) == domids


# -- the lab file -------------------------------------------------------------------------
def test_a_lab_publishes_to_an_embedded_broker_by_default():
    spec = parse_lab('[lab]\nname = "l"\n')
    assert spec.mqtt.broker == "embedded" and spec.mqtt.enabled and spec.mqtt.host is None


def test_the_mqtt_table():
    spec = parse_lab('[mqtt]\nbroker = "mqtt://10.1.2.3:1999"\nprefix = "site/x"\nhost = "h1"\n'
                     'interval = 2\nengine = "amqtt"\n')
    assert (spec.mqtt.broker, spec.mqtt.prefix, spec.mqtt.host, spec.mqtt.interval, spec.mqtt.engine) \
        == ("mqtt://10.1.2.3:1999", "site/x", "h1", 2, "amqtt")
    assert not parse_lab('[mqtt]\nbroker = "none"\n').mqtt.enabled


@pytest.mark.parametrize("table, message", [
    ('broker = "tcp://x"', "mqtt://HOST:PORT"),
    ('engine = "rabbit"', "engine"),
    ('interval = 0', "interval"),
    ('host = "a/b"', "topic level"),
    ('color = "red"', "unknown key"),
])
def test_a_bad_mqtt_table_names_the_problem(table, message):
    with pytest.raises(ConfigError, match=message):
        parse_lab(f"[mqtt]\n{table}\n", "lab.toml")


def test_docs_events_md_describes_every_topic_and_field():
    from pathlib import Path
    doc = (Path(__file__).parents[3] / "docs" / "EVENTS.md").read_text()
    for topic in t.TOPICS:
        assert f"`{topic.pattern}`" in doc and topic.summary in doc, topic.pattern
        for field, meaning in topic.fields.items():
            assert f"| `{field}` | {meaning} |" in doc, (topic.type, field)
