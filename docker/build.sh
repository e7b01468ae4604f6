#!/usr/bin/env bash
# The image's build step, and CI runs it too (outside Docker), so the path the image
# takes is exercised on every change: a locked release build of the `sluice` binary,
# stripped, into $1 (default target/docker).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/docker}
cargo build --release --locked -p sluice
mkdir -p "$out"
install -m 0755 target/release/sluice "$out/sluice"
# The release profile keeps line tables for profiling; the image does not need them.
strip "$out/sluice"
"$out/sluice" --version
ls -l "$out/sluice"
