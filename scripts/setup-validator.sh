#!/usr/bin/env bash
# Installs the independent Kubernetes schema validator used by the tests and by
# scripts/validate-k8s: the PyPI package kubernetes-validate, in a virtualenv
# under target/validator-venv.
#
# Why a separate tool: nestdock's own tests could share a misunderstanding of the
# Pod schema with the code under test. kubernetes-validate checks documents
# against the JSON schemas generated from the Kubernetes OpenAPI spec, and its
# strict mode rejects unknown fields, which is what the API server does with
# `kubectl apply --validate=strict` (the default since 1.27).
#
# Idempotent: when the venv already holds exactly the pinned set, it does
# nothing (no network). Every version is pinned, dependencies included, so a
# run months from now validates the same way.
#
# Environment: PYTHON (default python3), NESTDOCK_VALIDATOR_VENV (default
# <repo>/target/validator-venv).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${NESTDOCK_VALIDATOR_VENV:-$root/target/validator-venv}
python=${PYTHON:-python3}

# kubernetes-validate 1.37.0 ships strict schemas for Kubernetes 1.x up to 1.37;
# scripts/validate-k8s picks the Kubernetes version it validates against.
requirements='kubernetes-validate==1.37.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
referencing==0.37.0
rpds-py==2026.9.1
attrs==26.1.0
PyYAML==6.0.4
packaging==26.3
importlib_resources==7.1.0
typing_extensions==4.16.0'

stamp=$venv/.nestdock-requirements
installed() {
    [[ -x $venv/bin/python && -f $stamp && "$(cat "$stamp")" == "$requirements" ]]
}

if installed; then
    exit 0
fi

if ! command -v "$python" >/dev/null 2>&1; then
    echo "setup-validator: $python not found; install Python 3 (with the venv module)" >&2
    exit 1
fi

mkdir -p "$(dirname "$venv")"
# Test binaries (and people) may run this at the same time: one installs, the
# others wait and then see the stamp.
exec 9>"$venv.lock"
flock 9
if installed; then
    exit 0
fi

echo "setup-validator: installing kubernetes-validate into $venv" >&2
rm -rf "$venv"
"$python" -m venv "$venv"
req_file=$(mktemp)
trap 'rm -f "$req_file"' EXIT
printf '%s\n' "$requirements" >"$req_file"
# Short timeout and few retries: when PyPI is unreachable, say so in seconds
# rather than minutes.
if ! "$venv/bin/pip" install --disable-pip-version-check --no-input --quiet \
    --timeout 20 --retries 1 -r "$req_file"; then
    rm -rf "$venv"
    echo "setup-validator: pip could not install kubernetes-validate (is PyPI reachable?)" >&2
    exit 1
fi
"$venv/bin/python" -c 'import kubernetes_validate' >/dev/null
printf '%s' "$requirements" >"$stamp"
echo "setup-validator: kubernetes-validate $("$venv/bin/kubernetes-validate" --version) ready" >&2
