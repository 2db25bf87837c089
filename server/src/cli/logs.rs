//! `ledger-admin logs` (SPEC §11.2): the node's event log through `GetEvents`, one line per event
//! (RFC 3339 UTC time, level, kind, scope, message, then `key=value` fields) or one JSON object.

use crate::cli::{out, CliError};
use ledger_core::types::Timestamp;
use ledger_wire::client::Client;
use ledger_wire::messages::{Event, EventLevel, Request, Response};
use serde_json::{json, Value};

/// `--level`: the least severe level shown.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LevelArg {
    Error,
    Warn,
    Info,
    Debug,
}

impl From<LevelArg> for EventLevel {
    fn from(level: LevelArg) -> Self {
        match level {
            LevelArg::Error => EventLevel::Error,
            LevelArg::Warn => EventLevel::Warn,
            LevelArg::Info => EventLevel::Info,
            LevelArg::Debug => EventLevel::Debug,
        }
    }
}

/// `90s`, `15m`, `1h`, `7d` (a bare number is seconds) → seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: expected a number with s, m, h or d (e.g. 1h)")),
    };
    let number: u64 = number.parse().map_err(|_| format!("{text:?}: expected a number with s, m, h or d"))?;
    number.checked_mul(scale).ok_or_else(|| format!("{text:?} is too long"))
}

/// Runs `GetEvents` and prints the events; exit code 0.
pub async fn run(
    client: &Client,
    since_secs: u64,
    filter: Option<String>,
    level: Option<LevelArg>,
    limit: u32,
    as_json: bool,
) -> Result<u8, CliError> {
    let request = Request::GetEvents { since_secs, filter, min_level: level.map(Into::into), limit };
    let events = match client.call(request).await? {
        Response::GetEvents { events } => events,
        other => return Err(CliError::new(1, format!("unexpected response: {other:?}"))),
    };
    if as_json {
        out::line(json!({"events": events.iter().map(event_json).collect::<Vec<_>>()}));
    } else {
        for event in &events {
            out::line(event_line(event));
        }
    }
    Ok(0)
}

pub fn level_name(level: EventLevel) -> &'static str {
    match level {
        EventLevel::Error => "error",
        EventLevel::Warn => "warn",
        EventLevel::Info => "info",
        EventLevel::Debug => "debug",
    }
}

/// `g3 ns1/v2`, `g3`, `ns1` (the namespace scope) or `-`.
pub fn scope(event: &Event) -> String {
    let group = event.group_id.map(|g| format!("g{g}"));
    let scope = event.namespace_id.map(|ns| match event.vault_id {
        Some(vault) => format!("ns{ns}/v{vault}"),
        None => format!("ns{ns}"),
    });
    let parts: Vec<String> = group.into_iter().chain(scope).collect();
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(" ")
    }
}

/// The text line of one event.
pub fn event_line(event: &Event) -> String {
    let mut line =
        format!("{} {:<5} {} {}", rfc3339(&event.ts), level_name(event.level), event.kind, scope(event));
    if !event.message.is_empty() {
        line.push(' ');
        line.push_str(&event.message);
    }
    for (key, value) in &event.fields {
        if value.is_empty() || value.contains(char::is_whitespace) {
            line.push_str(&format!(" {key}={value:?}"));
        } else {
            line.push_str(&format!(" {key}={value}"));
        }
    }
    line
}

pub fn event_json(event: &Event) -> Value {
    let fields: serde_json::Map<String, Value> =
        event.fields.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    json!({
        "ts": rfc3339(&event.ts),
        "level": level_name(event.level),
        "kind": event.kind,
        "group_id": event.group_id,
        "namespace_id": event.namespace_id,
        "vault_id": event.vault_id,
        "message": event.message,
        "fields": fields,
    })
}

/// `2026-12-05T06:53:19.562Z` (UTC, milliseconds).
pub fn rfc3339(ts: &Timestamp) -> String {
    let days = ts.secs.div_euclid(86_400);
    let in_day = ts.secs.rem_euclid(86_400);
    let (year, month, day) = civil_date(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60,
        ts.nanos / 1_000_000
    )
}

/// The proleptic Gregorian (year, month, day) of `days` since 1970-01-01: counted in 400-year
/// eras of 146,097 days, each year starting on March 1 so that the leap day falls at its end.
fn civil_date(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Durations take s, m, h and d (a bare number is seconds); anything else is refused.
    #[test]
    fn t01_durations() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("1h"), Ok(3600));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert_eq!(parse_duration("42"), Ok(42));
        for bad in ["", "h", "1w", "1.5h", "-1h", "1hh"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    /// RFC 3339 UTC times at the epoch, across a leap day and a century, with milliseconds.
    #[test]
    fn t02_rfc3339() {
        let at = |secs, nanos| rfc3339(&Timestamp { secs, nanos });
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5_000_000), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(951_868_799, 999_999_999), "2000-02-29T23:59:59.999Z");
        assert_eq!(at(1_709_251_199, 0), "2024-02-29T23:59:59.000Z");
        assert_eq!(at(4_102_444_800, 0), "2100-01-01T00:00:00.000Z");
        assert_eq!(at(-1, 0), "1969-12-31T23:59:59.000Z");
    }

    /// A text line: time, level, kind, scope, message, then fields (quoted when they hold
    /// spaces); the scope is `-` when the event has none.
    #[test]
    fn t03_event_line() {
        let event = Event {
            ts: Timestamp { secs: 0, nanos: 0 },
            level: EventLevel::Warn,
            kind: "snapshot_created".into(),
            group_id: Some(3),
            namespace_id: Some(1),
            vault_id: Some(2),
            message: "snapshot taken".into(),
            fields: vec![("height".into(), "10".into()), ("path".into(), "/a b".into())],
        };
        assert_eq!(
            event_line(&event),
            "1970-01-01T00:00:00.000Z warn  snapshot_created g3 ns1/v2 snapshot taken height=10 path=\"/a b\""
        );
        let bare =
            Event { group_id: None, namespace_id: None, vault_id: None, message: String::new(), ..event };
        assert_eq!(scope(&bare), "-");
        assert!(event_line(&bare).starts_with("1970-01-01T00:00:00.000Z warn  snapshot_created - height=10"));
    }
}
