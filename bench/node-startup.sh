#!/usr/bin/env bash
# Start-up users wait for, on the real node of tests/e2e_node.rs: the time from
# creating a pod to its build container's first successful `docker version`,
# median of 5 pods per mode (dind, dind-rootless, dind with TLS, guarded dood),
# and as a ratio to a plain pod without nestdock (creation to its first line)
# measured in the same run. Prints a Markdown table (README, "End-to-end
# suite: a real node"). Run as root; builds what the suite builds.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --test e2e_node startup_figures -- --ignored --nocapture 2>&1 |
	grep -E '^\|' || { echo "node-startup: the run failed; see: cargo test --test e2e_node startup_figures -- --ignored --nocapture" >&2; exit 1; }
