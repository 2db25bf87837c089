//! rkyv encoding of the values the shard keeps in redb: the Raft log and vote (`raft/log_store`),
//! the checkpoint (`storage/checkpoint`), the archive and snapshots. A shared helper of the
//! storage layers, so that none of them imports another only for these two functions.

use crate::error::ShardError;

/// A value the shard can encode with rkyv into an `AlignedVec` (one name for the bound).
pub trait Encodable:
    for<'a> rkyv::Serialize<
    rkyv::api::high::HighSerializer<
        rkyv::util::AlignedVec,
        rkyv::ser::allocator::ArenaHandle<'a>,
        rkyv::rancor::BoxedError,
    >,
>
{
}

impl<T> Encodable for T where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::BoxedError,
        >,
    >
{
}

/// Encodes `value` with rkyv.
pub fn encode<T: Encodable>(value: &T) -> Vec<u8> {
    let mut buf = rkyv::util::AlignedVec::new();
    encode_in(value, &mut buf).to_vec()
}

/// Encodes `value` with rkyv into `buf` (cleared first) and returns its bytes: a caller that
/// encodes many values in a row reuses one buffer instead of growing a new one and copying it
/// out for each (`encode`).
pub fn encode_in<'b, T: Encodable>(value: &T, buf: &'b mut rkyv::util::AlignedVec) -> &'b [u8] {
    let mut taken = std::mem::take(buf);
    taken.clear();
    match rkyv::api::high::to_bytes_in::<_, rkyv::rancor::BoxedError>(value, taken) {
        Ok(bytes) => *buf = bytes,
        // Serializing owned, in-memory values into a growable buffer has no failure mode short of
        // allocation failure, which aborts anyway.
        Err(e) => panic!("rkyv serialization of an in-memory value failed: {e}"),
    }
    buf.as_slice()
}

/// Decodes rkyv bytes of any alignment (redb values are not aligned: copy into an `AlignedVec`).
pub fn decode<T>(what: &'static str, bytes: &[u8]) -> Result<T, ShardError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::BoxedError>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::BoxedError>>,
{
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<T, rkyv::rancor::BoxedError>(&aligned)
        .map_err(|source| ShardError::Codec { what, source })
}
