//! Stateless validation of client writes (SPEC §3.4, §3.6, §3.7, §6.3): limits, relationship
//! syntax, operations not allowed in a scope, and reserved keys. It runs at intake, before a
//! transaction can reach a block, so apply never has to reject malformed input.

use crate::constants::*;
pub use crate::error::ValidationError;
use crate::types::Operation;

/// Reserved in every namespace (SPEC §3.7).
pub const META_KEY_PREFIX: &str = "_meta:";
/// Registry key prefixes reserved in namespace 0 (SPEC §3.7, §10.4).
pub const SYSTEM_REGISTRY_PREFIXES: [&str; 4] = ["node:", "ns:", "ns_name:", "group:"];
/// Prefix of relationship rows' local keys (SPEC §3.4).
pub const RELATIONSHIP_KEY_PREFIX: &str = "rel:";

fn invalid(message: String) -> ValidationError {
    ValidationError::InvalidArgument(message)
}

/// [`validate_client_operations_with_limit`] with the default `max_ops_per_tx`.
pub fn validate_client_operations(
    ops: &[Operation],
    namespace_scope: bool,
    system_namespace: bool,
) -> Result<(), ValidationError> {
    validate_client_operations_with_limit(ops, namespace_scope, system_namespace, OPS_PER_TX_MAX_DEFAULT)
}

/// Check a client's operations for one scope; the first violation wins.
/// `namespace_scope`: the write targets vault slot 0 (relationships not allowed);
/// `system_namespace`: the namespace is `_system` (registry keys reserved).
pub fn validate_client_operations_with_limit(
    ops: &[Operation],
    namespace_scope: bool,
    system_namespace: bool,
    ops_max: usize,
) -> Result<(), ValidationError> {
    if ops.is_empty() {
        return Err(invalid("a transaction needs at least one operation".into()));
    }
    if ops.len() > ops_max {
        return Err(invalid(format!("{} operations exceed the limit of {ops_max}", ops.len())));
    }
    for op in ops {
        match op {
            Operation::SetEntity { key, value, .. } => {
                validate_entity_key(key, namespace_scope, system_namespace)?;
                if value.len() > VALUE_BYTES_MAX {
                    return Err(invalid(format!(
                        "value of {key:?} has {} bytes, more than {VALUE_BYTES_MAX}",
                        value.len()
                    )));
                }
            }
            Operation::DeleteEntity { key } => validate_entity_key(key, namespace_scope, system_namespace)?,
            Operation::ExpireEntity { .. } => {
                return Err(invalid("ExpireEntity is produced only by the server's GC".into()));
            }
            Operation::CreateRelationship { resource, relation, subject }
            | Operation::DeleteRelationship { resource, relation, subject } => {
                if namespace_scope {
                    return Err(invalid("relationship operations need a vault".into()));
                }
                validate_relationship(resource, relation, subject)?;
            }
        }
    }
    Ok(())
}

/// Entity key: 1..=1024 bytes, not reserved (SPEC §3.6, §3.7). In a vault a key must not start
/// with `rel:`: such a key would share its state-tree leaf (`H(local_key)`) with a relationship row.
pub fn validate_entity_key(
    key: &str,
    namespace_scope: bool,
    system_namespace: bool,
) -> Result<(), ValidationError> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(invalid(format!("key length {} not in 1..={KEY_BYTES_MAX}", key.len())));
    }
    if key.starts_with(META_KEY_PREFIX) {
        return Err(ValidationError::PermissionDenied(format!("key {key:?} is reserved for the system")));
    }
    if system_namespace && SYSTEM_REGISTRY_PREFIXES.iter().any(|p| key.starts_with(p)) {
        return Err(ValidationError::PermissionDenied(format!("key {key:?} is a registry key of _system")));
    }
    if !namespace_scope && key.starts_with(RELATIONSHIP_KEY_PREFIX) {
        return Err(invalid(format!("entity key {key:?} collides with relationship keys (rel:)")));
    }
    Ok(())
}

/// Relationship tuple syntax of SPEC §3.4 (so that `rel:{resource}#{relation}@{subject}` parses
/// uniquely).
pub fn validate_relationship(resource: &str, relation: &str, subject: &str) -> Result<(), ValidationError> {
    if resource.len() > RESOURCE_BYTES_MAX {
        return Err(invalid(format!(
            "resource has {} bytes, more than {RESOURCE_BYTES_MAX}",
            resource.len()
        )));
    }
    if !resource.contains(':') || resource.contains('@') || resource.contains('#') {
        return Err(invalid(format!("resource {resource:?} must be type:id without '@' or '#'")));
    }
    if relation.is_empty() || relation.len() > RELATION_BYTES_MAX {
        return Err(invalid(format!("relation length {} not in 1..={RELATION_BYTES_MAX}", relation.len())));
    }
    if relation.contains(['#', '@', ':']) {
        return Err(invalid(format!("relation {relation:?} must not contain '#', '@' or ':'")));
    }
    if subject.len() > SUBJECT_BYTES_MAX {
        return Err(invalid(format!("subject has {} bytes, more than {SUBJECT_BYTES_MAX}", subject.len())));
    }
    if !subject.contains(':') || subject.contains('@') || subject.matches('#').count() > 1 {
        return Err(invalid(format!("subject {subject:?} must be type:id or type:id#relation without '@'")));
    }
    Ok(())
}

/// Client id: 1..=256 bytes (SPEC §3.6).
pub fn validate_client_id(client_id: &str) -> Result<(), ValidationError> {
    if client_id.is_empty() || client_id.len() > CLIENT_ID_BYTES_MAX {
        return Err(invalid(format!(
            "client_id length {} not in 1..={CLIENT_ID_BYTES_MAX}",
            client_id.len()
        )));
    }
    Ok(())
}

