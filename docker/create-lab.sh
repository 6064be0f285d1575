#!/bin/sh
# The compose `lab` service: create every domain of DIR/*.cfg (default
# /etc/xenlab/lab) that is not running yet, then wait until every vif of the
# lab is Connected on both ends and hotplugged into its bridge.
set -eu
dir=${1:-/etc/xenlab/lab}
for cfg in "$dir"/*.cfg; do
    name=$(sed -n 's/^name *= *["'\'']\(.*\)["'\''].*/\1/p' "$cfg")
    if [ -n "$name" ] && xenlab xl list "$name" >/dev/null 2>&1; then
        echo "$name is already running"
        continue
    fi
    xenlab xl create "$cfg"
done
exec xenlab healthcheck --wait "${XENLAB_LAB_TIMEOUT:-120}" vifs
