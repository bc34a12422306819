#!/bin/sh
# Healthy when this broker is part of the instance; on node0 (rank 0),
# when every broker of the instance is online.
rank=$(flux getattr rank 2>/dev/null) || exit 1
if [ "$rank" = 0 ]; then
    exec flux overlay status --summary --wait=full --timeout=5s
fi
# A round trip through the overlay to rank 0 proves that this broker joined.
exec flux ping --count=1 0 >/dev/null