/// Sequence 0 is never valid (SPEC §6.3).
pub fn validate_sequence(sequence: u64) -> Result<(), ValidationError> {
    if sequence == 0 {
        return Err(invalid("sequence must be at least 1".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, len: usize) -> Operation {
        Operation::SetEntity { key: key.into(), value: vec![0; len], expires_at: None, condition: None }
    }

    fn rel(resource: &str, relation: &str, subject: &str) -> Operation {
        Operation::CreateRelationship {
            resource: resource.into(),
            relation: relation.into(),
            subject: subject.into(),
        }
    }

    fn is_invalid(r: Result<(), ValidationError>) -> bool {
        matches!(r, Err(ValidationError::InvalidArgument(_)))
    }

    fn is_denied(r: Result<(), ValidationError>) -> bool {
        matches!(r, Err(ValidationError::PermissionDenied(_)))
    }

    #[test]
    fn t10_limits() {
        // §3.6 limits at and just past each boundary.
        assert!(is_invalid(validate_client_operations(&[], false, false)));
        assert!(validate_client_operations(&[set(&"k".repeat(1024), VALUE_BYTES_MAX)], false, false).is_ok());
        assert!(is_invalid(validate_client_operations(&[set(&"k".repeat(1025), 0)], false, false)));
        assert!(is_invalid(validate_client_operations(&[set("", 0)], false, false)));
        assert!(is_invalid(validate_client_operations(&[set("k", VALUE_BYTES_MAX + 1)], false, false)));
        let many = vec![set("k", 0); OPS_PER_TX_MAX_DEFAULT];
        assert!(validate_client_operations(&many, false, false).is_ok());
        let too_many = vec![set("k", 0); OPS_PER_TX_MAX_DEFAULT + 1];
        assert!(is_invalid(validate_client_operations(&too_many, false, false)));
        assert!(is_invalid(validate_client_operations_with_limit(&many[..3], false, false, 2)));
        assert!(validate_client_id(&"c".repeat(256)).is_ok());
        assert!(is_invalid(validate_client_id(&"c".repeat(257))));
        assert!(is_invalid(validate_client_id("")));
        assert!(is_invalid(validate_sequence(0)));
        assert!(validate_sequence(1).is_ok());
    }

    #[test]
    fn t11_relationship_syntax() {
        // §3.4 syntax: ':' required, '@' forbidden, '#' forbidden in resource, ≤ 1 in subject.
        fn ok(r: &str, l: &str, s: &str) -> bool {
            validate_client_operations(&[rel(r, l, s)], false, false).is_ok()
        }
        assert!(ok("doc:1", "viewer", "user:1"));
        assert!(ok("doc:1", "viewer", "group:eng#member"));
        assert!(ok(&format!("d:{}", "x".repeat(510)), &"r".repeat(64), &format!("u:{}", "y".repeat(510))));
        assert!(!ok(&format!("d:{}", "x".repeat(511)), "r", "u:1"));
        assert!(!ok("d:1", "r", &format!("u:{}", "y".repeat(511))));
        assert!(!ok("doc1", "viewer", "user:1"));
        assert!(!ok("doc:1#x", "viewer", "user:1"));
        assert!(!ok("doc:1@x", "viewer", "user:1"));
        assert!(!ok("doc:1", "", "user:1"));
        assert!(!ok("doc:1", &"r".repeat(65), "user:1"));
        assert!(!ok("doc:1", "vi:ewer", "user:1"));
        assert!(!ok("doc:1", "vi#ewer", "user:1"));
        assert!(!ok("doc:1", "vi@ewer", "user:1"));
        assert!(!ok("doc:1", "viewer", "user1"));
        assert!(!ok("doc:1", "viewer", "user:1@x"));
        assert!(!ok("doc:1", "viewer", "group:a#b#c"));
        // Relationship ops in a namespace scope.
        assert!(is_invalid(validate_client_operations(&[rel("doc:1", "viewer", "user:1")], true, false)));
        let delete = Operation::DeleteRelationship {
            resource: "doc:1".into(),
            relation: "viewer".into(),
            subject: "user:1".into(),
        };
        assert!(is_invalid(validate_client_operations(&[delete], true, false)));
    }

    #[test]
    fn t12_reserved_and_forbidden() {
        // §3.7 reserved keys ⇒ PermissionDenied; ExpireEntity from clients ⇒ InvalidArgument.
        assert!(is_denied(validate_client_operations(&[set("_meta:seq", 0)], false, false)));
        assert!(is_denied(validate_client_operations(&[set("_meta:x", 0)], true, true)));
        let del = Operation::DeleteEntity { key: "_meta:x".into() };
        assert!(is_denied(validate_client_operations(&[del], true, false)));
        for key in ["node:1", "ns:2", "ns_name:acme", "group:3"] {
            assert!(is_denied(validate_client_operations(&[set(key, 0)], true, true)), "{key}");
            assert!(validate_client_operations(&[set(key, 0)], true, false).is_ok(), "{key}");
            assert!(validate_client_operations(&[set(key, 0)], false, false).is_ok(), "{key}");
        }
        assert!(validate_client_operations(&[set("user:1", 0)], true, true).is_ok());
        let expire = Operation::ExpireEntity { key: "k".into(), expired_at: 5 };
        assert!(is_invalid(validate_client_operations(&[expire], true, false)));
        assert!(is_invalid(validate_client_operations(&[set("rel:a:b#c@d:e", 0)], false, false)));
        assert!(validate_client_operations(&[set("rel:a:b#c@d:e", 0)], true, false).is_ok());
        // The first violation decides: a valid op before an invalid one does not hide it.
        let ops = [set("ok", 0), set("_meta:x", 0)];
        assert!(is_denied(validate_client_operations(&ops, false, false)));
    }
}
