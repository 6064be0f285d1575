"""Moved: vif planning is xenlab.toolstack.vif, the xenstore paths are
xenlab.xen.xenstore_paths.

Transitional: domain/agent.py still imports agent_record_path from here; it
is being reworked on another branch of the same change (issue 14), and this
module goes once it imports xenlab.xen.xenstore_paths.
"""
from xenlab.xen.xenstore_paths import agent_record_path  # noqa: F401
