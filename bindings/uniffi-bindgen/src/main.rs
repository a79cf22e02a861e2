//! The UniFFI bindgen, built from the workspace so it always matches the library's uniffi.
//!
//! `cargo uniffi-bindgen generate --library <libkryonix_ffi.so> --language kotlin --out-dir <dir>`
fn main() {
    uniffi::uniffi_bindgen_main()
}
