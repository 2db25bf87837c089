//! Fault isolation: a broken invariant (an `assert!` that fires) while applying one group's or
//! one scope's entry must stop that group or scope, not the node (SPEC §2 goal 3, §9.8). Apply is
//! deterministic, so letting the panic unwind the core's thread would only make the node fail
//! the same way at every restart. The panic hook still prints the message and location.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    /// How many `catch` calls this thread is inside of.
    static CATCHING: Cell<u32> = const { Cell::new(0) };
}

/// Whether a panic on this thread now would be caught by `catch`: the server's fail-stop panic
/// hook must then let it unwind instead of aborting the process (SPEC §10.8 vs §2 goal 3).
pub fn is_catching() -> bool {
    CATCHING.with(|c| c.get() > 0)
}

/// Runs `f`; a panic inside it comes back as `Err` with its message. The caller must treat
/// whatever `f` was changing as unusable afterwards (it may be half-changed).
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    CATCHING.with(|c| c.set(c.get() + 1));
    let result = catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(c.get().saturating_sub(1)));
    result.map_err(|panic| {
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

    /// Inside `catch` (nested too) the thread says so; outside it does not.
    #[test]
    fn t02_is_catching_only_inside_catch() {
        assert!(!is_catching());
        let inner = catch(|| (is_catching(), catch(is_catching)));
        assert_eq!(inner, Ok((true, Ok(true))));
        assert!(!is_catching());
        let _ = catch(|| -> u8 { panic!("x") });
        assert!(!is_catching(), "a caught panic leaves the count balanced");
    }
}
