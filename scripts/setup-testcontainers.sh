#!/usr/bin/env bash
# Installs testcontainers-python, pinned, from PyPI into a virtual
# environment of its own for the guard test that runs Testcontainers through
# `nestdock guard` (tests/guard.rs), and prints the environment's python on
# standard output.
#
# Ryuk (Testcontainers' reaper, a Go program) is not built: the Go module
# proxy does not serve github.com/testcontainers/moby-ryuk at the release
# testcontainers-python starts (testcontainers/ryuk:0.8.1), and nothing can be
# pulled, so the test runs with TESTCONTAINERS_RYUK_DISABLED=true (README.md,
# "Testcontainers").
#
# Idempotent and safe to run concurrently: a stamp makes a second run a no-op
# that only prints the path; concurrent runs wait on a lock.
#
# Environment: PYTHON (default python3), NESTDOCK_TC_DIR (default
# <repo>/target/testcontainers).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${NESTDOCK_TC_DIR:-$root/target/testcontainers}
python=${PYTHON:-python3}
# The pinned release; bump it here only.
want='testcontainers==4.15.0'

venv=$dir/venv
stamp=$dir/.nestdock-testcontainers
installed() {
	[[ -x $venv/bin/python && -f $stamp && "$(cat "$stamp")" == "$want" ]]
}

if installed; then
	echo "$venv/bin/python"
	exit 0
fi
mkdir -p "$dir"
exec 9>"$dir.lock"
flock 9
if installed; then
	echo "$venv/bin/python"
	exit 0
fi

echo "setup-testcontainers: installing $want into $venv (once)" >&2
rm -rf "$venv" "$stamp"
if ! "$python" -m venv "$venv" >&2; then
	echo "setup-testcontainers: $python -m venv failed (is Python 3 with venv installed?)" >&2
	exit 1
fi
if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$want" >&2; then
	rm -rf "$venv"
	echo "setup-testcontainers: pip install $want failed (is PyPI reachable?)" >&2
	exit 1
fi
"$venv/bin/python" -c 'import testcontainers.core.container' >&2
printf '%s' "$want" >"$stamp"
echo "$venv/bin/python"
