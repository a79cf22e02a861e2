//! AFL entry point of [`kryonix_fuzz::cursor`]: `scripts/fuzz cursor`.
fn main() {
    afl::fuzz!(|data: &[u8]| kryonix_fuzz::cursor(data));
}
