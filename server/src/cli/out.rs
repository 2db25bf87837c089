//! Standard output of the CLIs, written the way Unix tools write it: when the reader has gone
//! away (`ledger tip ... | head -1`, `ledger watch ... | head`), the tool exits quietly with
//! status 0 instead of panicking in `println!` ("failed printing to stdout: Broken pipe"). Rust
//! ignores SIGPIPE, so the closed pipe arrives here as an `io::ErrorKind::BrokenPipe` error.

use std::fmt::Display;
use std::io::Write;

/// Prints `text` and a newline.
pub fn line(text: impl Display) {
    write(format_args!("{text}\n"));
}

/// Prints `text` as it is.
pub fn text(text: impl Display) {
    write(format_args!("{text}"));
}

fn write(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        Ok(()) => {}
        // Nobody reads any more: that ends the tool's work, it is not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }
}
