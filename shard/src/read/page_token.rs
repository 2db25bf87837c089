//! Pagination tokens of SPEC §5.7: a MAC'd binary blob, base64url-encoded, that pins a listing to
//! one scope, one filter and one scope height. Tokens are opaque to clients; the MAC key is the
//! cluster-wide `_meta:page_token_key`, so any node can continue a pagination another started.

// Errors travel as the wire `Status` (SPEC §4.5), built once at this edge; boxing it would
// only add an allocation to every error path.
#![allow(clippy::result_large_err)]

use crate::constants::PAGE_TOKEN_LAST_KEY_MAX;
use ledger_wire::messages::{ErrorDetail, Status, StatusCode};

pub const PAGE_TOKEN_VERSION: u8 = 1;
pub const PAGE_TOKEN_KEY_LEN: usize = 32;
const MAC_LEN: usize = 16;
const QUERY_HASH_LEN: usize = 8;
/// version + namespace + vault + key length + at_height + query hash + mac.
const FIXED_LEN: usize = 1 + 8 + 8 + 4 + 8 + QUERY_HASH_LEN + MAC_LEN;
pub const MSG_INVALID: &str = "invalid page token";
pub const MSG_MISMATCH: &str = "page token does not match request";
pub const MSG_QUERY_CHANGED: &str = "query parameters changed; start new pagination";

/// The decoded token (SPEC §5.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    pub namespace_id: i64,
    pub vault_id: i64,
    pub last_key: Vec<u8>,
    pub at_height: u64,
    pub query_hash: [u8; QUERY_HASH_LEN],
}

/// First 8 bytes of blake3 over the rkyv encoding of a request's filter fields.
pub fn query_hash<T>(filter: &T) -> [u8; QUERY_HASH_LEN]
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::Error,
        >,
    >,
{
    let mut out = [0u8; QUERY_HASH_LEN];
    // Serializing plain owned structs into a growable buffer cannot fail; an error would still
    // yield a stable (empty-input) hash rather than a panic.
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(filter).map(|v| v.to_vec()).unwrap_or_default();
    out.copy_from_slice(&blake3::hash(&bytes).as_bytes()[..QUERY_HASH_LEN]);
    out
}

impl PageToken {
    fn body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(FIXED_LEN + self.last_key.len());
        b.push(PAGE_TOKEN_VERSION);
        b.extend_from_slice(&self.namespace_id.to_be_bytes());
        b.extend_from_slice(&self.vault_id.to_be_bytes());
        b.extend_from_slice(&(self.last_key.len() as u32).to_be_bytes());
        b.extend_from_slice(&self.last_key);
        b.extend_from_slice(&self.at_height.to_be_bytes());
        b.extend_from_slice(&self.query_hash);
        b
    }

    pub fn encode(&self, key: &[u8; PAGE_TOKEN_KEY_LEN]) -> String {
        let mut b = self.body();
        let mac = mac_of(key, &b);
        b.extend_from_slice(&mac);
        base64url_encode(&b)
    }

    /// Decodes and authenticates a token; every failure is the same `InvalidArgument`.
    pub fn decode(token: &str, key: &[u8; PAGE_TOKEN_KEY_LEN]) -> Result<PageToken, Status> {
        let invalid = || Status::invalid(MSG_INVALID);
        let raw = base64url_decode(token).ok_or_else(invalid)?;
        if raw.len() < FIXED_LEN || raw.len() > FIXED_LEN + PAGE_TOKEN_LAST_KEY_MAX {
            return Err(invalid());
        }
        let (body, mac) = raw.split_at(raw.len() - MAC_LEN);
        if !constant_time_eq(&mac_of(key, body), mac) {
            return Err(invalid());
        }
        let mut r = Reader { buf: body };
        if r.take(1).ok_or_else(invalid)?[0] != PAGE_TOKEN_VERSION {
            return Err(invalid());
        }
        let namespace_id = i64::from_be_bytes(r.array().ok_or_else(invalid)?);
        let vault_id = i64::from_be_bytes(r.array().ok_or_else(invalid)?);
        let key_len = u32::from_be_bytes(r.array().ok_or_else(invalid)?) as usize;
        let last_key = r.take(key_len).ok_or_else(invalid)?.to_vec();
        let at_height = u64::from_be_bytes(r.array().ok_or_else(invalid)?);
        let query_hash: [u8; QUERY_HASH_LEN] = r.array().ok_or_else(invalid)?;
        if !r.buf.is_empty() {
            return Err(invalid());
        }
        Ok(PageToken { namespace_id, vault_id, last_key, at_height, query_hash })
    }

    /// Validation order of SPEC §5.7 after a successful decode: scope, then filter, then height.
    /// `current_height` is the scope height now; historical pages are not served yet (SPEC §8.7
    /// reconstruction is a later issue), so a moved height is `HeightUnavailable`.
    pub fn check(
        &self,
        namespace_id: i64,
        vault_id: i64,
        query_hash: [u8; QUERY_HASH_LEN],
        current_height: Option<u64>,
    ) -> Result<(), Status> {
        if self.namespace_id != namespace_id || self.vault_id != vault_id {
            return Err(Status::invalid(MSG_MISMATCH));
        }
        if self.query_hash != query_hash {
            return Err(Status::invalid(MSG_QUERY_CHANGED));
        }
        if let Some(current) = current_height {
            if self.at_height != current {
                return Err(height_unavailable(self.at_height, current));
            }
        }
        Ok(())
    }
}

