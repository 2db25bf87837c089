//! BLAKE3 of many 65-byte inputs at once: the state tree's node hashes (`domain ‖ 32 B ‖ 32 B`,
//! SPEC §7.6). One hash is two compressions of a single-chunk input, and the `blake3` crate runs
//! them one at a time; a tree update has thousands of independent node hashes per level, so this
//! runs [`LANES`] of them side by side, one input per vector lane (word `w` of every lane in one
//! array), which the compiler turns into AVX-512, AVX2 or SSE2 instructions, whichever the CPU has
//! (chosen at run time). AVX2 matters: on this project's AVX2-only machines the SSE2 build of the
//! same code took 118 ns a hash, no faster than one `blake3::hash`, and the AVX2 build 44 ns (D63).
//! The result is exactly `blake3::hash(input)`; the tests check every build the CPU has against
//! the crate.

use crate::types::Hash;

/// Inputs hashed together.
pub const LANES: usize = 16;
/// Bytes of one input: a domain byte and two 32-byte hashes.
pub const INPUT_BYTES: usize = 65;
/// Fewer inputs than this are hashed one by one: a group costs as much as ~6 single hashes
/// whatever its size (measured: 16 lanes in ~650 ns, one `blake3::hash` of 65 bytes ~110 ns).
const GROUP_INPUTS_MIN: usize = 6;

type Lanes = [u32; LANES];

const IV: [u32; 8] =
    [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19];
const CHUNK_START: u32 = 1;
const CHUNK_END: u32 = 2;
const ROOT: u32 = 8;
const MSG_PERMUTATION: [usize; 16] = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8];

/// Which message word each round reads at each position (the permutation applied round by round,
/// precomputed so that no round moves the message words).
const SCHEDULE: [[usize; 16]; 7] = {
    let mut schedule = [[0usize; 16]; 7];
    let mut i = 0;
    while i < 16 {
        schedule[0][i] = i;
        i += 1;
    }
    let mut round = 1;
    while round < 7 {
        let mut i = 0;
        while i < 16 {
            schedule[round][i] = schedule[round - 1][MSG_PERMUTATION[i]];
            i += 1;
        }
        round += 1;
    }
    schedule
};

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn g(s: &mut [Lanes; 16], a: usize, b: usize, c: usize, d: usize, mx: &Lanes, my: &Lanes) {
    for l in 0..LANES {
        s[a][l] = s[a][l].wrapping_add(s[b][l]).wrapping_add(mx[l]);
        s[d][l] = (s[d][l] ^ s[a][l]).rotate_right(16);
        s[c][l] = s[c][l].wrapping_add(s[d][l]);
        s[b][l] = (s[b][l] ^ s[c][l]).rotate_right(12);
        s[a][l] = s[a][l].wrapping_add(s[b][l]).wrapping_add(my[l]);
        s[d][l] = (s[d][l] ^ s[a][l]).rotate_right(8);
        s[c][l] = s[c][l].wrapping_add(s[d][l]);
        s[b][l] = (s[b][l] ^ s[c][l]).rotate_right(7);
    }
}

/// The BLAKE3 compression function of block `m` (chunk counter 0) over chaining values `cv`, per
/// lane; returns the new chaining values (the first 8 output words).
#[inline(always)]
fn compress(cv: &[Lanes; 8], m: &[Lanes; 16], block_len: u32, flags: u32) -> [Lanes; 8] {
    let mut s: [Lanes; 16] = [[0; LANES]; 16];
    s[..8].copy_from_slice(cv);
    for i in 0..4 {
        s[8 + i] = [IV[i]; LANES];
    }
    // s[12], s[13]: the 64-bit chunk counter, 0 for a one-chunk input.
    s[14] = [block_len; LANES];
    s[15] = [flags; LANES];
    for round in &SCHEDULE {
        g(&mut s, 0, 4, 8, 12, &m[round[0]], &m[round[1]]);
        g(&mut s, 1, 5, 9, 13, &m[round[2]], &m[round[3]]);
        g(&mut s, 2, 6, 10, 14, &m[round[4]], &m[round[5]]);
        g(&mut s, 3, 7, 11, 15, &m[round[6]], &m[round[7]]);
        g(&mut s, 0, 5, 10, 15, &m[round[8]], &m[round[9]]);
        g(&mut s, 1, 6, 11, 12, &m[round[10]], &m[round[11]]);
        g(&mut s, 2, 7, 8, 13, &m[round[12]], &m[round[13]]);
        g(&mut s, 3, 4, 9, 14, &m[round[14]], &m[round[15]]);
    }
    let mut out = [[0; LANES]; 8];
    for i in 0..8 {
        for l in 0..LANES {
            out[i][l] = s[i][l] ^ s[i + 8][l];
        }
    }
    out
}

