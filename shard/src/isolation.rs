//! Fault isolation: a broken invariant (an `assert!` that fires) while applying one group's or
//! one scope's entry must stop that group or scope, not the node (SPEC §2 goal 3, §9.8). Apply is
//! deterministic, so letting the panic unwind the core's thread would only make the node fail
//! the same way at every restart. The panic hook still prints the message and location.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`; a panic inside it comes back as `Err` with its message. The caller must treat
/// whatever `f` was changing as unusable afterwards (it may be half-changed).
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic without a message".to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic's message comes back as the error; a value comes back unchanged.
    #[test]
    fn t01_catch_returns_the_panic_message() {
        assert_eq!(catch(|| 7), Ok(7));
        assert_eq!(catch(|| -> u8 { panic!("broken {}", "invariant") }), Err("broken invariant".to_string()));
        assert_eq!(catch(|| -> u8 { panic!("static") }), Err("static".to_string()));
    }
}
