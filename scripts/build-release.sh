#!/usr/bin/env bash
# The release build of nestdock, in one place: the Dockerfile runs this script
# and so does CI (.ci/run), so the shipped binary is built with the profile and
# features that CI builds and tests (the [profile.release] of Cargo.toml, the
# default features, the versions in Cargo.lock). tests/manifests.rs checks that
# both call it and that no other cargo build sneaks in.
#
# Prints the path of the binary on standard output.
# Environment: CARGO_TARGET_DIR (cargo's own; default <repo>/target).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release --locked --bin nestdock >&2

echo "${CARGO_TARGET_DIR:-target}/release/nestdock"