/// Up to [`LANES`] inputs: `inputs.len() == out.len() <= LANES`.
#[inline(always)]
fn hash_group(inputs: &[[u8; INPUT_BYTES]], out: &mut [Hash]) {
    debug_assert!(inputs.len() == out.len() && inputs.len() <= LANES);
    // First block: bytes 0..64. Second block: byte 64, zero-padded.
    let mut first: [Lanes; 16] = [[0; LANES]; 16];
    let mut second: [Lanes; 16] = [[0; LANES]; 16];
    for (l, input) in inputs.iter().enumerate() {
        for (w, word) in input[..64].chunks_exact(4).enumerate() {
            first[w][l] = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        }
        second[0][l] = u32::from(input[64]);
    }
    let cv = compress(
        &[IV[0], IV[1], IV[2], IV[3], IV[4], IV[5], IV[6], IV[7]].map(|w| [w; LANES]),
        &first,
        64,
        CHUNK_START,
    );
    let hash = compress(&cv, &second, 1, CHUNK_END | ROOT);
    for (l, digest) in out.iter_mut().enumerate() {
        for (w, bytes) in digest.chunks_exact_mut(4).enumerate() {
            bytes.copy_from_slice(&hash[w][l].to_le_bytes());
        }
    }
}

/// Whole groups of [`LANES`]; inlined into each instruction-set variant below.
#[inline(always)]
fn hash_groups(inputs: &[[u8; INPUT_BYTES]], out: &mut [Hash]) {
    for (inputs, out) in inputs.chunks(LANES).zip(out.chunks_mut(LANES)) {
        hash_group(inputs, out);
    }
}

fn hash_all_portable(inputs: &[[u8; INPUT_BYTES]], out: &mut [Hash]) {
    hash_groups(inputs, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
fn hash_all_avx512(inputs: &[[u8; INPUT_BYTES]], out: &mut [Hash]) {
    hash_groups(inputs, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn hash_all_avx2(inputs: &[[u8; INPUT_BYTES]], out: &mut [Hash]) {
    hash_groups(inputs, out);
}

fn hash_one_by_one(inputs: &[[u8; INPUT_BYTES]], out: &mut [Hash]) {
    for (input, out) in inputs.iter().zip(out.iter_mut()) {
        *out = *blake3::hash(input).as_bytes();
    }
}

/// `out[i] = blake3::hash(&inputs[i])` for every `i`.
pub fn hash_all(inputs: &[[u8; INPUT_BYTES]], out: &mut [Hash]) {
    assert_eq!(inputs.len(), out.len(), "one output per input");
    // Whole groups together, a small remainder one by one.
    let grouped = if inputs.len() % LANES >= GROUP_INPUTS_MIN {
        inputs.len()
    } else {
        inputs.len() - inputs.len() % LANES
    };
    let (inputs, rest) = inputs.split_at(grouped);
    let (out, rest_out) = out.split_at_mut(grouped);
    hash_one_by_one(rest, rest_out);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl") {
        // SAFETY: the CPU has the features the function was compiled for (checked just above).
        unsafe { hash_all_avx512(inputs, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: as above, for AVX2.
        unsafe { hash_all_avx2(inputs, out) };
        return;
    }
    hash_all_portable(inputs, out);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn expected(inputs: &[[u8; INPUT_BYTES]]) -> Vec<Hash> {
        inputs.iter().map(|input| *blake3::hash(input).as_bytes()).collect()
    }

    #[test]
    fn t01_zero_and_patterned_inputs_hash_as_blake3_does() {
        let inputs: Vec<[u8; INPUT_BYTES]> = (0..=LANES as u8 * 2 + 3)
            .map(|i| std::array::from_fn(|j| i.wrapping_mul(31).wrapping_add(j as u8)))
            .collect();
        for n in [0, 1, LANES - 1, LANES, LANES + 1, inputs.len()] {
            let mut out = vec![[0u8; 32]; n];
            hash_all(&inputs[..n], &mut out);
            assert_eq!(out, expected(&inputs[..n]), "{n} inputs");
            let mut portable = vec![[0u8; 32]; n];
            hash_all_portable(&inputs[..n], &mut portable);
            assert_eq!(portable, out, "{n} inputs, portable");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                let mut avx2 = vec![[0u8; 32]; n];
                // SAFETY: the CPU has AVX2 (checked just above).
                unsafe { hash_all_avx2(&inputs[..n], &mut avx2) };
                assert_eq!(avx2, out, "{n} inputs, AVX2");
            }
        }
    }

    proptest! {
        #[test]
        fn p01_random_inputs_hash_as_blake3_does(
            inputs in proptest::collection::vec(proptest::array::uniform32(any::<u8>()), 0..40),
            tails in proptest::collection::vec(proptest::array::uniform32(any::<u8>()), 40),
            domains in proptest::collection::vec(any::<u8>(), 40),
        ) {
            let inputs: Vec<[u8; INPUT_BYTES]> = inputs
                .iter()
                .enumerate()
                .map(|(i, head)| {
                    let mut input = [0u8; INPUT_BYTES];
                    input[..32].copy_from_slice(head);
                    input[32..64].copy_from_slice(&tails[i]);
                    input[64] = domains[i];
                    input
                })
                .collect();
            let mut out = vec![[0u8; 32]; inputs.len()];
            hash_all(&inputs, &mut out);
            prop_assert_eq!(out, expected(&inputs));
        }
    }
}
