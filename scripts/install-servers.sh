#!/usr/bin/env bash
# Install the servers the integration tests start on 127.0.0.1 (Redis, tinyproxy, PostgreSQL),
# from Debian's packages, when they are missing. Needs root (or sudo); nothing is
# started here and nothing runs as a service: each test starts its own server.
set -euo pipefail
missing=()
command -v redis-server > /dev/null || missing+=(redis-server)
command -v tinyproxy > /dev/null || [ -x /usr/bin/tinyproxy ] || missing+=(tinyproxy)
# PostgreSQL's server binaries (initdb, postgres) live in /usr/lib/postgresql/<version>/bin.
compgen -G '/usr/lib/postgresql/*/bin/initdb' > /dev/null || command -v initdb > /dev/null || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "installing ${missing[*]} from Debian's packages"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
# The packages start services on install where an init system runs; the tests want none.
$SUDO service redis-server stop > /dev/null 2>&1 || true
$SUDO service tinyproxy stop > /dev/null 2>&1 || true
$SUDO service postgresql stop > /dev/null 2>&1 || true
