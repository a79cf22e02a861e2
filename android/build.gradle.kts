// Android library module of the Kryonix bindings: the generated Kotlin (dev.kryonix.sync), the
// hand-written helpers in src/main/kotlin, and libkryonix_ffi.so for each ABI in src/main/jniLibs.
// `./build-rust.sh` (cargo-ndk) produces the libraries and the generated Kotlin; the
// `buildRust` task below runs it before every build.
//
// Not built on the project's CI machine: it has no Android SDK or NDK. What runs there is the
// host-JVM suite in src/test/kotlin (scripts/test-bindings). See README.md.
plugins {
    id("com.android.library") version "8.7.3"
    id("org.jetbrains.kotlin.android") version "2.1.0"
}

android {
    namespace = "dev.kryonix.sync"
    compileSdk = 35
    ndkVersion = "27.2.12479018"

    defaultConfig {
        minSdk = 24
        consumerProguardFiles("consumer-rules.pro")
    }

    sourceSets["main"].java.srcDirs("src/main/kotlin")
    sourceSets["main"].jniLibs.srcDirs("src/main/jniLibs")

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    // The generated code calls the Rust library through JNA; @aar carries JNA's own Android .so files.
    implementation("net.java.dev.jna:jna:5.14.0@aar")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-core:1.8.1")
    testImplementation(kotlin("test"))
}

val buildRust by tasks.registering(Exec::class) {
    description = "Builds libkryonix_ffi.so for the Android ABIs and generates the Kotlin bindings"
    workingDir = projectDir
    commandLine("./build-rust.sh")
}

tasks.named("preBuild") { dependsOn(buildRust) }
