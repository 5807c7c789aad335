//! Two SHA-256 compressions at once: the leaf and node hashes of a batch are independent, and one
//! SHA-NI stream waits on each `sha256rnds2` result (latency, not throughput, bounds it), so
//! interleaving two streams instruction by instruction keeps the unit busy. Falls back to two
//! calls of `sha2`'s compression function where the CPU has no SHA-NI. Equal to the one-stream
//! result bit for bit (tests below, and the property tests of the tree).

/// Compresses `blocks_a` into `state_a` and `blocks_b` into `state_b` (the same number of
/// blocks each).
pub(crate) fn compress_x2(
    state_a: &mut [u32; 8],
    blocks_a: &[[u8; 64]],
    state_b: &mut [u32; 8],
    blocks_b: &[[u8; 64]],
) {
    assert_eq!(blocks_a.len(), blocks_b.len(), "both lanes have the same number of blocks");
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("sse4.1")
            && std::arch::is_x86_feature_detected!("ssse3")
        {
            // SAFETY: the CPU has the features the function is compiled for (checked above).
            unsafe { shani::compress_x2(state_a, blocks_a, state_b, blocks_b) };
            return;
        }
    }
    one_by_one(state_a, blocks_a);
    one_by_one(state_b, blocks_b);
}

fn one_by_one(state: &mut [u32; 8], blocks: &[[u8; 64]]) {
    for block in blocks {
        sha2::compress256(state, &[(*block).into()]);
    }
}

#[cfg(target_arch = "x86_64")]
mod shani {
    use core::arch::x86_64::*;

    /// SHA-256 round constants, four per group (FIPS 180-4 §4.2.2).
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ];

    /// One lane's working state: the state words in SHA-NI's (ABEF, CDGH) order and the message
    /// schedule's last four quarter-words.
    struct Lane {
        abef: __m128i,
        cdgh: __m128i,
        w: [__m128i; 4],
    }

    #[inline(always)]
    unsafe fn load_state(state: &[u32; 8]) -> (__m128i, __m128i) {
        let ptr = state.as_ptr() as *const __m128i;
        let dcba = _mm_loadu_si128(ptr);
        let efgh = _mm_loadu_si128(ptr.add(1));
        let cdab = _mm_shuffle_epi32(dcba, 0xB1);
        let efgh = _mm_shuffle_epi32(efgh, 0x1B);
        (_mm_alignr_epi8(cdab, efgh, 8), _mm_blend_epi16(efgh, cdab, 0xF0))
    }

    #[inline(always)]
    unsafe fn store_state(state: &mut [u32; 8], abef: __m128i, cdgh: __m128i) {
        let feba = _mm_shuffle_epi32(abef, 0x1B);
        let dchg = _mm_shuffle_epi32(cdgh, 0xB1);
        let ptr = state.as_mut_ptr() as *mut __m128i;
        _mm_storeu_si128(ptr, _mm_blend_epi16(feba, dchg, 0xF0));
        _mm_storeu_si128(ptr.add(1), _mm_alignr_epi8(dchg, feba, 8));
    }

    #[inline(always)]
    unsafe fn load_block(block: &[u8; 64], mask: __m128i) -> [__m128i; 4] {
        let ptr = block.as_ptr() as *const __m128i;
        [
            _mm_shuffle_epi8(_mm_loadu_si128(ptr), mask),
            _mm_shuffle_epi8(_mm_loadu_si128(ptr.add(1)), mask),
            _mm_shuffle_epi8(_mm_loadu_si128(ptr.add(2)), mask),
            _mm_shuffle_epi8(_mm_loadu_si128(ptr.add(3)), mask),
        ]
    }

    /// Four rounds of group `g` on one lane (scheduling the group's words first from `g == 4` on).
    #[inline(always)]
    unsafe fn rounds4(lane: &mut Lane, g: usize) {
        if g >= 4 {
            // W[g] from W[g-4..g]: the four words before live in lane.w[(g - 4..g) % 4].
            let (w0, w1, w2, w3) =
                (lane.w[g % 4], lane.w[(g + 1) % 4], lane.w[(g + 2) % 4], lane.w[(g + 3) % 4]);
            let t1 = _mm_sha256msg1_epu32(w0, w1);
            let t2 = _mm_alignr_epi8(w3, w2, 4);
            lane.w[g % 4] = _mm_sha256msg2_epu32(_mm_add_epi32(t1, t2), w3);
        }
        let k = _mm_loadu_si128(K.as_ptr().add(4 * g) as *const __m128i);
        let t1 = _mm_add_epi32(lane.w[g % 4], k);
        lane.cdgh = _mm_sha256rnds2_epu32(lane.cdgh, lane.abef, t1);
        lane.abef = _mm_sha256rnds2_epu32(lane.abef, lane.cdgh, _mm_shuffle_epi32(t1, 0x0E));
    }

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn compress_x2(
        state_a: &mut [u32; 8],
        blocks_a: &[[u8; 64]],
        state_b: &mut [u32; 8],
        blocks_b: &[[u8; 64]],
    ) {
        let mask = _mm_set_epi64x(0x0C0D_0E0F_0809_0A0Bu64 as i64, 0x0405_0607_0001_0203u64 as i64);
        let (abef, cdgh) = load_state(state_a);
        let mut a = Lane { abef, cdgh, w: [_mm_setzero_si128(); 4] };
        let (abef, cdgh) = load_state(state_b);
        let mut b = Lane { abef, cdgh, w: [_mm_setzero_si128(); 4] };
        for (block_a, block_b) in blocks_a.iter().zip(blocks_b) {
            let (saved_a, saved_b) = ((a.abef, a.cdgh), (b.abef, b.cdgh));
            a.w = load_block(block_a, mask);
            b.w = load_block(block_b, mask);
            for g in 0..16 {
                rounds4(&mut a, g);
                rounds4(&mut b, g);
            }
            a.abef = _mm_add_epi32(a.abef, saved_a.0);
            a.cdgh = _mm_add_epi32(a.cdgh, saved_a.1);
            b.abef = _mm_add_epi32(b.abef, saved_b.0);
            b.cdgh = _mm_add_epi32(b.cdgh, saved_b.1);
        }
        store_state(state_a, a.abef, a.cdgh);
        store_state(state_b, b.abef, b.cdgh);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_lanes_equal_two_single_compressions() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut byte = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 56) as u8
        };
        for blocks in 1..4 {
            let a: Vec<[u8; 64]> = (0..blocks).map(|_| std::array::from_fn(|_| byte())).collect();
            let b: Vec<[u8; 64]> = (0..blocks).map(|_| std::array::from_fn(|_| byte())).collect();
            let (mut sa, mut sb) = ([7u32, 1, 2, 3, 4, 5, 6, 9], [0x6a09e667, 1, 2, 3, 4, 5, 6, 7]);
            let (mut ea, mut eb) = (sa, sb);
            compress_x2(&mut sa, &a, &mut sb, &b);
            one_by_one(&mut ea, &a);
            one_by_one(&mut eb, &b);
            assert_eq!((sa, sb), (ea, eb), "{blocks} blocks");
        }
    }
}
