#!/bin/sh
# Start this container's broker of the testbed instance (node0 .. node<N-1>).
set -eu

nodes=${NODES:-3}
cert=/etc/flux/curve/curve.cert
conf=/etc/flux/conduit

case "$(hostname)" in
    node[0-9]*) ;;
    *) echo "conduit-node: hostname $(hostname) is not nodeK; set hostname: in compose" >&2
       exit 1 ;;
esac

# The certificate is made once per cluster, by node0, into the shared
# volume; mv makes it appear whole to the other nodes.
if [ "$(hostname)" = node0 ] && [ ! -s "$cert" ]; then
    umask 077
    rm -f "$cert.new"
    flux keygen "$cert.new" >/dev/null
    chmod 0600 "$cert.new"
    mv "$cert.new" "$cert"
fi
waited=0
while [ ! -s "$cert" ]; do
    if [ "$waited" -ge 120 ]; then
        echo "conduit-node: no $cert after ${waited}s; is node0 running?" >&2
        exit 1
    fi
    sleep 1
    waited=$((waited + 1))
done

sed -e "s/@NODES@/$nodes/g" \
    -e "s/@LAST@/$((nodes - 1))/g" \
    -e "s/@CORE_LAST@/$(($(nproc) - 1))/g" \
    /usr/local/share/flux-conduit/system.toml.in > "$conf/system.toml"

exec flux broker \
    --config-path="$conf" \
    -Srundir=/run/flux \
    -Slocal-uri="$FLUX_URI" \
    -Sbroker.rc2_none=1 \
    -Slog-stderr-level=6 \
    -Slog-stderr-mode=local
