//! AFL entry point of [`kryonix_fuzz::profile_header`]: `scripts/fuzz profile_header`.
fn main() {
    afl::fuzz!(|data: &[u8]| kryonix_fuzz::profile_header(data));
}
