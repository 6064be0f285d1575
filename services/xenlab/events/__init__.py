"""MQTT events: domain lifecycle, vif state and hotplug, FDB changes and
counters, published off the data path (docs/EVENTS.md)."""
