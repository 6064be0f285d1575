"""The client side of the toolstack API."""
from __future__ import annotations

from xenlab.client import to_domain_spec
from xenlab.toolstack.xlcfg import parse_xl_config


def cfg(text: str):
    return parse_xl_config(text, "t.cfg")


def test_to_domain_spec():
    c = cfg("name='web'\nmemory=64\nmaxmem=128\nvcpus=2\nmaxvcpus=4\non_crash='preserve'\n"
            "uuid='aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee'\nlauncher='none'\nkernel='/k'\n"
            "vif=['mac=00:16:3e:00:00:01,ip=10.0.0.2,rate=1MB/s@20ms', 'bridge=br1,mtu=9000']\n")
    spec = to_domain_spec(c)
    assert (spec.name, spec.memory_mb, spec.maxmem_mb, spec.vcpus, spec.maxvcpus) == ("web", 64, 128, 2, 4)
    assert (spec.on_poweroff, spec.on_reboot, spec.on_crash) == ("destroy", "restart", "preserve")
    assert spec.uuid == "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee" and spec.launcher == "none"
    assert dict(spec.extra) == {"kernel": "/k"} and spec.config_text == c.text
    first, second = spec.vif
    assert (first.devid, first.mac, first.bridge, first.ip, first.rate, first.mtu) == \
        (0, "00:16:3e:00:00:01", "xenbr0", "10.0.0.2", "1MB/s@20ms", 1500)
    assert (second.devid, second.mac, second.bridge, second.mtu, second.backend) == (1, "", "br1", 9000, "")
