#!/usr/bin/env bash
# End-to-end proof of the bindings toolchain, and the template for the real bindings:
# builds the uniffi library in selftest/ (not a workspace member), generates Kotlin and Swift in
# library mode, compiles the Kotlin with kotlinc -Werror and runs it on the JVM through JNA, then
# compiles (Swift 6 mode, -warnings-as-errors) and runs the Swift inside the trixie Swift root.
#
#   scripts/toolchain/selftest.sh      # as root; ends with "selftest: N passed, M failed"
#
# Output and logs: $KRYONIX_CACHE/selftest-run (rebuilt each run); Rust build: $KRYONIX_CACHE/selftest-target.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/common.sh"

CRATE="$HERE/selftest"
W="$KRYONIX_CACHE/selftest-run"
export CARGO_TARGET_DIR="$KRYONIX_CACHE/selftest-target"

exec 9>"$W.lock"
flock 9
safe_rm "$W"
mkdir -p "$W/logs" "$W/lib" "$W/build"

# step NAME CMD...: runs CMD with its output in logs/NAME.log and prints the wall time;
# run-* steps also print their output (the harness's checks and closing line).
# On failure: the log's tail, and the script stops.
step() {
  local name="$1" t0 rc=0
  shift
  t0=$(date +%s.%N)
  "$@" >"$W/logs/$name.log" 2>&1 || rc=$?
  case "$name" in run-*) sed 's/^/    /' "$W/logs/$name.log" ;; *) [ "$rc" = 0 ] || tail -30 "$W/logs/$name.log" ;; esac
  awk -v a="$t0" -v b="$(date +%s.%N)" -v n="$name" -v rc="$rc" \
    'BEGIN { printf "  %-16s %s %6.1f s\n", n, (rc == 0 ? "ok" : "FAILED (exit " rc ")"), b - a }'
  [ "$rc" = 0 ] || exit 1
}

t_start=$(date +%s)
echo "== toolchains"
# shellcheck disable=SC2016
step kotlin-toolchain bash -c '"$1" >"$2"' _ "$HERE/kotlin.sh" "$W/kotlin.env"
# shellcheck source=/dev/null
. "$W/kotlin.env"
step swift-root "$HERE/swift-root.sh"

echo "== rust: library (uniffi without default features) and the bindgen (uniffi/cli)"
# The bindgen first, the library last, so target/debug/libselftest.so is the library's own build.
step cargo-bindgen cargo build --locked --manifest-path "$CRATE/Cargo.toml" --features cli --bin uniffi-bindgen
step cargo-lib cargo build --locked --manifest-path "$CRATE/Cargo.toml" --lib
cp "$CARGO_TARGET_DIR/debug/libselftest.so" "$W/lib/"

echo "== bindgen, library mode (run in the crate: it reads uniffi.toml through cargo metadata)"
BINDGEN="$CARGO_TARGET_DIR/debug/uniffi-bindgen"
gen() { (cd "$CRATE" && "$BINDGEN" generate "$W/lib/libselftest.so" --language "$1" --no-format --out-dir "$W/$1"); }
step bindgen-kotlin gen kotlin
step bindgen-swift gen swift

echo "== kotlin: kotlinc -Werror, run on the JVM with JNA"
CP="$JNA_JAR:$COROUTINES_JAR:$KOTLIN_TEST_JAR"
step kotlinc "$KOTLINC" -Werror -jvm-target 17 -cp "$CP" -d "$W/build/selftest-kotlin.jar" \
  "$W/kotlin/kryonix/selftest/selftest.kt" "$CRATE/kotlin/Main.kt"
step run-kotlin java -Djna.library.path="$W/lib" \
  -cp "$W/build/selftest-kotlin.jar:$KOTLIN_STDLIB_JAR:$CP" MainKt

echo "== swift: swiftc -swift-version 6 -warnings-as-errors, run in the Swift root"
cp "$CRATE/swift/main.swift" "$W/swift/"
# Inside the root $W is /src. The .so is linked dynamically with an rpath to /src/lib.
step swiftc env SWIFT_SRC="$W" "$HERE/in-swift-root.sh" \
  'swiftc -swift-version 6 -warnings-as-errors -module-name SelftestCheck \
     -Xcc -fmodule-map-file=swift/SelftestFFI.modulemap swift/Selftest.swift swift/main.swift \
     -L lib -lselftest -Xlinker -rpath -Xlinker /src/lib -o build/selftest-swift'
step run-swift env SWIFT_SRC="$W" "$HERE/in-swift-root.sh" build/selftest-swift

# One closing line for both harnesses, in the plain "N passed, M failed" form.
sum() { sed -nE 's/^([0-9]+) passed, ([0-9]+) failed$/\1 \2/p' "$W"/logs/run-*.log | awk -v c="$1" '{ s += $c } END { print s + 0 }'; }
echo "== done in $(($(date +%s) - t_start)) s (logs: $W/logs)"
echo "selftest: $(sum 1) passed, $(sum 2) failed"
