//! How failures are named in reports: transport statuses by their `StatusCode` (`NotFound`,
//! `Unavailable`, ...), domain write errors as `write:<code>`, and client-side failures by kind
//! (`timeout`, `io`, `closed`, `goaway:<code>`, `protocol`, `proof_invalid`,
//! `request_too_large`).

use ledger_core::types::WriteError;
use ledger_wire::ClientError;

/// The report name of a failed call.
pub fn client_error_code(error: &ClientError) -> String {
    match error {
        ClientError::Status { code, .. } => format!("{code:?}"),
        ClientError::Goaway { code, .. } => format!("goaway:{code:?}"),
        ClientError::Io(_) => "io".to_string(),
        ClientError::Closed { .. } => "closed".to_string(),
        ClientError::Protocol(_) => "protocol".to_string(),
        ClientError::Timeout { .. } => "timeout".to_string(),
        ClientError::RequestTooLarge { .. } => "request_too_large".to_string(),
        ClientError::ProofInvalid(_) => "proof_invalid".to_string(),
    }
}

/// The report name of a write rejected by the state machine.
pub fn write_error_code(error: &WriteError) -> String {
    format!("write:{:?}", error.code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_core::types::WriteErrorCode;
    use ledger_wire::messages::StatusCode;

    #[test]
    fn t70_codes_are_stable_names() {
        // Proves the names used as JSON keys for errors.
        let status = ClientError::Status { code: StatusCode::Unavailable, message: "x".into(), detail: None };
        assert_eq!(client_error_code(&status), "Unavailable");
        assert_eq!(client_error_code(&ClientError::Timeout { elapsed_ms: 5 }), "timeout");
        assert_eq!(client_error_code(&ClientError::Closed { reason: "x".into() }), "closed");
        let e = WriteError {
            code: WriteErrorCode::KeyExists,
            key: "k".into(),
            current_version: None,
            current_value: None,
            message: String::new(),
            committed_tx_id: None,
            committed_block_height: None,
            last_committed_sequence: None,
        };
        assert_eq!(write_error_code(&e), "write:KeyExists");
    }
}
