//! AFL entry point of [`kryonix_fuzz::publish_body`]: `scripts/fuzz publish_body`.
fn main() {
    afl::fuzz!(|data: &[u8]| kryonix_fuzz::publish_body(data));
}
