#!/usr/bin/env bash
# Builds KryonixSyncFFI.xcframework (device + simulators, size-optimised static libraries) and
# generates the Swift bindings into Sources/KryonixSync/Generated/, so that Package.swift's
# binaryTarget resolves on Apple platforms.
# Needs macOS with Xcode and the rustup targets below. Cannot run on the project's CI machine
# (Linux, no Xcode); scripts/test-bindings builds and tests this package on Linux instead.
set -euo pipefail
cd "$(dirname "$0")"
HERE="$PWD"
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
PROFILE=small-release
LIBNAME=libkryonix_ffi.a

for t in aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios; do
  cargo build --locked -p kryonix-ffi --profile "$PROFILE" --target "$t"
done

# One fat library for the two simulator architectures.
SIM="$TARGET_DIR/ios-sim/$PROFILE"
mkdir -p "$SIM"
lipo -create "$TARGET_DIR/aarch64-apple-ios-sim/$PROFILE/$LIBNAME" "$TARGET_DIR/x86_64-apple-ios/$PROFILE/$LIBNAME" \
  -output "$SIM/$LIBNAME"

# Bindings from a host build with symbols (small-release strips the metadata the bindgen reads).
cargo build --locked -p kryonix-ffi
GEN="$TARGET_DIR/kryonix-swift"
rm -rf "$GEN" && mkdir -p "$GEN/Headers"
(cd ../bindings && cargo uniffi-bindgen generate "$TARGET_DIR/debug/libkryonix_ffi.dylib" \
  --language swift --no-format --out-dir "$GEN")
cp "$GEN/KryonixSyncFFI.h" "$GEN/Headers/"
cp "$GEN/KryonixSyncFFI.modulemap" "$GEN/Headers/module.modulemap"
mkdir -p Sources/KryonixSync/Generated
cp "$GEN/KryonixSync.swift" Sources/KryonixSync/Generated/

rm -rf "$HERE/KryonixSyncFFI.xcframework"
xcodebuild -create-xcframework \
  -library "$TARGET_DIR/aarch64-apple-ios/$PROFILE/$LIBNAME" -headers "$GEN/Headers" \
  -library "$SIM/$LIBNAME" -headers "$GEN/Headers" \
  -output "$HERE/KryonixSyncFFI.xcframework"
