#!/bin/sh
# The compose `lab` service (and the swarm stack's lab-a, lab-b): create
# every domain of the given configs that is not running yet, then wait until
# every vif of the lab is Connected on both ends and hotplugged into its
# bridge. Each argument is a config file or a directory of *.cfg (default
# /etc/xenlab/lab).
set -eu
[ $# -gt 0 ] || set -- /etc/xenlab/lab
for arg in "$@"; do
    if [ -d "$arg" ]; then set -- "$@" "$arg"/*.cfg; elif [ -f "$arg" ]; then set -- "$@" "$arg"; else
        echo "xenlab-create-lab: $arg: no such config file or directory" >&2
        exit 2
    fi
    shift
done
# Swarm starts a stack's services all at once (compose orders them with
# depends_on): wait for Domain-0's netback and every bridge the vifs name, so
# that no vif's hotplug runs before its bridge is there.
bridges=$(grep -ho "bridge=[A-Za-z0-9_.-]*" "$@" | cut -d= -f2 | sort -u)
targets="xenstore:/local/domain/0/data/netback=ready"
for bridge in ${bridges:-xenbr0}; do
    targets="$targets xenstore:/tool/xenlab/bridges/$bridge/address"
done
# shellcheck disable=SC2086  # one word per target
xenlab healthcheck -q --wait "${XENLAB_LAB_TIMEOUT:-120}" $targets
for cfg in "$@"; do
    name=$(sed -n 's/^name *= *["'\'']\(.*\)["'\''].*/\1/p' "$cfg")
    if [ -n "$name" ] && xenlab xl list "$name" >/dev/null 2>&1; then
        echo "$name is already running"
        continue
    fi
    xenlab xl create "$cfg"
done
exec xenlab healthcheck --wait "${XENLAB_LAB_TIMEOUT:-120}" vifs
