#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 600), one after the
# other, and stops at the first crash (libFuzzer writes the input to
# fuzz/artifacts/TARGET/). Needs `cargo install cargo-fuzz`; works on the
# stable toolchain with `-s none` (the code under test forbids unsafe, so
# AddressSanitizer adds little; pass SANITIZER=address with nightly).
#   bash fuzz/run.sh            # 10 minutes per target
#   bash fuzz/run.sh 60 shamir_reconstruct
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
for target in "${targets[@]}"; do
  echo "== $target for ${seconds}s"
  cargo fuzz run -s "${SANITIZER:-none}" "$target" -- -max_total_time="$seconds" -print_final_stats=1
done
