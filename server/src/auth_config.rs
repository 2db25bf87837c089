//! `auth_tokens` (SPEC §11.1, D42) as read from the TOML file or `INFERADB__LEDGER__AUTH_TOKENS`:
//!
//! ```toml
//! [auth_tokens]
//! node = "a-long-random-secret"          # simple form: everything, the peer role included
//! [auth_tokens.app]
//! secret = "another-long-secret"
//! namespaces = [1, 7]                    # or "*" (the default)
//! access = "read-write"                  # or "read" (the default)
//! admin = false                          # registry and cluster operations
//! peer = false                           # the cluster's node credential (implies everything)
//! ```
//!
//! Errors name the token and the key, never a secret.

use ledger_router::auth::{AuthTable, Namespaces, TokenSpec};

/// Shortest secret accepted: a token is a password that is never typed, so it can be long.
pub const SECRET_MIN_CHARS: usize = 16;
/// Longest token id (it becomes the actor `client:{id}` of every write it makes).
pub const ID_MAX_CHARS: usize = 64;

/// The configured tokens; empty = no authentication. `Debug` shows the ids only.
#[derive(Clone, PartialEq, Default)]
pub struct AuthTokens(pub Vec<TokenSpec>);

impl std::fmt::Debug for AuthTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|t| t.id.as_str())).finish()
    }
}

impl AuthTokens {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn table(&self) -> AuthTable {
        AuthTable::new(&self.0)
    }

    /// The secret this node presents to its peers: the peer token with the smallest id.
    pub fn peer_secret(&self) -> Option<String> {
        self.0.iter().filter(|t| t.peer).min_by(|a, b| a.id.cmp(&b.id)).map(|t| t.secret.clone())
    }

    /// From the TOML value of `auth_tokens`.
    pub fn from_toml(value: &toml::Value) -> Result<AuthTokens, String> {
        let toml::Value::Table(entries) = value else {
            return Err("must be a table of `id = \"secret\"` or `[auth_tokens.ID]` entries".into());
        };
        let mut tokens = Vec::new();
        for (id, entry) in entries {
            tokens.push(token(id, entry)?);
        }
        tokens.sort_by(|a, b| a.id.cmp(&b.id));
        for (i, a) in tokens.iter().enumerate() {
            if let Some(b) = tokens[i + 1..].iter().find(|b| b.secret == a.secret) {
                return Err(format!("tokens `{}` and `{}` have the same secret", a.id, b.id));
            }
        }
        if !tokens.is_empty() && !tokens.iter().any(|t| t.peer) {
            return Err("no peer token: nodes authenticate to each other with one (`id = \"secret\"`, \
                        or `peer = true`)"
                .into());
        }
        Ok(AuthTokens(tokens))
    }

    /// From the environment variable: the inside of a TOML inline table,
    /// `node = "secret", app = { secret = "…", access = "read" }`.
    pub fn from_env(text: &str) -> Result<AuthTokens, String> {
        let document: toml::Table = toml::from_str(&format!("auth_tokens = {{ {text} }}"))
            .map_err(|e| format!("not a TOML inline table body: {}", e.message()))?;
        let value = document.get("auth_tokens").ok_or("not a TOML inline table body")?;
        AuthTokens::from_toml(value)
    }
}

