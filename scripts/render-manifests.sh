#!/usr/bin/env bash
# Renders the kustomize manifests under manifests/ from the Helm chart
# (charts/nestdock), the single source of nestdock's install.
#
#   scripts/render-manifests.sh            rewrite the rendered files in manifests/
#   scripts/render-manifests.sh --out DIR  write them under DIR instead (the
#                                          drift test compares DIR with manifests/)
#
# `helm template` runs with fixed values per overlay (scripts/manifest-values/)
# and each template goes to the file users know: manifests/base/deployment.yaml
# from templates/deployment.yaml, and so on. The kustomization.yaml files, the
# self-signed overlay and the examples are written by hand and not touched.
# Every rendered file starts with a line saying so: edit the chart, then run
# this script, then commit both.
#
# helm comes from scripts/setup-helm.sh (built from its Go module once).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$root/manifests
if [[ ${1:-} == --out ]]; then
    out=${2:?--out needs a directory}
elif [[ $# -gt 0 ]]; then
    echo "usage: scripts/render-manifests.sh [--out DIR]" >&2
    exit 2
fi

helm=$("$root/scripts/setup-helm.sh")
chart=$root/charts/nestdock
values=$root/scripts/manifest-values
release=nestdock
namespace=nestdock-system

# No user's helm configuration, cache or plugins take part.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export HELM_CONFIG_HOME=$scratch/config HELM_CACHE_HOME=$scratch/cache HELM_DATA_HOME=$scratch/data

header='# Rendered from charts/nestdock by scripts/render-manifests.sh: edit the chart, not this file.'

# template VALUES... -- TEMPLATE: one template's documents, without helm's
# "# Source:" lines and the leading document separator.
template() {
    local args=()
    while [[ $1 != -- ]]; do
        args+=(--values "$values/$1.yaml")
        shift
    done
    "$helm" template "$release" "$chart" --namespace "$namespace" "${args[@]}" \
        --show-only "templates/$2" |
        sed -e '/^# Source: /d' | sed -e '1{/^---$/d}'
}

# write PATH: standard input into $out/PATH, after the header.
write() {
    mkdir -p "$(dirname "$out/$1")"
    { echo "$header"; cat; } >"$out/$1"
}

# doc N: the Nth (from 1) YAML document of standard input.
doc() {
    awk -v n="$1" 'BEGIN { i = 1 } /^---$/ { i++; next } i == n'
}

# config VALUES...: the config file that the chart's ConfigMap carries.
config() {
    template "$@" -- configmap.yaml |
        sed -n '/^  config.yaml: |$/,$p' | sed -e '1d' -e 's/^    //'
}

for t in namespace rbac deployment pdb service webhook; do
    template base -- "$t.yaml" | write "base/$t.yaml"
done
{
    echo '# nestdock configuration (README.md, "Configuration"): values.yaml'"'"'s `config`'
    echo '# in the chart, nestdock'"'"'s defaults. To change it, replace this file in your'
    echo '# overlay:'
    echo '#   configMapGenerator:'
    echo '#     - name: nestdock-config'
    echo '#       behavior: replace'
    echo '#       files: [config.yaml]'
    config base
} | write base/config.yaml

# Cluster-scoped, in a kustomization of its own: base's namespace transformer
# would give kinds that kustomize does not know (ValidatingAdmissionPolicy) a
# namespace.
template base -- ephemeral-policy.yaml | write policy/ephemeral-policy.yaml

template base cert-manager -- cert-manager.yaml | write cert-manager/issuer.yaml

nodedocker=$(template base node-docker -- node-docker.yaml)
doc 1 <<<"$nodedocker" | write node-docker/namespace.yaml
doc 2 <<<"$nodedocker" | write node-docker/daemonset.yaml

template base registry-cache -- registry-cache.yaml | write registry-cache/registry-cache.yaml
{
    echo '# nestdock configuration with the registry cache as dind'"'"'s Docker Hub mirror.'
    config base registry-cache
} | write registry-cache/config.yaml
