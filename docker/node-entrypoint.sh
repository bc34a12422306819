#!/bin/sh
# Run this container's broker of the testbed instance (node0 .. node<SIZE-1>)
# the way flux-core's flux.service runs a system instance's broker: rank 0
# keeps its state in /var/lib/flux (a volume) and dumps/restores the KVS
# across restarts, the instance runs without waiting for every node
# (broker.quorum=1), and a broker that exits is started again, except
# rank 0's after `flux shutdown` or a failed start (exit code 42,
# broker.exit-norestart).  A follower is always started again: it fails
# to start when it cannot reach rank 0 (rank 0 restarting, its network
# cut), and that passes.
#
# The restart loop is here rather than in Docker's restart policy because
# a follower exits whenever rank 0 restarts or its network is cut, and
# Docker's growing back-off would keep it down long after the fault ended.
set -eu

size=${SIZE:-}
cert=/etc/flux/curve/curve.cert
conf=/etc/flux/conduit
NORESTART=42

log() {
    echo "conduit-node: $*" >&2
}

name=$(hostname)
case "$name" in
    node[0-9]*) ;;
    *) log "hostname $name is not nodeK; set hostname: in compose"
       exit 1 ;;
esac

case "$size" in
    '' | *[!0-9]* | 0*)
        log "SIZE='$size' is not the instance size; start the nodes with make up" \
            "(conduit.testbed writes SIZE into the compose file)"
        exit 1 ;;
esac

# The certificate is made once per cluster, by node0, into the shared
# volume; mv makes it appear whole to the other nodes.
if [ "$name" = node0 ] && [ ! -s "$cert" ]; then
    umask 077
    rm -f "$cert.new"
    flux keygen "$cert.new" >/dev/null
    chmod 0600 "$cert.new"
    mv "$cert.new" "$cert"
fi
waited=0
while [ ! -s "$cert" ]; do
    if [ "$waited" -ge 120 ]; then
        log "no $cert after ${waited}s; is node0 running?"
        exit 1
    fi
    sleep 1
    waited=$((waited + 1))
done

sed -e "s/@SIZE@/$size/g" \
    -e "s/@LAST@/$((size - 1))/g" \
    -e "s/@CORE_LAST@/$(($(nproc) - 1))/g" \
    /usr/local/share/flux-conduit/system.toml.in > "$conf/system.toml"

# Rank 0 keeps the dumps of its last three shutdowns.
if [ "$name" = node0 ] && [ -d /var/lib/flux/dump ]; then
    ls -t /var/lib/flux/dump/*.tgz 2>/dev/null | tail -n +4 | while read -r old; do
        rm -f "$old"
    done
fi

# Only rank 0 exits with the no-restart code.
norestart=
if [ "$name" = node0 ]; then
    norestart=-Sbroker.exit-norestart=$NORESTART
fi

stopping=0
pid=
on_stop() {
    stopping=1
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
    fi
}
trap on_stop TERM INT

# While the container is cut off its network (`docker network disconnect`),
# a broker would not reach node0; wait until the name resolves again.
network_up() {
    getent hosts node0 >/dev/null 2>&1
}

delay=1
while [ "$stopping" = 0 ]; do
    if ! network_up; then
        log "waiting for the network (node0 does not resolve)"
        while [ "$stopping" = 0 ] && ! network_up; do
            sleep 1
        done
    fi
    # A stop that came while this loop was not waiting on a broker (the wait
    # for the network, the back-off) is taken here, before a broker starts.
    [ "$stopping" = 0 ] || break
    started=$(date +%s)
    flux broker \
        --config-path="$conf" \
        -Srundir=/run/flux \
        -Sstatedir=/var/lib/flux \
        -Slocal-uri="$FLUX_URI" \
        -Sbroker.rc2_none=1 \
        -Sbroker.quorum=1 \
        -Sbroker.quorum-warn=none \
        -Sbroker.cleanup-timeout=45 \
        $norestart \
        -Scontent.dump=auto \
        -Scontent.restore=auto \
        -Slog-stderr-level=6 \
        -Slog-stderr-mode=local &
    pid=$!
    if [ "$stopping" = 1 ]; then
        kill -TERM "$pid" 2>/dev/null || true  # the stop came before $pid was set
    fi
    # wait returns early when a trapped signal arrives; wait again until
    # the broker itself has exited.
    while :; do
        rc=0
        wait "$pid" || rc=$?
        kill -0 "$pid" 2>/dev/null || break
    done
    pid=
    if [ "$stopping" = 1 ]; then
        # A stop asked for (docker stop): exit 0 whatever the shutdown
        # said, so that the watchdog does not take it for a crash.
        [ "$rc" = 0 ] || log "broker exited $rc while stopping"
        exit 0
    fi
    if [ -n "$norestart" ] && [ "$rc" = "$NORESTART" ]; then
        log "broker exited $rc (flux shutdown, or a failed start): not restarting it;" \
            "make up starts it again"
        exit 0
    fi
    # Restart at once after a run of 10 s or more; back off (up to 5 s)
    # from a broker that keeps failing at start.
    if [ $(($(date +%s) - started)) -ge 10 ]; then
        delay=1
    fi
    log "broker exited $rc; starting it again in ${delay}s"
    sleep "$delay"
    delay=$((delay * 2 > 5 ? 5 : delay * 2))
done
