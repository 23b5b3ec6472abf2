#!/usr/bin/env bash
# Validates the Kubernetes manifests against the Kubernetes API's schemas, offline and strictly
# (an unknown field is an error, as a typo in a real cluster would be a silently ignored
# setting): `kubernetes-validate` from PyPI, pinned, in a virtual environment of its own under
# target/, which ships the schemas. kustomization.yaml is kustomize's, not an API resource.
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.37.0
venv=target/kubernetes-validate
if [[ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" != *"$version"* ]]; then
  rm -rf "$venv"
  python3 -m venv "$venv" 2>/dev/null || {
    sudo=$([[ $(id -u) == 0 ]] || echo sudo)
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv
    python3 -m venv "$venv"
  }
  "$venv/bin/pip" install -q "kubernetes-validate==$version"
fi
find deploy/kubernetes -name '*.yaml' ! -name kustomization.yaml -print0 | sort -z \
  | xargs -0 "$venv/bin/kubernetes-validate" --strict --quiet
echo "Kubernetes manifests: valid against the API schemas of Kubernetes $version"
