// swift-tools-version:6.0
// KryonixSync: the Swift bindings of the Kryonix device agent.
//
// On Apple platforms the C part (KryonixSyncFFI: header, modulemap, static libraries) comes from
// the XCFramework that build-xcframework.sh makes. On Linux the same package builds against the
// host-built libkryonix_ffi.so through a system-library target, which is how scripts/test-bindings
// runs the tests here. Generated files (Sources/KryonixSync/Generated, Sources/KryonixSyncFFI/*.h,
// module.modulemap) and native libraries are not committed; the build scripts put them in place.
import PackageDescription

#if os(Linux)
let ffiTarget: Target = .systemLibrary(name: "KryonixSyncFFI", path: "Sources/KryonixSyncFFI")
let ffiLinker: [LinkerSetting] = [.linkedLibrary("kryonix_ffi")]
#else
let ffiTarget: Target = .binaryTarget(name: "KryonixSyncFFI", path: "KryonixSyncFFI.xcframework")
let ffiLinker: [LinkerSetting] = []
#endif

let package = Package(
    name: "KryonixSync",
    platforms: [.iOS(.v16), .macOS(.v13)],
    products: [.library(name: "KryonixSync", targets: ["KryonixSync"])],
    targets: [
        ffiTarget,
        .target(
            name: "KryonixSync",
            dependencies: ["KryonixSyncFFI"],
            path: "Sources/KryonixSync",
            linkerSettings: ffiLinker
        ),
        .testTarget(name: "KryonixSyncTests", dependencies: ["KryonixSync"]),
    ]
)
