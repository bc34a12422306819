#!/bin/sh
# Healthy when this broker is part of the instance: rank 0 once it runs
# (state "run"), any other rank once a round trip to rank 0 succeeds.
rank=$(flux getattr rank 2>/dev/null) || exit 1
if [ "$rank" = 0 ]; then
    flux uptime 2>/dev/null | grep -q ' run ' || exit 1
    exit 0
fi
exec flux ping --count=1 0 >/dev/null
