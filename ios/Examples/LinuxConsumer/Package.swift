// swift-tools-version:6.0
// A consumer of the KryonixSync package, as an app's own package would be: it depends on the
// package by path and imports it without `@testable`, so only the public API compiles. Built and
// run by scripts/test-bindings (see ios/README.md, "Using the package from another SwiftPM
// package on Linux").
import PackageDescription

let package = Package(
    name: "LinuxConsumer",
    dependencies: [.package(name: "KryonixSync", path: "../..")],
    targets: [
        .executableTarget(
            name: "Consumer",
            dependencies: [.product(name: "KryonixSync", package: "KryonixSync")]
        ),
    ]
)
