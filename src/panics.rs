//! Panics of third-party parsers as errors. Decoders, tokenizer builders and similar code
//! can panic on valid but unusual input (the `tiff` crate on tiled planar TIFFs,
//! `spm_precompiled` on a malformed character map); [`catch`] turns such a panic into that
//! one input's error, so that a folder of images loses one line, not the run.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use anyhow::{anyhow, Result};

thread_local! {
    /// Whether this thread is inside [`catch`], whose panics are reported as errors.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `work`, turning a panic inside it into an error that says `what` failed and why
/// (the panic's message). The panic hook stays quiet for panics caught here (on this
/// thread), so no backtrace is printed for what becomes an ordinary error.
///
/// `work` must leave nothing it shares half-changed when it panics: it should only parse
/// or decode its own input.
pub fn catch<T>(what: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
    quiet_hook_for_caught_panics();
    let outer = CATCHING.with(|catching| catching.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(work));
    CATCHING.with(|catching| catching.set(outer));
    match result {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            let message = message.lines().next().unwrap_or_default().to_string();
            Err(anyhow!("{what}: {message} (a panic in third-party code)"))
        }
    }
}

/// Wraps the process's panic hook, once, so that it says nothing for panics that
/// [`catch`] turns into errors and everything it said before for all others.
fn quiet_hook_for_caught_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !CATCHING.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_naming_the_work_and_the_message() {
        let err = catch("cannot decode image", || -> Result<()> {
            let empty: Vec<u8> = Vec::new();
            let index = empty.len();
            let _ = empty[index];
            Ok(())
        })
        .unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("cannot decode image: index out of bounds"),
            "{message}"
        );
    }

    #[test]
    fn results_and_errors_pass_through_and_panics_outside_still_panic() {
        assert_eq!(catch("x", || Ok(3)).unwrap(), 3);
        assert_eq!(
            catch("x", || -> Result<()> { Err(anyhow!("plain")) })
                .unwrap_err()
                .to_string(),
            "plain"
        );
        let nested = catch("outer", || {
            catch("inner", || -> Result<()> { panic!("deep") })
        });
        assert_eq!(
            nested.unwrap_err().to_string(),
            "inner: deep (a panic in third-party code)"
        );
        assert!(panic::catch_unwind(|| panic!("still a panic")).is_err());
    }
}
