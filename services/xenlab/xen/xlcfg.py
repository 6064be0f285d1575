"""Moved: the xl.cfg parser is xenlab.toolstack.xlcfg, the vif values it
shares with netback and the bridge are xenlab.xen.netconf.

Transitional: drivers/ still imports parse_mac and parse_rate from here;
it is being reworked on another branch of the same change (issue 14), and
this module goes once it imports xenlab.xen.netconf.
"""
from xenlab.xen.netconf import parse_mac, parse_rate  # noqa: F401
