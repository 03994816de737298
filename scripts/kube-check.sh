#!/usr/bin/env bash
# Checks the Kubernetes manifests offline (scripts/test.sh runs it): every
# overlay under deploy/kubernetes/overlays is rendered with kustomize
# (`kubectl kustomize`, or `kustomize build`), each rendered document is
# validated by kubernetes-validate against the Kubernetes $KUBE_VERSION
# schemas, strictly (an unknown field is an error), the properties the
# README promises are asserted on the rendered YAML (scripts/kube-check.py),
# and each overlay's idsync config, as its ConfigMap holds it, passes
# `idsync validate`. No cluster and no network: kubernetes-validate ships its
# schemas. Without kubectl or kustomize it says it skipped, and why, and
# succeeds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# The oldest Kubernetes the manifests are for: podFailurePolicy is GA in 1.31.
KUBE_VERSION=1.31.0
VENV="${IDSYNC_KUBE_VENV:-$ROOT/.test-env/venv}"
IDSYNC="${IDSYNC_BIN:-$ROOT/target/debug/idsync}"

# Microseconds, from bash itself.
started=${EPOCHREALTIME/./}
if command -v kubectl >/dev/null 2>&1; then
    render() { kubectl kustomize "$1"; }
elif command -v kustomize >/dev/null 2>&1; then
    render() { kustomize build "$1"; }
else
    echo "kube-check: SKIPPED: neither kubectl nor kustomize is installed" >&2
    exit 0
fi
validate="$VENV/bin/kubernetes-validate"
if [ ! -x "$validate" ]; then
    echo "kube-check: error: $validate not found" >&2
    echo "hint: run scripts/test-env.sh (it installs kubernetes-validate into the venv)" >&2
    exit 1
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/rendered" "$scratch/configs"

overlays=()
for dir in deploy/kubernetes/overlays/*/; do
    name="$(basename "$dir")"
    [ -f "$dir/kustomization.yaml" ] || continue
    render "$dir" >"$scratch/rendered/$name.yaml"
    overlays+=("$name")
done
if [ "${#overlays[@]}" -eq 0 ]; then
    echo "kube-check: error: no overlay under deploy/kubernetes/overlays" >&2
    exit 1
fi

# --strict: unknown properties are errors; --quiet: only what fails.
"$validate" --strict --quiet -k "$KUBE_VERSION" "$scratch"/rendered/*.yaml

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
"$VENV/bin/python" scripts/kube-check.py "$scratch/rendered" "$scratch/configs" "$version" "$ROOT/mappings"

if [ -x "$IDSYNC" ]; then
    for name in "${overlays[@]}"; do
        if ! out="$("$IDSYNC" validate -c "$scratch/configs/$name/config.yaml" 2>&1)"; then
            echo "kube-check: $name: idsync validate refused the overlay's config:" >&2
            echo "$out" >&2
            exit 1
        fi
    done
else
    echo "kube-check: error: $IDSYNC not found (cargo build, or set IDSYNC_BIN)" >&2
    exit 1
fi

elapsed_ms=$(((${EPOCHREALTIME/./} - started) / 1000))
printf 'kube-check: %d overlays rendered, valid for Kubernetes %s and checked (%d.%03d s)\n' \
    "${#overlays[@]}" "$KUBE_VERSION" $((elapsed_ms / 1000)) $((elapsed_ms % 1000))
