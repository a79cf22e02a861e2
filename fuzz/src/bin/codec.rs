//! AFL entry point of [`kryonix_fuzz::codec`]: `scripts/fuzz codec`.
fn main() {
    afl::fuzz!(|data: &[u8]| kryonix_fuzz::codec(data));
}
