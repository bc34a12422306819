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
#
# It also makes the node part of a small site: munge runs with the
# cluster's key (made by node0 at first start, like the certificate), the
# guests have their places in the shared directory /data, and the broker
# config is the generated one followed by the site's own files
# (/etc/flux/site/*.toml, SITE_CONFIG on the host).
#
# `conduit-node --check` (run by `make up` in a container of its own, with
# no network) only starts a rank 0 with that config and stops it again:
# its exit status and stderr are the broker's verdict on the site config.
set -eu

size=${SIZE:-}
cert=/etc/flux/curve/curve.cert
conf=/etc/flux/conduit
site=/etc/flux/site
munge_key=/etc/munge/munge.key
NORESTART=42
check=0
if [ "${1:-}" = --check ]; then
    check=1
fi

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

# Wait (at most 120 s) for a file that node0 makes: wait_made FILE [sudo -n].
wait_made() {
    file=$1
    shift
    waited=0
    while ! "$@" test -s "$file"; do
        if [ "$waited" -ge 120 ]; then
            log "no $file after ${waited}s; is node0 running?"
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

# The certificate is made once per cluster, by node0, into the shared
# volume; mv makes it appear whole to the other nodes.
if [ "$name" = node0 ] && [ ! -s "$cert" ]; then
    umask 077
    rm -f "$cert.new"
    flux keygen "$cert.new" >/dev/null
    chmod 0600 "$cert.new"
    mv "$cert.new" "$cert"
fi
wait_made "$cert"

# The config: the generated file first, then the site's files in name
# order (a later file's keys win; an array such as [[resource.config]] is
# replaced whole).  Site files may use the template's @SIZE@, @LAST@ and
# @CORE_LAST@ too.
template() {
    sed -e "s/@SIZE@/$size/g" \
        -e "s/@LAST@/$((size - 1))/g" \
        -e "s/@CORE_LAST@/$(($(nproc) - 1))/g" \
        "$1"
}
rm -f "$conf"/*.toml
template /usr/local/share/flux-conduit/system.toml.in > "$conf/00-testbed.toml"
for file in "$site"/*.toml; do
    [ -e "$file" ] || continue
    if ! [ -r "$file" ]; then
        log "site config $(basename "$file") is not readable by $(id -un) (uid $(id -u));" \
            "chmod a+r it on the host"
        exit 1
    fi
    template "$file" > "$conf/$(basename "$file")"
done

if [ "$check" = 1 ]; then
    run=$(mktemp -d)
    exec flux broker --config-path="$conf" -Srundir="$run" -Sbroker.quorum=1 \
        -Sbroker.quorum-warn=none -Slog-stderr-level=3 true
fi

# munge: the cluster's key, made once by node0 into the munge volume
# (mv makes it appear whole); munged on every node, as the base image's
# own entrypoint starts it.  The IMP checks each guest job's signature
# with it, on the node where the job runs.
if [ "$name" = node0 ] && ! sudo -n test -s "$munge_key"; then
    sudo -n sh -c "umask 077 && rm -f $munge_key.new \
        && dd if=/dev/urandom of=$munge_key.new bs=1024 count=1 2>/dev/null \
        && chown munge:munge $munge_key.new && mv $munge_key.new $munge_key"
fi
wait_made "$munge_key" sudo -n
sudo -n runuser -u munge -- /usr/sbin/munged || log "munged did not start; guests' jobs will fail"

# The shared directory: each guest's own place in it, made by node0.
if [ "$name" = node0 ] && [ -d /data ]; then
    for guest in alice bob; do
        [ -d "/data/$guest" ] || sudo -n install -d -o "$guest" -g "$guest" -m 0755 "/data/$guest" \
            || log "cannot make /data/$guest"
    done
fi

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
