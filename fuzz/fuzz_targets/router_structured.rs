#![no_main]
//! See op25b_fuzz::router_structured.
libfuzzer_sys::fuzz_target!(|data: &[u8]| op25b_fuzz::router_structured(data));
