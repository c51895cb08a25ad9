#!/usr/bin/env bash
# Runs the libFuzzer target on the tunnel session for a bounded time
# (default 60 s): scripts/fuzz.sh [seconds]. Installs cargo-fuzz if missing
# and uses the nightly toolchain (libFuzzer needs sanitizer flags).
# Crashes are kept in fuzz/artifacts/ and fail the script.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p fuzz/corpus/session_frames
cargo +nightly fuzz run --fuzz-dir fuzz session_frames fuzz/corpus/session_frames -- \
  -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=2048
