"""The bridge service: MAC-learning bridges (xenbr0) joining vifs, as Xen's
bridge mode does with a Linux bridge.

* ``fdb``: the forwarding database (learning, moving, ageing, static entries,
  the size limit and its eviction rule), pure;
* ``core``: one bridge, its ports and the forwarding decision, pure;
* ``server``: the asyncio service (veth links, gRPC API, xenstore registration);
* ``output``: brctl / bridge(8) layouts.
"""
