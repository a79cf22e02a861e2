#!/usr/bin/env bash
# Builds libkryonix_ffi.so for the Android ABIs into src/main/jniLibs/ (cargo-ndk, size-optimised
# profile) and generates the Kotlin bindings into src/main/kotlin/dev/kryonix/sync/generated/.
# Needs ANDROID_NDK_HOME, `cargo install cargo-ndk` and the rustup targets below.
# Cannot run on the project's CI machine (no NDK); scripts/test-bindings tests a host build instead.
set -euo pipefail
cd "$(dirname "$0")"
ABIS=(arm64-v8a armeabi-v7a x86_64)

TARGETS=()
for abi in "${ABIS[@]}"; do TARGETS+=(-t "$abi"); done
cargo ndk "${TARGETS[@]}" -o src/main/jniLibs \
  build --locked -p kryonix-ffi --profile small-release

# The bindgen reads metadata from symbols, which small-release strips: generate from a host
# debug build of the same sources (the generated Kotlin is the same for every target).
cargo build --locked -p kryonix-ffi
LIB=$(cargo build --locked -p kryonix-ffi --message-format=json |
  jq -r 'select(.reason == "compiler-artifact" and .target.name == "kryonix_ffi") | .filenames[] | select(endswith(".so"))')
OUT="$PWD/src/main/kotlin/dev/kryonix/sync/generated"
rm -rf "$OUT" "$OUT.tmp" && mkdir -p "$OUT"
# Run from bindings/: library mode finds uniffi.toml (package dev.kryonix.sync) through cargo metadata.
(cd ../bindings && cargo uniffi-bindgen generate "$LIB" --language kotlin --no-format --out-dir "$OUT.tmp")
mv "$OUT.tmp"/dev/kryonix/sync/*.kt "$OUT"/ && rm -rf "$OUT.tmp"
