"""The toolstack: libxl's role, in the hypervisor's process.

* ``toolstack``: the Toolstack, which drives the hypervisor through a
  domain's life: create, destroy, shutdown and the on_* policies, mem-set,
  mem-max, vcpu-set, and its record of each domain's guest agent;
* ``build``: the xenstore tree of a new domain and its store ring;
* ``devices``: vifs written, listed, attached and detached, backends removed
  or closed (libxl_nic.c, libxl_device.c);
* ``vif``: the pure planning of a vif's nodes (libxl__device_nic_add);
* ``xlcfg``: the xl.cfg parser (pure; clients use it too).

It runs in the hypervisor's process and calls its cores as Domain-0's
libxl calls libxc. None of its modules imports grpc or a generated module:
the Domains and Memory servicers (hypervisor/*_server.py) are its gRPC
adapters, and xenlab.client turns an XlConfig into the Create rpc's
DomainSpec.
"""
