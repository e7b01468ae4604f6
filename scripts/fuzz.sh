#!/usr/bin/env bash
# Property-based fuzzing on stable Rust: the wire crate's framing, scanner, startup,
# message and SCRAM parsers over random and adversarial input (crates/wire/tests/
# properties.rs). CI runs proptest's default 256 cases per property with the tests;
# this runs CASES per property (default 100,000) in release mode and reports the time.
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${CASES:-100000}
start=$(date +%s)
PROPTEST_CASES=$cases cargo test --release -q -p sluice-wire --test properties
echo "$cases cases per property, $(( $(date +%s) - start )) s"
