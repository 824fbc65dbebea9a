#!/usr/bin/env bash
# Criterion benches of another commit and of this tree, side by side in one sitting: builds
# REV in a temporary git worktree, then runs each bench of REV and of this tree in turn (so
# both see the same machine at about the same time) and prints criterion's lines. On a
# shared, noisy machine compare the ratios of one run, not figures of different runs.
#
# Usage: benches/compare.sh REV [BENCH[:FILTER] ...]
#   benches/compare.sh 7f62f66                                  # pipeline vxlan routing nat
#   benches/compare.sh 7f62f66 pipeline 'nat:nat/hit/.*/10$'
# The worktree and its build are removed on exit, also on Ctrl-C or failure.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: benches/compare.sh REV [BENCH[:FILTER] ...]}
shift
specs=("$@")
[ ${#specs[@]} -gt 0 ] || specs=(pipeline vxlan routing 'nat:nat/hit/.*/10$|nat/new/udp_service/10$|nat/baseline')

tree=$(mktemp -d /tmp/tapswitch-compare-XXXX)
cleanup() {
  git worktree remove --force "$tree" 2>/dev/null || rm -rf "$tree"
  git worktree prune
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
git worktree add --detach "$tree" "$rev" >/dev/null
# Fixes to the benches themselves, made after REV, go into its tree where they apply: the
# nat bench's setup held the conntrack lock across checks that take it again (86e0562).
for fix in 86e0562; do
  git diff "$fix^" "$fix" -- benches/nat.rs >"$tree/.bench-fix.patch"
  if (cd "$tree" && git apply --check .bench-fix.patch 2>/dev/null); then
    (cd "$tree" && git apply .bench-fix.patch)
  fi
  rm -f "$tree/.bench-fix.patch"
done

# The executable of bench $2 built in tree $1 (cargo names it in its output).
build() { # TREE BENCH
  (cd "$1" && cargo bench --no-run --bench "$2" 2>&1) |
    sed -n "s|.*Executable benches/$2.rs (\(.*\))|\1|p" | tail -n 1
}

for spec in "${specs[@]}"; do
  bench=${spec%%:*}
  filter=""
  [ "$spec" = "$bench" ] || filter=${spec#*:}
  before=$(build "$tree" "$bench")
  after=$(build . "$bench")
  for side in before after; do
    if [ "$side" = before ]; then exe=$tree/$before; dir=$tree; else exe=$after; dir=.; fi
    case $exe in /*) ;; *) exe=$dir/$exe ;; esac
    echo "### $side ($([ "$side" = before ] && echo "$rev" || echo "this tree")): $bench ${filter}"
    # The benches' names and times; not the change against the last run, not side output.
    (cd "$dir" && "$exe" --bench ${filter:+"$filter"} 2>&1) |
      grep -E "time:|^[a-z_]+/[^ :]*( |$)" | grep -v "%" || true
  done
done
