//! AFL entry point of [`kryonix_fuzz::token_header`]: `scripts/fuzz token_header`.
fn main() {
    afl::fuzz!(|data: &[u8]| kryonix_fuzz::token_header(data));
}
