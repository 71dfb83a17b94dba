#!/usr/bin/env bash
# A frozen copy of the product to benchmark: the tree of a commit (default HEAD) exported
# to a folder, with its Rust extension built there. Benchmarks then import that copy
# (bench_cpu.py --product DIR), so edits made to the working tree while a 25-minute run
# is going on cannot leak into it, and the results name the exact commit measured.
#
#   bash benches/snapshot.sh [REV] [DIR]     # default: HEAD, /tmp/spectrum-rs-snapshot
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:-HEAD}
DIR=${2:-/tmp/spectrum-rs-snapshot}
SHA=$(git rev-parse "$REV")
rm -rf "$DIR.tmp"
mkdir -p "$DIR.tmp"
git archive "$SHA" | tar -x -C "$DIR.tmp"
# reuse the previous snapshot's build folder: only what changed is compiled again
[[ -d "$DIR/target" ]] && mv "$DIR/target" "$DIR.tmp/target"
(cd "$DIR.tmp" && cargo build --release --quiet --features extension-module --lib)
cp "$DIR.tmp/target/release/lib_core.so" "$DIR.tmp/python/spectrum_rs/_core.abi3.so"
echo "$SHA $(git log -1 --format='%cI %s' "$SHA")" > "$DIR.tmp/PRODUCT_REV"
rm -rf "$DIR"
mv "$DIR.tmp" "$DIR"
PYTHONPATH="$DIR/python" python3 -c "import spectrum_rs, sys; assert spectrum_rs.__file__.startswith(sys.argv[1]), spectrum_rs.__file__; print('snapshot', open(sys.argv[1] + '/../PRODUCT_REV').read().strip())" "$DIR/python"
echo "$DIR"
