"""Moved: the launchers are xenlab.launchers, StartInfo is
xenlab.xen.start_info.

Transitional: domain/ and testing_hostile.py still import StartInfo from
here; they are being reworked on another branch of the same change (issue
14), and this module goes once they import xenlab.xen.start_info.
"""
from xenlab.xen.start_info import StartInfo  # noqa: F401
