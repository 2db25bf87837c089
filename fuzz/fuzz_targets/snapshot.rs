//! Fuzz target `snapshot`: see `ledger_fuzz::snapshot` for what it feeds and what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ledger_fuzz::snapshot(data));
