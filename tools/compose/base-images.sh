#!/usr/bin/env bash
# Builds the base images the compose stack needs, locally, when no image registry is
# reachable: a Debian bookworm root filesystem from debootstrap (the mirror apt already
# uses), imported into the engine, and on it two stand-ins:
#   homeserver-ci/python:3.11   Debian's Python 3.11 with venv (for python:3.11-slim)
#   homeserver-ci/postgres:15   Debian's PostgreSQL 15 with an entrypoint that honours
#                               POSTGRES_USER / POSTGRES_PASSWORD (for postgres:16)
# An image that already exists is kept. The machine's extra CA certificates
# (/usr/local/share/ca-certificates) are installed into the root filesystem, so that apt and
# pip inside builds trust the same TLS as the host.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
suite=bookworm
mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
    # The mirror apt uses: the first deb.debian.org-style URI of the host's sources.
    mirror=$({ grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null || true; } \
             | { grep -v security || true; } | head -n 1 | tr -d ' ')
    mirror="${mirror:-http://deb.debian.org/debian}"
fi

have() { docker image inspect "$1" >/dev/null 2>&1; }

if ! have homeserver-ci/bookworm:base; then
    command -v debootstrap >/dev/null || { echo "base-images: debootstrap is not installed"; exit 1; }
    root=$(mktemp -d /tmp/homeserver-rootfs.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    echo "base-images: debootstrap $suite from $mirror"
    debootstrap --variant=minbase --include=ca-certificates "$suite" "$root/fs" "$mirror" >"$root/debootstrap.log" 2>&1 \
        || { tail -n 30 "$root/debootstrap.log"; exit 1; }
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$root/fs/usr/local/share/ca-certificates/"
    fi
    chroot "$root/fs" update-ca-certificates >/dev/null
    rm -rf "$root/fs/var/cache/apt/archives/"*.deb "$root/fs/var/lib/apt/lists/"*
    tar -C "$root/fs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        - homeserver-ci/bookworm:base >/dev/null
    rm -rf "$root"
    trap - EXIT
    echo "base-images: imported homeserver-ci/bookworm:base"
fi

if ! have homeserver-ci/python:3.11; then
    docker build --quiet --network host -t homeserver-ci/python:3.11 "$here/images/python" >/dev/null
    echo "base-images: built homeserver-ci/python:3.11"
fi
if ! have homeserver-ci/postgres:15; then
    docker build --quiet --network host -t homeserver-ci/postgres:15 "$here/images/postgres" >/dev/null
    echo "base-images: built homeserver-ci/postgres:15"
fi
