//! The uniffi bindgen CLI, locked by Cargo.lock to the same uniffi as the library.
fn main() {
    uniffi::uniffi_bindgen_main()
}
