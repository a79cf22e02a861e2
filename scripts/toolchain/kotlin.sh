#!/usr/bin/env bash
# Ensures the Kotlin/JVM toolchain for the bindings tests: a JDK, Debian's JNA, and kotlinc from
# the npm package `kotlin-compiler` (unpacked once into $KRYONIX_CACHE/kotlinc-$VERSION).
#
#   scripts/toolchain/kotlin.sh              # prints KOTLINC=... JNA_JAR=... lines (eval-safe)
#   source scripts/toolchain/kotlin.sh       # exports the same variables into the calling shell
#
# Variables: KOTLINC, KOTLIN_HOME, KOTLIN_STDLIB_JAR, KOTLIN_TEST_JAR, COROUTINES_JAR, JNA_JAR.
# Idempotent: a finished kotlinc carries a `.ready` marker; reuse costs one `test -f`.

# Sourced: run this file as a child (so its `set -e` and helpers do not leak) and export its output.
if [ "${BASH_SOURCE[0]}" != "$0" ]; then
  _kryonix_kotlin_env="$(bash "${BASH_SOURCE[0]}")" || return 1
  eval "$_kryonix_kotlin_env"
  export KOTLINC KOTLIN_HOME KOTLIN_STDLIB_JAR KOTLIN_TEST_JAR COROUTINES_JAR JNA_JAR
  unset _kryonix_kotlin_env
  return 0
fi

set -euo pipefail
. "$(dirname "$0")/common.sh"

KOTLIN_VERSION=2.4.20
KOTLIN_HOME="$KRYONIX_CACHE/kotlinc-$KOTLIN_VERSION"

# JDK: any javac >= 17 will do; Debian 12 ships 17.
command -v javac >/dev/null 2>&1 || apt_install openjdk-17-jdk-headless
# JNA: Debian's jar has no native part; libjna-jni (pulled in) provides libjnidispatch.
apt_install libjna-java
JNA_JAR=/usr/share/java/jna.jar
[ -f "$JNA_JAR" ] || { echo "libjna-java installed but $JNA_JAR is missing" >&2; exit 1; }

if [ ! -f "$KOTLIN_HOME/.ready" ]; then
  exec 9>"$KOTLIN_HOME.lock"
  flock 9 # two jobs on one machine must not unpack it at once
  if [ ! -f "$KOTLIN_HOME/.ready" ]; then
    log "kotlinc $KOTLIN_VERSION: npm pack kotlin-compiler@$KOTLIN_VERSION"
    safe_rm "$KOTLIN_HOME.partial"
    safe_rm "$KOTLIN_HOME"
    command -v npm >/dev/null 2>&1 || apt_install npm
    mkdir -p "$KOTLIN_HOME.partial"
    (cd "$KOTLIN_HOME.partial" && npm pack --silent "kotlin-compiler@$KOTLIN_VERSION" >/dev/null)
    tar xzf "$KOTLIN_HOME.partial/kotlin-compiler-$KOTLIN_VERSION.tgz" \
      -C "$KOTLIN_HOME.partial" --strip-components=1
    rm "$KOTLIN_HOME.partial/kotlin-compiler-$KOTLIN_VERSION.tgz"
    v="$("$KOTLIN_HOME.partial/bin/kotlinc" -version 2>&1)"
    case "$v" in
      *"kotlinc-jvm $KOTLIN_VERSION "*) ;;
      *) echo "unexpected kotlinc version: $v" >&2; exit 1 ;;
    esac
    echo "$v" >"$KOTLIN_HOME.partial/.ready"
    mv "$KOTLIN_HOME.partial" "$KOTLIN_HOME"
    log "kotlinc ready: $v"
  fi
  exec 9>&-
fi

for jar in kotlin-stdlib.jar kotlin-test.jar kotlinx-coroutines-core-jvm.jar; do
  [ -f "$KOTLIN_HOME/lib/$jar" ] || { echo "$KOTLIN_HOME/lib/$jar is missing" >&2; exit 1; }
done

printf '%s=%q\n' \
  KOTLINC "$KOTLIN_HOME/bin/kotlinc" \
  KOTLIN_HOME "$KOTLIN_HOME" \
  KOTLIN_STDLIB_JAR "$KOTLIN_HOME/lib/kotlin-stdlib.jar" \
  KOTLIN_TEST_JAR "$KOTLIN_HOME/lib/kotlin-test.jar" \
  COROUTINES_JAR "$KOTLIN_HOME/lib/kotlinx-coroutines-core-jvm.jar" \
  JNA_JAR "$JNA_JAR"
