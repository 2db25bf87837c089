//! The errors of the load generator: bad flags (`ArgError`, shown by clap next to the flag) and
//! failures of a run (`LoadgenError`), each keeping its cause.

use ledger_wire::ClientError;

/// A flag value that cannot be used; the message names what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error("empty duration; expected e.g. 500ms, 10s, 1m, 1h")]
    DurationEmpty,
    #[error("invalid duration {input:?}; expected a number with unit ms, s, m or h (e.g. 10s, 1m)")]
    DurationSyntax { input: String },
    #[error("duration {input:?} is too large")]
    DurationOverflow { input: String },
    #[error("empty mix; expected e.g. read=90,write=10")]
    MixEmpty,
    #[error(
        "invalid mix entry {entry:?}; expected NAME=WEIGHT with NAME one of read, write, verified, list"
    )]
    MixEntry { entry: String },
    #[error("unknown operation {name:?} in mix; expected read, write, verified or list")]
    MixUnknownOp { name: String },
    #[error("operation {name:?} appears twice in the mix")]
    MixDuplicate { name: String },
    #[error("invalid weight {weight:?} for {name:?}; expected a non-negative integer")]
    MixWeight { name: String, weight: String },
    #[error("the mix weights are all zero; give at least one operation a positive weight")]
    MixAllZero,
    #[error("invalid address {input:?}; expected HOST:PORT")]
    Address { input: String },
    #[error("no address given; expected HOST:PORT[,HOST:PORT...]")]
    AddressEmpty,
    #[error("--duration must be longer than 0s: nothing would be measured")]
    DurationZero,
    #[error(
        "--batch-items {batch_items} exceeds --key-space {key_space}: a transaction writes distinct keys"
    )]
    BatchExceedsKeySpace { batch_items: u64, key_space: u64 },
}

/// Why a load run failed (errors of individual operations are counted, not returned).
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("invalid arguments: {0}")]
    Args(#[from] ArgError),
    /// `--token-file` unreadable or empty (the message names the file, not its contents).
    #[error("{0}")]
    TokenFile(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: ClientError,
    },
    #[error("setup failed while {step}: {source}")]
    Setup {
        step: String,
        #[source]
        source: ClientError,
    },
    #[error("setup failed while {step}: unexpected response {response}")]
    UnexpectedResponse { step: String, response: String },
    #[error("setup failed while {step}: {message}")]
    SetupRejected { step: String, message: String },
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot write histogram file {path}: {source}")]
    HdrWrite {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode histogram: {message}")]
    HdrEncode { message: String },
    #[error(
        "stopped: every request failed for {window_secs:.0}s ({failed} failures, none succeeded); \
         last error: {last_error}"
    )]
    AllFailing { window_secs: f64, failed: u64, last_error: String },
    #[error("a worker task failed: {message}")]
    Worker { message: String },
    #[error("TLS: {0}")]
    Tls(#[from] ledger_wire::tls::TlsError),
}
