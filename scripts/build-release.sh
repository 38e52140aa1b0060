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

# Called from a test (tests/e2e_node.rs builds nestdock's image), the
# environment holds the variables cargo sets for a running test
# (CARGO_MANIFEST_DIR, CARGO_PKG_*, ...). Build scripts (ring's, libc's) watch
# some of them, so a build with them would redo those crates and everything
# above them, and the next build without them would redo it all again.
for var in $(compgen -e); do
	case $var in
	CARGO_MANIFEST_* | CARGO_PKG_* | CARGO_CRATE_NAME | CARGO_BIN_* | CARGO_TARGET_TMPDIR | CARGO_PRIMARY_PACKAGE | OUT_DIR)
		unset "$var"
		;;
	esac
done

cargo build --release --locked --bin nestdock >&2

echo "${CARGO_TARGET_DIR:-target}/release/nestdock"