fn token(id: &str, entry: &toml::Value) -> Result<TokenSpec, String> {
    let valid_id = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if id.is_empty() || id.chars().count() > ID_MAX_CHARS || !id.chars().all(valid_id) {
        return Err(format!("token id {id:?}: 1 to {ID_MAX_CHARS} characters of A-Z a-z 0-9 _ - ."));
    }
    let spec = match entry {
        toml::Value::String(secret) => TokenSpec::full(id, secret),
        toml::Value::Table(fields) => {
            for key in fields.keys() {
                if !["secret", "namespaces", "access", "admin", "peer"].contains(&key.as_str()) {
                    return Err(format!(
                        "token `{id}`: unknown key `{key}` (secret, namespaces, access, admin, peer)"
                    ));
                }
            }
            let Some(toml::Value::String(secret)) = fields.get("secret") else {
                return Err(format!("token `{id}`: `secret` (a string) is required"));
            };
            let namespaces = match fields.get("namespaces") {
                None => Namespaces::All,
                Some(toml::Value::String(all)) if all == "*" => Namespaces::All,
                Some(toml::Value::Array(ids)) if !ids.is_empty() => Namespaces::Only(
                    ids.iter()
                        .map(|v| v.as_integer().filter(|id| *id > 0))
                        .collect::<Option<Vec<i64>>>()
                        .ok_or_else(|| format!("token `{id}`: `namespaces` holds namespace ids (> 0)"))?,
                ),
                Some(_) => {
                    return Err(format!("token `{id}`: `namespaces` is \"*\" or a non-empty list of ids"))
                }
            };
            let write = match fields.get("access").map(|v| v.as_str()) {
                None | Some(Some("read")) => false,
                Some(Some("read-write")) => true,
                Some(_) => return Err(format!("token `{id}`: `access` is \"read\" or \"read-write\"")),
            };
            let flag = |key: &str| match fields.get(key) {
                None => Ok(false),
                Some(toml::Value::Boolean(value)) => Ok(*value),
                Some(_) => Err(format!("token `{id}`: `{key}` is true or false")),
            };
            TokenSpec {
                id: id.to_string(),
                secret: secret.clone(),
                namespaces,
                write,
                admin: flag("admin")?,
                peer: flag("peer")?,
            }
        }
        _ => return Err(format!("token `{id}`: a secret string or a table")),
    };
    if spec.secret.chars().count() < SECRET_MIN_CHARS || spec.secret.trim() != spec.secret {
        return Err(format!(
            "token `{id}`: the secret must have at least {SECRET_MIN_CHARS} characters and no \
             surrounding whitespace"
        ));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Result<AuthTokens, String> {
        let table: toml::Table = toml::from_str(text).unwrap();
        AuthTokens::from_toml(&table["auth_tokens"])
    }

    #[test]
    fn t01_simple_and_table_forms() {
        let tokens = parse(
            r#"
            [auth_tokens]
            node = "node-secret-0123456789"
            [auth_tokens.app]
            secret = "app-secret-0123456789"
            namespaces = [1, 7]
            access = "read-write"
            [auth_tokens.ops]
            secret = "ops-secret-0123456789"
            admin = true
            "#,
        )
        .unwrap();
        let ids: Vec<&str> = tokens.0.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["app", "node", "ops"]);
        assert_eq!(tokens.0[0].namespaces, Namespaces::Only(vec![1, 7]));
        assert!(tokens.0[0].write && !tokens.0[0].admin && !tokens.0[0].peer);
        assert_eq!(tokens.0[1], TokenSpec::full("node", "node-secret-0123456789"));
        assert!(!tokens.0[2].write && tokens.0[2].admin && tokens.0[2].namespaces == Namespaces::All);
        assert_eq!(tokens.peer_secret().as_deref(), Some("node-secret-0123456789"));
        assert_eq!(format!("{tokens:?}"), r#"["app", "node", "ops"]"#);
    }

    #[test]
    fn t02_smallest_peer_id_is_presented() {
        let tokens = parse(
            r#"auth_tokens = { b = "b-secret-0123456789", a = { secret = "a-secret-0123456789", peer = true }, "0" = { secret = "z-secret-0123456789" } }"#,
        )
        .unwrap();
        assert_eq!(tokens.peer_secret().as_deref(), Some("a-secret-0123456789"));
        let env = AuthTokens::from_env(r#"node = "node-secret-0123456789""#).unwrap();
        assert_eq!(env.0, vec![TokenSpec::full("node", "node-secret-0123456789")]);
        assert!(AuthTokens::default().peer_secret().is_none());
    }

    #[test]
    fn t03_bad_entries_are_named_without_their_secret() {
        for (text, needle) in [
            (r#"auth_tokens = { a = "short" }"#, "token `a`: the secret must have at least 16"),
            (r#"auth_tokens = { "a b" = "long-enough-secret-0" }"#, "token id \"a b\""),
            (
                r#"auth_tokens = { a = { secret = "long-enough-secret-0", scope = 1 } }"#,
                "unknown key `scope`",
            ),
            (r#"auth_tokens = { a = { namespaces = "*" } }"#, "`secret` (a string) is required"),
            (r#"auth_tokens = { a = { secret = "long-enough-secret-0", namespaces = [] } }"#, "non-empty"),
            (r#"auth_tokens = { a = { secret = "long-enough-secret-0", access = "write" } }"#, "`access`"),
            (r#"auth_tokens = { a = { secret = "long-enough-secret-0", admin = 1 } }"#, "`admin` is true"),
            (r#"auth_tokens = { a = "long-enough-secret-0", b = "long-enough-secret-0" }"#, "same secret"),
            (r#"auth_tokens = { a = { secret = "long-enough-secret-0" } }"#, "no peer token"),
            (r#"auth_tokens = 3"#, "must be a table"),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains(needle), "{text}: {error}");
            assert!(!error.contains("long-enough") && !error.contains("short"), "{error}");
        }
        assert!(AuthTokens::from_env("node = ").unwrap_err().starts_with("not a TOML"));
    }
}
