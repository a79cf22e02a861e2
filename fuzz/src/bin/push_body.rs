//! AFL entry point of [`kryonix_fuzz::push_body`]: `scripts/fuzz push_body`.
fn main() {
    afl::fuzz!(|data: &[u8]| kryonix_fuzz::push_body(data));
}
