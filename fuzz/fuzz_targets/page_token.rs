//! Fuzz target `page_token`: see `ledger_fuzz::page_token` for what it feeds and what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ledger_fuzz::page_token(data));