/// `FailedPrecondition{HeightUnavailable}`; only the current height is servable for now.
pub fn height_unavailable(requested: u64, oldest_available: u64) -> Status {
    Status {
        code: StatusCode::FailedPrecondition,
        message: format!("height {requested} is not available"),
        leader_hint: None,
        detail: Some(ErrorDetail::HeightUnavailable { requested, oldest_available }),
    }
}

fn mac_of(key: &[u8; PAGE_TOKEN_KEY_LEN], body: &[u8]) -> [u8; MAC_LEN] {
    let mut mac = [0u8; MAC_LEN];
    mac.copy_from_slice(&blake3::keyed_hash(key, body).as_bytes()[..MAC_LEN]);
    mac
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// RFC 4648 §5 base64url without padding.
pub fn base64url_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(B64[((n >> (18 - 6 * i)) & 0x3f) as usize]));
        }
    }
    out
}

pub fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'-' => 62,
                b'_' => 63,
                _ => return None,
            };
            n |= u32::from(v) << (18 - 6 * i);
        }
        let produced = chunk.len() - 1;
        // Non-canonical encodings (stray low bits) are rejected so one blob has one spelling.
        let unused_bits = 24 - 8 * produced;
        if n & ((1u32 << unused_bits) - 1) != 0 && produced < 3 {
            return None;
        }
        for i in 0..produced {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const KEY: [u8; 32] = [7u8; 32];

    fn token() -> PageToken {
        PageToken {
            namespace_id: 3,
            vault_id: 9,
            last_key: b"user:42".to_vec(),
            at_height: 17,
            query_hash: [1; 8],
        }
    }

    /// Base64url round-trips every length mod 3 and rejects foreign alphabets and padding.
    #[test]
    fn t01_base64url_round_trip() {
        for len in 0..40usize {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = base64url_encode(&data);
            assert!(!text.contains('='));
            assert_eq!(base64url_decode(&text).unwrap(), data);
        }
        assert_eq!(base64url_encode(b"\xfb\xff"), "-_8");
        assert!(base64url_decode("ab+/").is_none());
        assert!(base64url_decode("abc=").is_none());
        assert!(base64url_decode("a").is_none());
    }

    /// A token decodes to itself under the same key; a different key, a flipped byte, a
    /// truncation or garbage all give exactly "invalid page token".
    #[test]
    fn t02_token_mac_and_encoding() {
        let t = token();
        let text = t.encode(&KEY);
        assert_eq!(PageToken::decode(&text, &KEY).unwrap(), t);
        let other = [8u8; 32];
        let e = PageToken::decode(&text, &other).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (StatusCode::InvalidArgument, MSG_INVALID));
        let mut raw = base64url_decode(&text).unwrap();
        raw[5] ^= 1;
        let e = PageToken::decode(&base64url_encode(&raw), &KEY).unwrap_err();
        assert_eq!(e.message, MSG_INVALID);
        raw[5] ^= 1;
        raw.pop();
        assert_eq!(PageToken::decode(&base64url_encode(&raw), &KEY).unwrap_err().message, MSG_INVALID);
        assert_eq!(PageToken::decode("!!!", &KEY).unwrap_err().message, MSG_INVALID);
        assert_eq!(PageToken::decode("", &KEY).unwrap_err().message, MSG_INVALID);
    }

    /// A token with a wrong version byte but a valid MAC is still rejected as invalid.
    #[test]
    fn t03_token_version_checked() {
        let mut body = token().body();
        body[0] = 2;
        let mac = mac_of(&KEY, &body);
        body.extend_from_slice(&mac);
        assert_eq!(PageToken::decode(&base64url_encode(&body), &KEY).unwrap_err().message, MSG_INVALID);
    }

    /// `check` applies SPEC §5.7's order: scope mismatch, then query change, then height.
    #[test]
    fn t04_token_check_order() {
        let t = token();
        assert!(t.check(3, 9, [1; 8], Some(17)).is_ok());
        assert_eq!(t.check(3, 8, [2; 8], Some(1)).unwrap_err().message, MSG_MISMATCH);
        assert_eq!(t.check(4, 9, [1; 8], Some(17)).unwrap_err().message, MSG_MISMATCH);
        assert_eq!(t.check(3, 9, [2; 8], Some(1)).unwrap_err().message, MSG_QUERY_CHANGED);
        let e = t.check(3, 9, [1; 8], Some(18)).unwrap_err();
        assert_eq!(e.code, StatusCode::FailedPrecondition);
        assert_eq!(e.detail, Some(ErrorDetail::HeightUnavailable { requested: 17, oldest_available: 18 }));
        assert!(t.check(3, 9, [1; 8], None).is_ok());
    }

    /// The query hash depends on every filter field and on nothing else.
    #[test]
    fn t05_query_hash_covers_filter() {
        #[derive(rkyv::Archive, rkyv::Serialize)]
        struct F {
            a: String,
            b: Option<u64>,
        }
        let h1 = query_hash(&F { a: "x".into(), b: None });
        assert_eq!(h1, query_hash(&F { a: "x".into(), b: None }));
        assert_ne!(h1, query_hash(&F { a: "y".into(), b: None }));
        assert_ne!(h1, query_hash(&F { a: "x".into(), b: Some(0) }));
    }
}
