/* qcal's native u8 x s8 convolution: FBGEMM's AVX2 arithmetic, bit for bit, at its speed.
 *
 * Each output is  sum_p sat16(a_2p * w_2p + a_2p+1 * w_2p+1)  over the raw codes of its window
 * in im2col (kh, kw, c) order within a group, K padded with zeros to a multiple of 4, padded
 * pixels holding the activation zero point: vpmaddubsw (u8 x s8, adjacent pairs added in int16
 * with saturation), vpmaddwd by ones (two pairs into int32, exact), vpaddd. That is the kernel
 * FBGEMM runs without VNNI; when no pair can leave int16 it is the exact integer sum.
 * The store adds the exact zero-point terms:  acc = raw + off_j - zw_j * sum_k a_k.
 * The exact variant (`exact` = 1, for every kernel that does not saturate: FBGEMM with VNNI,
 * qnnpack, MLAS's exact kernels, oneDNN with VNNI) reads the same packed weights and im2col
 * rows, splits each group of four bytes into its even and odd bytes widened to int16
 * ((a0, a2), (a1, a3); weights likewise) and multiplies them with vpmaddwd: every product
 * fits int16 x int16 -> int32 and a pair of them cannot leave int32, so the sum is exact.
 * A build with VNNI (QCAL_VNNI512 or QCAL_AVXVNNI, chosen at load) computes the exact variant
 * with vpdpbusd instead: the same sums in one instruction.
 * The AVX512-VNNI build (QCAL_VNNI512, with AVX512 F, BW and VL) runs three paths in 512-bit
 * registers instead, each the same operations in the same order on 16 int32 lanes: the exact
 * and saturating GEMMs' 8 rows x 16 columns with their fused store (the saturating kernel:
 * vpmaddubsw on 512 bits, the same per-lane pairs, then vpdpwssd by ones), the depthwise kernel
 * (saturating taps pairs or exact), and the store's requantization; channel tails use masked
 * loads and stores instead of scalar loops. Its im2col and the other entry points are the
 * 256-bit code.
 * The sums are integer arithmetic only; the store's float steps are one IEEE operation each
 * (built with -ffp-contract=off), so no compiler flag can change a result.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MB 32 /* rows of the im2col block each thread fills, then multiplies by every column panel */

/* The exact sums on a CPU with VNNI (a build of its own, chosen at load: native/__init__.py):
 * vpdpbusd adds the four u8 x s8 products of each group of four bytes into int32 with no
 * intermediate rounding or saturation, the same exact sum as the widened vpmaddwd variant in
 * one instruction. 256-bit here (EVEX with AVX512-VNNI + VL, or VEX with AVX-VNNI), so the
 * packed weights and the im2col rows stay as they are; the AVX512-VNNI build's own 512-bit
 * kernels (below, under QCAL_VNNI512) use the same layouts, but for the depthwise weights. */
#if defined(QCAL_VNNI512)
#define QCAL_DPBUSD(acc, a, b) _mm256_dpbusd_epi32((acc), (a), (b))
#elif defined(QCAL_AVXVNNI)
#define QCAL_DPBUSD(acc, a, b) _mm256_dpbusd_avx_epi32((acc), (a), (b))
#endif

/* w: [G][kg][K] int8 -> bp: [G][ceil(kg/16)][Kp/4][16 columns][4 bytes], zeros beyond kg and K */
void qcal_pack(const int8_t *w, int groups, int kg, int k, int kp, int8_t *bp) {
    int k4 = kp / 4, nb = (kg + 15) / 16;
    memset(bp, 0, (size_t)groups * nb * k4 * 64);
    for (int g = 0; g < groups; g++)
        for (int n = 0; n < kg; n++)
            for (int i = 0; i < k; i++)
                bp[(((size_t)g * nb + n / 16) * k4 + i / 4) * 64 + (n % 16) * 4 + i % 4] =
                    w[((size_t)g * kg + n) * k + i];
}

typedef struct {
    int n, h, w, c, groups, cg, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, za, kg, k, kp;
} geom;

/* Short copies and fills with 32-byte vector moves. A move may run past the end of its piece:
 * the pieces of a row are written left to right (the next piece overwrites the overrun) and
 * every buffer has SLACK spare bytes; a source read stops at `end`. */
#define SLACK 64
static inline void put_bytes(uint8_t *dst, const uint8_t *src, int n, const uint8_t *end) {
    int i = 0;
    for (; i + 32 <= n || (i < n && src + i + 32 <= end); i += 32)
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_loadu_si256((const __m256i *)(src + i)));
    if (i < n) memcpy(dst + i, src + i, n - i);
}

static inline void fill_bytes(uint8_t *dst, __m256i v, int n) {
    for (int i = 0; i < n; i += 32) _mm256_storeu_si256((__m256i *)(dst + i), v);
}

static void im2col_rows(const uint8_t *x, const geom *q, int g, int64_t m0, int rows, uint8_t *a,
                        int32_t *rowsum) {
    /* one input row's kw taps are adjacent pixels when dilation is 1 and the group is the whole
     * pixel: one copy of kw*c bytes per kernel row, pads around it */
    int runs = q->dw == 1 && q->groups == 1;
    const uint8_t *end = x + (size_t)q->n * q->h * q->w * q->c;
    __m256i pad = _mm256_set1_epi8((char)q->za), zero = _mm256_setzero_si256();
    for (int r = 0; r < rows; r++) {
        int64_t m = m0 + r;
        int ox = (int)(m % q->ow), oy = (int)((m / q->ow) % q->oh), b = (int)(m / ((int64_t)q->ow * q->oh));
        uint8_t *row = a + (size_t)r * q->kp;
        int i = 0;
        for (int ky = 0; ky < q->kh; ky++) {
            int iy = oy * q->sh - q->ph + ky * q->dh;
            if (iy < 0 || iy >= q->h) {
                fill_bytes(row + i, pad, q->kw * q->cg);
                i += q->kw * q->cg;
                continue;
            }
            const uint8_t *line = x + ((size_t)b * q->h + iy) * q->w * q->c + (size_t)g * q->cg;
            int ix0 = ox * q->sw - q->pw;
            if (runs) {
                int k0 = ix0 < 0 ? -ix0 : 0, k1 = q->w - ix0 < q->kw ? q->w - ix0 : q->kw;
                if (k1 < k0) k1 = k0;
                fill_bytes(row + i, pad, k0 * q->c);
                put_bytes(row + i + k0 * q->c, line + (size_t)(ix0 + k0) * q->c, (k1 - k0) * q->c, end);
                fill_bytes(row + i + k1 * q->c, pad, (q->kw - k1) * q->c);
                i += q->kw * q->c;
                continue;
            }
            for (int kx = 0; kx < q->kw; kx++) {
                int ix = ix0 + kx * q->dw;
                if (ix < 0 || ix >= q->w) fill_bytes(row + i, pad, q->cg);
                else put_bytes(row + i, line + (size_t)ix * q->c, q->cg, end);
                i += q->cg;
            }
        }
        fill_bytes(row + i, zero, q->kp - i);
        if (rowsum) {
            int32_t s = 0;
            for (int t = 0; t < q->k; t++) s += row[t];
            rowsum[r] = s;
        }
    }
    for (int r = rows; r < MB; r++) fill_bytes(a + (size_t)r * q->kp, zero, q->kp);
}

/* 4 rows x 16 columns of raw sums over the whole K */
__attribute__((noinline)) static void kern4(const uint8_t *a, int kp, const int8_t *bp, __m256i (*acc)[2]) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int r = 0; r < 4; r++) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int i = 0; i < kp / 4; i++) {
        __m256i b0 = _mm256_loadu_si256((const __m256i *)(bp + (size_t)i * 64));
        __m256i b1 = _mm256_loadu_si256((const __m256i *)(bp + (size_t)i * 64 + 32));
#define QCAL_ROW(r)                                                                                   \
    {                                                                                                 \
        int32_t v;                                                                                    \
        memcpy(&v, a + (size_t)(r) * kp + (size_t)i * 4, 4);                                         \
        __m256i av = _mm256_set1_epi32(v);                                                            \
        acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(av, b0), ones)); \
        acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(av, b1), ones)); \
    }
        QCAL_ROW(0) QCAL_ROW(1) QCAL_ROW(2) QCAL_ROW(3)
#undef QCAL_ROW
    }
}

/* The same 4 x 16 raw sums without saturation. A VNNI build: vpdpbusd. Otherwise the bytes of
 * each group of four split into (0, 2) and (1, 3) int16 pairs (u8 activations zero-extended, s8
 * weights sign-extended), each vpmaddwd pair sum exact in int32, the two partial sums of a
 * column added into its lane. */
__attribute__((noinline)) static void kern4_exact(const uint8_t *a, int kp, const int8_t *bp, __m256i (*acc)[2]) {
    for (int r = 0; r < 4; r++) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
#ifndef QCAL_DPBUSD
    const __m256i low = _mm256_set1_epi16(0x00FF);
#endif
    for (int i = 0; i < kp / 4; i++) {
        __m256i b0 = _mm256_loadu_si256((const __m256i *)(bp + (size_t)i * 64));
        __m256i b1 = _mm256_loadu_si256((const __m256i *)(bp + (size_t)i * 64 + 32));
#ifdef QCAL_DPBUSD /* one vpdpbusd per group of four bytes */
#define QCAL_SUM(acc, av, b, e, o) QCAL_DPBUSD(acc, av, b)
#else /* bytes widened: even (0, 2) and odd (1, 3) int16 pairs, one vpmaddwd each */
        __m256i e0 = _mm256_srai_epi16(_mm256_slli_epi16(b0, 8), 8), o0 = _mm256_srai_epi16(b0, 8);
        __m256i e1 = _mm256_srai_epi16(_mm256_slli_epi16(b1, 8), 8), o1 = _mm256_srai_epi16(b1, 8);
#define QCAL_SUM(acc, av, b, e, o)                                                                    \
    _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(_mm256_and_si256(av, low), e),          \
                                           _mm256_madd_epi16(_mm256_srli_epi16(av, 8), o)))
#endif
#define QCAL_ROW(r)                                                                                   \
    {                                                                                                 \
        int32_t v;                                                                                    \
        memcpy(&v, a + (size_t)(r) * kp + (size_t)i * 4, 4);                                         \
        __m256i av = _mm256_set1_epi32(v);                                                            \
        acc[r][0] = QCAL_SUM(acc[r][0], av, b0, e0, o0);                                              \
        acc[r][1] = QCAL_SUM(acc[r][1], av, b1, e1, o1);                                              \
    }
        QCAL_ROW(0) QCAL_ROW(1) QCAL_ROW(2) QCAL_ROW(3)
#undef QCAL_ROW
#undef QCAL_SUM
    }
}

#ifndef QCAL_VNNI512
#define EXACT_ROWS 4 /* rows per exact kernel call (the 512-bit build: 8, below) */
#endif

/* The requantization fused into the store (fbgemm, qnnpack and ort flavours), per output j:
 *   mode 0: y = f32(acc)                     (no bias)
 *   mode 1: y = f32(f32(acc) + fb_j)          (fbgemm, per-channel float bias: fb_j = f32(b_j / ats_j))
 *   mode 2: y = fma(fb_j, rcp, f32(acc))      (fbgemm, per-tensor float bias; caller: |acc| <= 2^24)
 *   mode 3: y = f32(acc + ib_j)               (int32 bias; caller: |acc + ib_j| < 2^31)
 *   r = rint(f32(y * m_j)); r >= 2^31 -> `big` (the int32 conversion's INT_MIN, clamped: fbgemm,
 *   qnnpack; or the top: ort); out = clamp(r, lo - zo, hi - zo) + zo, stored as uint8 or int8.
 * Each line is one IEEE operation (round to nearest even); -ffp-contract=off keeps mul and add apart. */
typedef struct {
    const float *m, *fb;
    const int32_t *ib;
    float rcp;
    int32_t mode, zo, lo, hi, big_is_low, is_signed;
} epilogue;

static inline __m256 epi_y(const epilogue *e, __m256i v, int col) {
    switch (e->mode) {
    case 1: return _mm256_add_ps(_mm256_cvtepi32_ps(v), _mm256_loadu_ps(e->fb + col));
    case 2: return _mm256_fmadd_ps(_mm256_loadu_ps(e->fb + col), _mm256_set1_ps(e->rcp), _mm256_cvtepi32_ps(v));
    case 3: return _mm256_cvtepi32_ps(_mm256_add_epi32(v, _mm256_loadu_si256((const __m256i *)(e->ib + col))));
    default: return _mm256_cvtepi32_ps(v);
    }
}

static inline __m256i epi_codes_y(const epilogue *e, __m256 y, int col) {
    __m256 r = _mm256_round_ps(_mm256_mul_ps(y, _mm256_loadu_ps(e->m + col)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 lo = _mm256_set1_ps((float)(e->lo - e->zo)), hi = _mm256_set1_ps((float)(e->hi - e->zo));
    __m256 big = _mm256_cmp_ps(r, _mm256_set1_ps(2147483648.0f), _CMP_GE_OQ);
    __m256 c = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
    c = _mm256_blendv_ps(c, e->big_is_low ? lo : hi, big);
    return _mm256_add_epi32(_mm256_cvtps_epi32(c), _mm256_set1_epi32(e->zo));
}

static inline __m256i epi_codes(const epilogue *e, __m256i v, int col) { return epi_codes_y(e, epi_y(e, v, col), col); }

/* 16 codes (inside the 8-bit range, so the packs do not saturate) as 16 bytes */
static inline void store16(const epilogue *e, __m256i c0, __m256i c1, uint8_t *dst) {
    __m256i w16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(c0, c1), 0xD8);
    __m256i b8 = e->is_signed ? _mm256_packs_epi16(w16, w16) : _mm256_packus_epi16(w16, w16);
    _mm_storeu_si128((__m128i *)dst, _mm256_castsi256_si128(_mm256_permute4x64_epi64(b8, 0x08)));
}

/* 16 outputs (already inside the 8-bit range, so the packs do not saturate) as 16 bytes */
static inline void epi_store16(const epilogue *e, __m256i v0, __m256i v1, int col, uint8_t *dst) {
    store16(e, epi_codes(e, v0, col), epi_codes(e, v1, col + 8), dst);
}

static inline uint8_t epi_one_y(const epilogue *e, float y, int col) {
    float r = nearbyintf(y * e->m[col]);
    float lo = (float)(e->lo - e->zo), hi = (float)(e->hi - e->zo);
    float c = r >= 2147483648.0f ? (e->big_is_low ? lo : hi) : fminf(fmaxf(r, lo), hi);
    int32_t q = (int32_t)c + e->zo;
    return e->is_signed ? (uint8_t)(int8_t)q : (uint8_t)q;
}

static inline uint8_t epi_one(const epilogue *e, int32_t v, int col) {
    float y;
    switch (e->mode) {
    case 1: y = (float)v + e->fb[col]; break;
    case 2: y = fmaf(e->fb[col], e->rcp, (float)v); break;
    case 3: y = (float)(v + e->ib[col]); break;
    default: y = (float)v;
    }
    return epi_one_y(e, y, col);
}

#ifdef QCAL_VNNI512
/* ---- the 512-bit paths of the AVX512-VNNI build (AVX512 F, BW, VL and VNNI) ----
 * The same arithmetic as the 256-bit code above, 16 int32 lanes a register: channel tails
 * use masked loads and stores instead of scalar loops (a masked-off lane is never read from
 * memory or written, and its value is never stored), so every stored value is computed by the
 * same operations in the same order as before. */
#define EXACT_ROWS 8

/* 8 rows x 16 columns of sums over the whole K: one 64-byte load is a whole panel row (16
 * columns x 4 bytes), one SUM(acc, broadcast activations, panel row) per row. Named
 * accumulators rather than an array: GCC then keeps all eight in registers instead of copying
 * them on every step. */
#define QCAL_KERN8(name, SUM)                                                                         \
    __attribute__((noinline)) static void name(const uint8_t *a, int kp, const int8_t *bp, __m512i *out) { \
        __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0; \
        const size_t st = (size_t)kp;                                                                 \
        for (int i = 0; i < kp / 4; i++, a += 4) {                                                    \
            __m512i b = _mm512_loadu_si512((const void *)(bp + (size_t)i * 64));                      \
            int32_t v[8];                                                                             \
            for (int r = 0; r < 8; r++) memcpy(&v[r], a + r * st, 4);                                 \
            s0 = SUM(s0, _mm512_set1_epi32(v[0]), b), s1 = SUM(s1, _mm512_set1_epi32(v[1]), b);       \
            s2 = SUM(s2, _mm512_set1_epi32(v[2]), b), s3 = SUM(s3, _mm512_set1_epi32(v[3]), b);       \
            s4 = SUM(s4, _mm512_set1_epi32(v[4]), b), s5 = SUM(s5, _mm512_set1_epi32(v[5]), b);       \
            s6 = SUM(s6, _mm512_set1_epi32(v[6]), b), s7 = SUM(s7, _mm512_set1_epi32(v[7]), b);       \
        }                                                                                             \
        out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3, out[4] = s4, out[5] = s5, out[6] = s6, out[7] = s7; \
    }

/* The exact sums: one vpdpbusd (u8 x s8, four products into int32, no saturation). */
#define QCAL_EXACT8(acc, av, b) _mm512_dpbusd_epi32((acc), (av), (b))
/* FBGEMM's saturating sums (kern4's arithmetic on 16 lanes; kern4's b0 in lanes 0-7, b1 in
 * 8-15): vpmaddubsw pairs each column's (a0*w0 + a1*w1) and (a2*w2 + a3*w3) with int16
 * saturation exactly as the 256-bit instruction does, then vpdpwssd by ones adds the two pairs
 * into int32 (vpmaddwd by ones and vpaddd in one instruction: exact, no saturation). */
#define QCAL_SAT8(acc, av, b) _mm512_dpwssd_epi32((acc), _mm512_maddubs_epi16((av), (b)), _mm512_set1_epi16(1))
QCAL_KERN8(kern8_exact, QCAL_EXACT8)
QCAL_KERN8(kern8_sat, QCAL_SAT8)
#undef QCAL_KERN8

/* The fused store's per-column numbers for 16 columns, read once for all the rows that use them
 * (masked: columns past the tail read as 0 and are never stored). */
typedef struct {
    __m512 m, fb, rcp;
    __m512i ib, lo, hi, zo;
    int mode, is_signed, big_is_low, in_range;
} epi16;

static inline epi16 epi16_at(const epilogue *e, int col, __mmask16 k) {
    epi16 p;
    p.m = _mm512_maskz_loadu_ps(k, e->m + col);
    p.fb = e->mode == 1 || e->mode == 2 ? _mm512_maskz_loadu_ps(k, e->fb + col) : _mm512_setzero_ps();
    p.ib = e->mode == 3 ? _mm512_maskz_loadu_epi32(k, e->ib + col) : _mm512_setzero_si512();
    p.rcp = _mm512_set1_ps(e->rcp);
    p.lo = _mm512_set1_epi32(e->lo - e->zo);
    p.hi = _mm512_set1_epi32(e->hi - e->zo);
    p.zo = _mm512_set1_epi32(e->zo);
    p.mode = e->mode;
    p.is_signed = e->is_signed;
    p.big_is_low = e->big_is_low;
    p.in_range = e->is_signed ? e->lo >= -128 && e->hi <= 127 : e->lo >= 0 && e->hi <= 255;
    return p;
}

/* epi_y then epi_codes_y on 16 lanes: the same IEEE operations in the same order up to
 * f32(y * m_j), then the rounding to an integer and the clamp done in int32, the same codes:
 * vcvtps2dq with round-to-nearest-even gives rint(x) for |x| < 2^31 (then the clamp to
 * [lo - zo, hi - zo] is the same in int32 as in float) and INT_MIN for x >= 2^31, x <= -2^31
 * and NaN, which the clamp takes to lo - zo: what the float path gives for x <= -2^31 and for
 * NaN (vmaxps answers lo on a NaN), and for x >= 2^31 where `big` is low; where `big` is the
 * top, x >= 2^31 is blended to hi - zo (no float lies in (2^31 - 0.5, 2^31), so x >= 2^31
 * exactly when rint(x) >= 2^31). The narrowing: the codes are inside [lo, hi]; where that is
 * inside the dtype, vpmovdb keeps them; otherwise vpmovsdb saturates to [-128, 127] as
 * packs_epi32 then packs_epi16 do, and max(q, 0) then vpmovusdb is packs_epi32 then
 * packus_epi16's [0, 255]. */
static inline __m128i epi16_codes(const epi16 *p, __m512i v) {
    __m512 y;
    switch (p->mode) {
    case 1: y = _mm512_add_ps(_mm512_cvtepi32_ps(v), p->fb); break;
    case 2: y = _mm512_fmadd_ps(p->fb, p->rcp, _mm512_cvtepi32_ps(v)); break;
    case 3: y = _mm512_cvtepi32_ps(_mm512_add_epi32(v, p->ib)); break;
    default: y = _mm512_cvtepi32_ps(v);
    }
    __m512 x = _mm512_mul_ps(y, p->m);
    __m512i r = _mm512_cvt_roundps_epi32(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512i c = _mm512_min_epi32(_mm512_max_epi32(r, p->lo), p->hi);
    if (!p->big_is_low) c = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(x, _mm512_set1_ps(2147483648.0f), _CMP_GE_OQ), c, p->hi);
    __m512i q = _mm512_add_epi32(c, p->zo);
    if (p->in_range) return _mm512_cvtepi32_epi8(q);
    return p->is_signed ? _mm512_cvtsepi32_epi8(q) : _mm512_cvtusepi32_epi8(_mm512_max_epi32(q, _mm512_setzero_si512()));
}

/* One output vector of 16 columns (k: the columns that exist) stored as kind 0, 1 or 2 */
static inline void store16x(__m512i v, int kind, const epi16 *p, __mmask16 k, void *out, size_t at) {
    if (k == 0xFFFF) { /* plain stores where all 16 columns exist (a masked store costs more) */
        if (kind == 0) _mm512_storeu_si512((int32_t *)out + at, v);
        else if (kind == 1) _mm512_storeu_ps((float *)out + at, _mm512_cvtepi32_ps(v));
        else _mm_storeu_si128((__m128i *)((uint8_t *)out + at), epi16_codes(p, v));
    } else if (kind == 0) _mm512_mask_storeu_epi32((int32_t *)out + at, k, v);
    else if (kind == 1) _mm512_mask_storeu_ps((float *)out + at, k, _mm512_cvtepi32_ps(v));
    else _mm_mask_storeu_epi8((uint8_t *)out + at, k, epi16_codes(p, v));
}

/* The store of up to 8 rows of one 16-column panel: acc + off_j - zw_j * rowsum (mod 2^32, as
 * the 256-bit adds), then kind 0, 1 or 2. */
static void store_rows512(const __m512i *s, int nr, const int32_t *rowsum, __m512i offv, __m512i zwv, int kind,
                          const epi16 *p, __mmask16 k, void *out, size_t at, int o) {
    const epi16 pl = *p; /* a copy: no store to out can change it, so nothing is read again per row */
    for (int r = 0; r < nr; r++, at += (size_t)o) {
        __m512i v = _mm512_add_epi32(s[r], offv);
        if (rowsum) v = _mm512_sub_epi32(v, _mm512_mullo_epi32(zwv, _mm512_set1_epi32(rowsum[r])));
        store16x(v, kind, &pl, k, out, at);
    }
}
#endif

/* The store alone, for sums computed elsewhere (oneDNN's, on VNNI/AMX CPUs): acc is (rows, o)
 * int32 (kind 0), float32 holding exact integers (kind 1, converted exactly), or float32 values
 * that are already y, the bias added (kind 2: e's mode must be 0); out: (rows, o) codes. With
 * `sums` ((rows, groups) float32 window sums, exact integers) and `zw` ((o) int32), kinds 0 and 1
 * first subtract zw_j * sums[r][j's group]: the weight zero-point term (caller: int32 holds it). */
void qcal_requant(const void *acc, int is_float, int64_t rows, int o, const epilogue *e, uint8_t *out, int threads,
                  const float *sums, const int32_t *zw, int groups) {
    if (is_float == 2) {
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t r = 0; r < rows; r++) {
            const float *af = (const float *)acc + (size_t)r * o;
            uint8_t *dst = out + (size_t)r * o;
            int j = 0;
            for (; j + 16 <= o; j += 16)
                store16(e, epi_codes_y(e, _mm256_loadu_ps(af + j), j), epi_codes_y(e, _mm256_loadu_ps(af + j + 8), j + 8),
                        dst + j);
            for (; j < o; j++) dst[j] = epi_one_y(e, af[j], j);
        }
        return;
    }
    int per_group = o / (groups > 0 ? groups : 1);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < rows; r++) {
        const int32_t *ai = (const int32_t *)acc + (size_t)r * o;
        const float *af = (const float *)acc + (size_t)r * o;
        const float *sr = sums ? sums + (size_t)r * groups : NULL;
        uint8_t *dst = out + (size_t)r * o;
        int j = 0;
        for (; j + 16 <= o; j += 16) {
            __m256i v0, v1;
            if (is_float) {
                v0 = _mm256_cvtps_epi32(_mm256_loadu_ps(af + j));
                v1 = _mm256_cvtps_epi32(_mm256_loadu_ps(af + j + 8));
            } else {
                v0 = _mm256_loadu_si256((const __m256i *)(ai + j));
                v1 = _mm256_loadu_si256((const __m256i *)(ai + j + 8));
            }
            if (sr) { /* minus zw_j times the window sum of j's group (exact integers) */
                __m256i s0, s1;
                if (groups == 1) {
                    s0 = s1 = _mm256_set1_epi32((int32_t)sr[0]);
                } else {
                    int32_t s16[16];
                    for (int t = 0; t < 16; t++) s16[t] = (int32_t)sr[(j + t) / per_group];
                    s0 = _mm256_loadu_si256((const __m256i *)s16);
                    s1 = _mm256_loadu_si256((const __m256i *)(s16 + 8));
                }
                v0 = _mm256_sub_epi32(v0, _mm256_mullo_epi32(_mm256_loadu_si256((const __m256i *)(zw + j)), s0));
                v1 = _mm256_sub_epi32(v1, _mm256_mullo_epi32(_mm256_loadu_si256((const __m256i *)(zw + j + 8)), s1));
            }
            epi_store16(e, v0, v1, j, dst + j);
        }
        for (; j < o; j++) {
            int32_t v = is_float ? (int32_t)af[j] : ai[j];
            if (sr) v -= zw[j] * (int32_t)sr[j / per_group];
            dst[j] = epi_one(e, v, j);
        }
    }
}

/* x: (N, H, W, C) uint8; off: (G*kg) int32; zw: (G*kg) int32 or NULL (all zero).
 * out: (N*OH*OW, G*kg): int32 (kind 0), float32 (kind 1) or 8-bit codes through `e` (kind 2).
 * exact: 0 FBGEMM's saturating pairs (kern4), 1 the exact sum (kern4_exact).
 * Returns 0, or -1 when out of memory. */
int qcal_conv(const uint8_t *x, const int32_t *dims, const int8_t *bp, const int32_t *off, const int32_t *zw,
              void *out, int kind, const epilogue *e, int threads, int exact) {
    void (*kern)(const uint8_t *, int, const int8_t *, __m256i(*)[2]) = exact ? kern4_exact : kern4;
    int step = 4; /* rows per kernel call (the 512-bit exact path: EXACT_ROWS; MB is a multiple of both) */
    geom q = {dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6], dims[7], dims[8], dims[9],
              dims[10], dims[11], dims[12], dims[13], dims[14], dims[15], dims[16], dims[17], dims[18], dims[19]};
    int64_t m_all = (int64_t)q.n * q.oh * q.ow;
    int nb = (q.kg + 15) / 16, o = q.groups * q.kg, k4 = q.kp / 4;
    int64_t blocks = (m_all + MB - 1) / MB;
    int failed = 0;
    int direct = q.kh == 1 && q.kw == 1 && q.sh == 1 && q.sw == 1 && q.ph == 0 && q.pw == 0 && q.groups == 1 &&
                 q.k == q.kp;
#pragma omp parallel num_threads(threads)
    {
        uint8_t *a = aligned_alloc(64, ((size_t)MB * q.kp + SLACK + 63) / 64 * 64);
        int32_t rowsum[MB];
        if (!a) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t blk = 0; blk < blocks; blk++) {
            if (!a) continue;
            int64_t m0 = blk * MB;
            int rows = m_all - m0 < MB ? (int)(m_all - m0) : MB;
            for (int g = 0; g < q.groups; g++) {
                const uint8_t *ablk = a;
                if (direct && rows == MB) { /* a 1x1 conv's rows are the input pixels themselves */
                    ablk = x + (size_t)m0 * q.kp;
                    for (int r = 0; zw && r < rows; r++) {
                        int32_t s = 0;
                        for (int t = 0; t < q.k; t++) s += ablk[(size_t)r * q.kp + t];
                        rowsum[r] = s;
                    }
                } else {
                    im2col_rows(x, &q, g, m0, rows, a, zw ? rowsum : NULL);
                }
                for (int j = 0; j < nb; j++) {
                    const int8_t *panel = bp + ((size_t)g * nb + j) * k4 * 64;
                    int col0 = g * q.kg + j * 16, ncols = q.kg - j * 16 < 16 ? q.kg - j * 16 : 16;
                    __m256i off0 = _mm256_setzero_si256(), off1 = off0, zw0 = off0, zw1 = off0;
                    if (ncols == 16) {
                        off0 = _mm256_loadu_si256((const __m256i *)(off + col0));
                        off1 = _mm256_loadu_si256((const __m256i *)(off + col0 + 8));
                        if (zw) {
                            zw0 = _mm256_loadu_si256((const __m256i *)(zw + col0));
                            zw1 = _mm256_loadu_si256((const __m256i *)(zw + col0 + 8));
                        }
                    }
#ifdef QCAL_VNNI512
                    { /* 8 rows x 16 columns a call (exact or saturating), the columns of the tail masked */
                        __mmask16 k = (__mmask16)((1u << ncols) - 1);
                        __m512i offv = _mm512_maskz_loadu_epi32(k, off + col0);
                        __m512i zwv = zw ? _mm512_maskz_loadu_epi32(k, zw + col0) : _mm512_setzero_si512();
                        epi16 p = kind == 2 ? epi16_at(e, col0, k) : (epi16){0};
                        for (int r0 = 0; r0 < rows; r0 += EXACT_ROWS) {
                            __m512i s[EXACT_ROWS];
                            (exact ? kern8_exact : kern8_sat)(ablk + (size_t)r0 * q.kp, q.kp, panel, s);
                            store_rows512(s, rows - r0 < EXACT_ROWS ? rows - r0 : EXACT_ROWS, zw ? rowsum + r0 : NULL,
                                          offv, zwv, kind, &p, k, out, (size_t)(m0 + r0) * o + col0, o);
                        }
                        continue;
                    }
#endif
                    for (int r0 = 0; r0 < rows; r0 += step) {
                        __m256i acc[8][2];
                        kern(ablk + (size_t)r0 * q.kp, q.kp, panel, acc);
                        for (int r = 0; r < step && r0 + r < rows; r++) {
                            size_t at = (size_t)(m0 + r0 + r) * o + col0;
                            int32_t s = zw ? rowsum[r0 + r] : 0;
                            if (ncols == 16) {
                                __m256i srow = _mm256_set1_epi32(s);
                                __m256i v0 = _mm256_sub_epi32(_mm256_add_epi32(acc[r][0], off0), _mm256_mullo_epi32(zw0, srow));
                                __m256i v1 = _mm256_sub_epi32(_mm256_add_epi32(acc[r][1], off1), _mm256_mullo_epi32(zw1, srow));
                                if (kind == 0) {
                                    _mm256_storeu_si256((__m256i *)((int32_t *)out + at), v0);
                                    _mm256_storeu_si256((__m256i *)((int32_t *)out + at + 8), v1);
                                } else if (kind == 1) {
                                    _mm256_storeu_ps((float *)out + at, _mm256_cvtepi32_ps(v0));
                                    _mm256_storeu_ps((float *)out + at + 8, _mm256_cvtepi32_ps(v1));
                                } else {
                                    epi_store16(e, v0, v1, col0, (uint8_t *)out + at);
                                }
                                continue;
                            }
                            int32_t v[16];
                            _mm256_storeu_si256((__m256i *)v, acc[r][0]);
                            _mm256_storeu_si256((__m256i *)(v + 8), acc[r][1]);
                            for (int t = 0; t < ncols; t++) {
                                int32_t y = v[t] + off[col0 + t] - (zw ? zw[col0 + t] * s : 0);
                                if (kind == 0) ((int32_t *)out)[at + t] = y;
                                else if (kind == 1) ((float *)out)[at + t] = (float)y;
                                else ((uint8_t *)out)[at + t] = epi_one(e, y, col0 + t);
                            }
                        }
                    }
                }
            }
        }
        free(a);
    }
    return failed ? -1 : 0;
}

/* ---- depthwise (one input channel per group, one output channel per group) ----
 * FBGEMM's depthwise kernel pairs the taps of one channel: (t0, t1), (t2, t3), ..., the last
 * with a zero when the tap count is odd; each pair sum saturates to int16. Here four taps at a
 * time: their bytes interleaved per channel, vpmaddubsw (two saturated pairs per channel), then
 * vpmaddwd by ones (the two pairs into int32, exact). Weights: wp[quad][block of 32 channels]
 * [4 vectors of 32 bytes]; vector v holds channels 4v..4v+3 (lane 0) and 16+4v..16+4v+3
 * (lane 1), four taps each: the order _mm256_unpack{lo,hi}_epi8 then _epi16 leave bytes in.
 * The exact variant splits each channel's four taps into (t0, t2) and (t1, t3) int16 pairs
 * and sums them with vpmaddwd, as kern4_exact does: the exact sum of every tap. */
static inline int dw_byte(int ch, int s) { /* channel within a block of 32, tap within a quad */
    int lane = ch / 16, w = ch % 16;
    return (w / 4) * 32 + lane * 16 + (w % 4) * 4 + s;
}

/* where channel ch's tap s of quad qd goes in wp: block ch / 32's 128 bytes. The 512-bit build
 * stores each pair of blocks (2b, 2b + 1) interleaved instead, vector v of block 2b then vector
 * v of block 2b + 1 (64 bytes: one zmm, channels 64b..64b+63 in the order its unpacks leave
 * them); a last block without a pair keeps the 256-bit layout. Same size, the same bytes. */
static inline size_t dw_at(int qd, int blocks, int ch, int s) {
    int blk = ch / 32, b = dw_byte(ch % 32, s);
#ifdef QCAL_VNNI512
    int pair = blk & ~1;
    if (pair + 1 < blocks) return ((size_t)qd * blocks + pair) * 128 + (b / 32) * 64 + (blk - pair) * 32 + b % 32;
#endif
    return ((size_t)qd * blocks + blk) * 128 + b;
}

void qcal_pack_dw(const int8_t *w, int c, int taps, int8_t *wp) {
    int quads = (taps + 3) / 4, blocks = (c + 31) / 32;
    memset(wp, 0, (size_t)quads * blocks * 128);
    for (int qd = 0; qd < quads; qd++)
        for (int ch = 0; ch < c; ch++)
            for (int s = 0; s < 4; s++) {
                int t = 4 * qd + s;
                if (t < taps) wp[dw_at(qd, blocks, ch, s)] = w[(size_t)ch * taps + t];
            }
}

static inline __m256i dw_load(const uint8_t *src, int n) {
    if (n >= 32) return _mm256_loadu_si256((const __m256i *)src);
    uint8_t buf[32] = {0};
    memcpy(buf, src, n);
    return _mm256_loadu_si256((const __m256i *)buf);
}

#ifdef QCAL_VNNI512
/* The 512-bit depthwise kernel: up to DW_PX adjacent output pixels of one row, 64 channels
 * (a pair of blocks, or a last block alone) at a time, the channels' numbers (off, zw, the
 * store's) read once for all the pixels. Each pixel's channels get the 256-bit block's
 * operations on four 128-bit lanes instead of two: each tap's bytes loaded masked to the
 * channels that exist (a tail reads nothing past the pixel; the pad buffers hold 32*blocks bytes
 * each), interleaved per channel by the same unpacks, then vpmaddubsw (FBGEMM's saturated pairs
 * (t0, t1), (t2, t3)) and vpdpwssd by ones (the two pairs into int32, exact: vpmaddwd by ones
 * then vpaddd in one instruction), or vpdpbusd (exact). The window sum for the zw term is
 * vpdpbusd by ones: u8 x 1 pairs cannot saturate, so it is vpmaddubsw then vpmaddwd's sum. */
#define DW_PX 8
/* One quad of taps (a[s]: tap s's bytes) into the sums: the unpacks leave channel 16l+4i+j's
 * four taps in lane l, dword j of v[i], the order of the packed weights */
static inline void dw_quad512(const __m512i *a, const __m512i *wv, __m512i *acc, __m512i *sum, int exact, int zsum) {
    const __m512i ones8 = _mm512_set1_epi8(1), ones16 = _mm512_set1_epi16(1);
    __m512i l01 = _mm512_unpacklo_epi8(a[0], a[1]), h01 = _mm512_unpackhi_epi8(a[0], a[1]);
    __m512i l23 = _mm512_unpacklo_epi8(a[2], a[3]), h23 = _mm512_unpackhi_epi8(a[2], a[3]);
    __m512i v[4] = {_mm512_unpacklo_epi16(l01, l23), _mm512_unpackhi_epi16(l01, l23),
                    _mm512_unpacklo_epi16(h01, h23), _mm512_unpackhi_epi16(h01, h23)};
    for (int i = 0; i < 4; i++) {
        if (exact) acc[i] = _mm512_dpbusd_epi32(acc[i], v[i], wv[i]);
        else acc[i] = _mm512_dpwssd_epi32(acc[i], _mm512_maddubs_epi16(v[i], wv[i]), ones16);
        if (zsum) sum[i] = _mm512_dpbusd_epi32(sum[i], v[i], ones8);
    }
}

/* acc[i] lane l: channels 16l+4i..16l+4i+3 -> y[l]: channels 16l..16l+15 (a 4 x 4 transpose of lanes) */
static inline void dw_lanes512(const __m512i *src, __m512i *dst) {
    __m512i t0 = _mm512_shuffle_i32x4(src[0], src[1], 0x44), t1 = _mm512_shuffle_i32x4(src[2], src[3], 0x44);
    __m512i t2 = _mm512_shuffle_i32x4(src[0], src[1], 0xEE), t3 = _mm512_shuffle_i32x4(src[2], src[3], 0xEE);
    dst[0] = _mm512_shuffle_i32x4(t0, t1, 0x88), dst[1] = _mm512_shuffle_i32x4(t0, t1, 0xDD);
    dst[2] = _mm512_shuffle_i32x4(t2, t3, 0x88), dst[3] = _mm512_shuffle_i32x4(t2, t3, 0xDD);
}

/* The channels' numbers for the store, read once per chunk: off, zw and the epilogue's, 16 a vector */
typedef struct {
    __mmask16 k[4];
    __m512i off[4], zw[4];
    epi16 ep[4];
} dwcols;

static inline void dw_cols512(dwcols *q, int c0, int nc, const int32_t *off, const int32_t *zw, const epilogue *e,
                              int kind) {
    for (int l = 0; l < 4 && 16 * l < nc; l++) {
        int col = c0 + 16 * l;
        q->k[l] = nc - 16 * l >= 16 ? 0xFFFF : (__mmask16)((1u << (nc - 16 * l)) - 1);
        q->off[l] = _mm512_maskz_loadu_epi32(q->k[l], off + col);
        q->zw[l] = zw ? _mm512_maskz_loadu_epi32(q->k[l], zw + col) : _mm512_setzero_si512();
        q->ep[l] = kind == 2 ? epi16_at(e, col, q->k[l]) : (epi16){0};
    }
}

/* The sums of 16 channels (column set l of q) plus off_j - zw_j * window sum, stored */
static inline void dw_out512(__m512i y, __m512i sm, const dwcols *q, int l, int zsum, int kind, void *out,
                             size_t at) {
    __m512i v = _mm512_add_epi32(y, q->off[l]);
    if (zsum) v = _mm512_sub_epi32(v, _mm512_mullo_epi32(sm, q->zw[l]));
    store16x(v, kind, &q->ep[l], q->k[l], out, at);
}

/* The 512-bit depthwise kernel: up to DW_PX adjacent output pixels of one row, 64 channels (a
 * pair of blocks) at a time, the channels' numbers read once for all the pixels. A last block
 * alone (32 channels or fewer) takes two pixels a register instead: lanes 0-1 one pixel, 2-3 the
 * next, its weights in both halves; the same transpose then leaves each pixel's 16-channel
 * halves in y[0], y[1] and y[2], y[3]. Each tap's bytes are loaded masked to the channels that
 * exist (a tail reads nothing past the pixel; the pad buffers hold 32*blocks bytes each). */
static void dw_chunk512(const uint8_t *(*tap)[64 + 4], int np, int quads, int taps, const int8_t *wp, int blocks, int c,
                        const int32_t *off, const int32_t *zw, const epilogue *e, int kind, void *out, size_t at,
                        int exact) {
    int zsum = zw != NULL;
    for (int blk = 0; blk < blocks; blk += 2) {
        int c0 = blk * 32, nc = c - c0 < 64 ? c - c0 : 64, pair = blk + 1 < blocks;
        dwcols q;
        dw_cols512(&q, c0, nc, off, zw, e, kind);
        for (int px = 0; px < np; px += pair ? 1 : 2) {
            int px2 = px + 1 < np ? px + 1 : px; /* the lone block's second pixel (itself at an odd end) */
            __m512i acc[4], sum[4], y[4], sm[4];
            for (int i = 0; i < 4; i++) acc[i] = sum[i] = _mm512_setzero_si512();
            for (int qd = 0; qd < quads; qd++) {
                const int8_t *wb = wp + ((size_t)qd * blocks + blk) * 128;
                __m512i a[4], wv[4];
                for (int s = 0; s < 4; s++) {
                    const uint8_t *t0 = tap[px][4 * qd + s] + c0, *t1 = tap[px2][4 * qd + s] + c0;
                    if (4 * qd + s >= taps) /* a missing tap of the last quad: zeros, not read */
                        a[s] = _mm512_setzero_si512();
                    else if (pair)
                        a[s] = nc == 64 ? _mm512_loadu_si512((const void *)t0)
                                        : _mm512_maskz_loadu_epi8(nc == 64 ? ~0ULL : (1ULL << nc) - 1, t0);
                    else {
                        __mmask32 kh = nc == 32 ? ~0u : (1u << nc) - 1;
                        a[s] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_maskz_loadu_epi8(kh, t0)),
                                                  _mm256_maskz_loadu_epi8(kh, t1), 1);
                    }
                }
                for (int i = 0; i < 4; i++)
                    wv[i] = pair ? _mm512_loadu_si512((const void *)(wb + 64 * i))
                                 : _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(wb + 32 * i)));
                dw_quad512(a, wv, acc, sum, exact, zsum);
            }
            dw_lanes512(acc, y);
            if (zsum) dw_lanes512(sum, sm);
            if (pair) {
                for (int l = 0; 16 * l < nc; l++)
                    dw_out512(y[l], sm[l], &q, l, zsum, kind, out, at + (size_t)px * c + c0 + 16 * l);
                continue;
            }
            for (int l = 0; l < 4; l++) {
                int half = l % 2, pixel = l < 2 ? px : px2;
                if (16 * half >= nc || (l >= 2 && px2 == px)) continue;
                dw_out512(y[l], sm[l], &q, half, zsum, kind, out, at + (size_t)pixel * c + c0 + 16 * half);
            }
        }
    }
}
#endif


/* x: (N, H, W, C) uint8; dims: n h w c kh kw sh sw ph pw dh dw oh ow za; out: (N*OH*OW, C);
 * exact: 0 FBGEMM's saturating tap pairs, 1 the exact sum */
int qcal_dw(const uint8_t *x, const int32_t *d, const int8_t *wp, const int32_t *off, const int32_t *zw,
            void *out, int kind, const epilogue *e, int threads, int exact) {
    int n = d[0], h = d[1], w = d[2], c = d[3], kh = d[4], kw = d[5], sh = d[6], sw = d[7], ph = d[8], pw = d[9];
    int dh = d[10], dw = d[11], oh = d[12], ow = d[13], za = d[14];
    int taps = kh * kw, quads = (taps + 3) / 4, blocks = (c + 31) / 32;
    if (taps > 64) return -2;
    size_t cpad = (size_t)blocks * 32;
    uint8_t *pads = aligned_alloc(64, 2 * cpad); /* za for padded pixels, then zeros for missing taps */
    if (!pads) return -1;
    memset(pads, za, cpad);
    memset(pads + cpad, 0, cpad);
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1), low = _mm256_set1_epi16(0x00FF);
#ifdef QCAL_VNNI512
    epilogue el = kind == 2 ? *e : (epilogue){0}; /* a copy: no store to out can change its numbers */
#endif
    int ty[64 + 4], tx[64 + 4]; /* each tap's offset in the window */
    for (int t = 0; t < 4 * quads; t++) {
        ty[t] = (t / kw) * dh;
        tx[t] = (t % kw) * dw;
    }
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t row = 0; row < (int64_t)n * oh; row++) {
        int b = (int)(row / oh), oy = (int)(row % oh);
#ifdef QCAL_VNNI512 /* the row in chunks of DW_PX pixels, each tap's address first (the pad buffers' outside x) */
        const uint8_t *taps8[DW_PX][64 + 4], *line[64 + 4], *outside[64 + 4];
        for (int t = 0; t < 4 * quads; t++) { /* per tap: its input row (NULL: outside), then only ix varies */
            int iy = oy * sh - ph + ty[t];
            line[t] = t < taps && iy >= 0 && iy < h ? x + ((size_t)b * h + iy) * w * c : NULL;
            outside[t] = t < taps ? pads : pads + cpad;
        }
        for (int ox0 = 0; ox0 < ow; ox0 += DW_PX) {
            int np = ow - ox0 < DW_PX ? ow - ox0 : DW_PX;
            for (int px = 0; px < np; px++)
                for (int t = 0; t < 4 * quads; t++) {
                    int ix = (ox0 + px) * sw - pw + tx[t];
                    taps8[px][t] = line[t] && ix >= 0 && ix < w ? line[t] + (size_t)ix * c : outside[t];
                }
            dw_chunk512(taps8, np, quads, taps, wp, blocks, c, off, zw, &el, kind, out,
                        (((size_t)b * oh + oy) * ow + ox0) * c, exact);
        }
        continue;
#endif
        const uint8_t *tap[64 + 4];
        int real[64 + 4]; /* a pixel of x (tail loads must not run past its end), not a pad buffer */
        for (int ox = 0; ox < ow; ox++) {
            for (int t = 0; t < 4 * quads; t++) {
                int iy = oy * sh - ph + ty[t], ix = ox * sw - pw + tx[t];
                real[t] = t < taps && iy >= 0 && iy < h && ix >= 0 && ix < w;
                tap[t] = t >= taps ? pads + cpad : real[t] ? x + (((size_t)b * h + iy) * w + ix) * c : pads;
            }
            size_t at = (((size_t)b * oh + oy) * ow + ox) * c;
            for (int blk = 0; blk < blocks; blk++) {
                int c0 = blk * 32, nc = c - c0 < 32 ? c - c0 : 32;
                __m256i acc[4], sum[4];
                for (int i = 0; i < 4; i++) acc[i] = sum[i] = _mm256_setzero_si256();
                for (int qd = 0; qd < quads; qd++) {
                    __m256i a[4];
                    for (int s = 0; s < 4; s++) {
                        int t = 4 * qd + s;
                        a[s] = (nc == 32 || !real[t]) ? _mm256_loadu_si256((const __m256i *)(tap[t] + c0))
                                                      : dw_load(tap[t] + c0, nc);
                    }
                    __m256i l01 = _mm256_unpacklo_epi8(a[0], a[1]), h01 = _mm256_unpackhi_epi8(a[0], a[1]);
                    __m256i l23 = _mm256_unpacklo_epi8(a[2], a[3]), h23 = _mm256_unpackhi_epi8(a[2], a[3]);
                    __m256i v[4] = {_mm256_unpacklo_epi16(l01, l23), _mm256_unpackhi_epi16(l01, l23),
                                    _mm256_unpacklo_epi16(h01, h23), _mm256_unpackhi_epi16(h01, h23)};
                    const int8_t *wb = wp + ((size_t)qd * blocks + blk) * 128;
                    for (int i = 0; i < 4; i++) {
                        __m256i wv = _mm256_loadu_si256((const __m256i *)(wb + 32 * i));
                        if (exact) {
#ifdef QCAL_DPBUSD
                            acc[i] = QCAL_DPBUSD(acc[i], v[i], wv); /* the four taps of each channel, exact */
#else /* (t0, t2) and (t1, t3) as int16 pairs: exact products and sums */
                            __m256i we = _mm256_srai_epi16(_mm256_slli_epi16(wv, 8), 8), wo = _mm256_srai_epi16(wv, 8);
                            __m256i ae = _mm256_and_si256(v[i], low), ao = _mm256_srli_epi16(v[i], 8);
                            acc[i] = _mm256_add_epi32(acc[i], _mm256_add_epi32(_mm256_madd_epi16(ae, we), _mm256_madd_epi16(ao, wo)));
#endif
                        } else {
                            acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(_mm256_maddubs_epi16(v[i], wv), ones16));
                        }
                        if (zw) sum[i] = _mm256_add_epi32(sum[i], _mm256_madd_epi16(_mm256_maddubs_epi16(v[i], ones8), ones16));
                    }
                }
                /* acc[i]: channels 4i..4i+3 | 16+4i..16+4i+3 -> y[j]: channels 8j..8j+7 */
                __m256i y[4] = {_mm256_permute2x128_si256(acc[0], acc[1], 0x20), _mm256_permute2x128_si256(acc[2], acc[3], 0x20),
                                _mm256_permute2x128_si256(acc[0], acc[1], 0x31), _mm256_permute2x128_si256(acc[2], acc[3], 0x31)};
                __m256i sm[4] = {_mm256_permute2x128_si256(sum[0], sum[1], 0x20), _mm256_permute2x128_si256(sum[2], sum[3], 0x20),
                                 _mm256_permute2x128_si256(sum[0], sum[1], 0x31), _mm256_permute2x128_si256(sum[2], sum[3], 0x31)};
                /* off and zw are read 32 wide: the caller pads both to a multiple of 32 channels */
                for (int i = 0; i < 4; i++) {
                    y[i] = _mm256_add_epi32(y[i], _mm256_loadu_si256((const __m256i *)(off + c0 + 8 * i)));
                    if (zw)
                        y[i] = _mm256_sub_epi32(y[i], _mm256_mullo_epi32(sm[i], _mm256_loadu_si256((const __m256i *)(zw + c0 + 8 * i))));
                }
                if (kind == 2) {
                    uint8_t codes[32];
                    uint8_t *dst = nc == 32 ? (uint8_t *)out + at + c0 : codes;
                    epi_store16(e, y[0], y[1], c0, dst);
                    epi_store16(e, y[2], y[3], c0 + 16, dst + 16);
                    if (nc < 32) memcpy((uint8_t *)out + at + c0, codes, nc);
                } else {
                    int32_t v[32];
                    for (int i = 0; i < 4; i++) _mm256_storeu_si256((__m256i *)(v + 8 * i), y[i]);
                    for (int t = 0; t < nc; t++) {
                        if (kind == 0) ((int32_t *)out)[at + c0 + t] = v[t];
                        else ((float *)out)[at + c0 + t] = (float)v[t];
                    }
                }
            }
        }
    }
    free(pads);
    return 0;
}

/* ---- torch.histc, the same bins for every value ----
 * ATen's histc (LINEAR_INTERPOLATION): an element e in [lo, hi] goes to bin
 * (int64)(((e - lo) * bins) / (hi - lo)), in float32, one rounding per operation (no reciprocal,
 * no fma), and the top edge to the last bin; NaN and values outside are skipped. Counted here
 * in int32 (the caller keeps n < 2^24, where torch's float32 counts are exact too). x is read
 * with a stride (every step-th value). Four sub-histograms keep repeated bins from stalling. */
void qcal_histc(const float *x, int64_t n, int64_t step, int bins, float lo, float hi, int32_t *counts) {
    int32_t *sub = calloc((size_t)4 * bins, sizeof(int32_t));
    const float width = hi - lo, fbins = (float)bins;
    int64_t i = 0;
    if (step == 1) {
        const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi), vb = _mm256_set1_ps(fbins),
                     vw = _mm256_set1_ps(width);
        for (; i + 8 <= n; i += 8) {
            __m256 e = _mm256_loadu_ps(x + i);
            __m256 in = _mm256_and_ps(_mm256_cmp_ps(e, vlo, _CMP_GE_OQ), _mm256_cmp_ps(e, vhi, _CMP_LE_OQ));
            __m256i pos = _mm256_cvttps_epi32(_mm256_div_ps(_mm256_mul_ps(_mm256_sub_ps(e, vlo), vb), vw));
            int32_t p[8];
            _mm256_storeu_si256((__m256i *)p, pos);
            int mask = _mm256_movemask_ps(in);
            for (int t = 0; t < 8; t++) {
                if (!((mask >> t) & 1)) continue;
                int b = p[t] == bins ? bins - 1 : p[t];
                sub[(t & 3) * bins + b]++;
            }
        }
    }
    for (; i < n; i++) {
        float e = x[i * step];
        if (!(e >= lo && e <= hi)) continue;
        int64_t b = (int64_t)(((e - lo) * fbins) / width);
        if (b == bins) b = bins - 1;
        sub[b]++;
    }
    for (int b = 0; b < bins; b++) counts[b] = sub[b] + sub[bins + b] + sub[2 * bins + b] + sub[3 * bins + b];
    free(sub);
}

/* ---- max pooling of codes, NHWC ----
 * The window maximum over the pixels inside the image (padding is ignored, as torch's
 * quantized max_pool2d does); dims: n h w c kh kw sh sw ph pw dh dw oh ow, is_signed. */
int qcal_maxpool(const uint8_t *x, const int32_t *d, uint8_t *out, int threads) {
    int n = d[0], h = d[1], w = d[2], c = d[3], kh = d[4], kw = d[5], sh = d[6], sw = d[7], ph = d[8], pw = d[9];
    int dh = d[10], dw = d[11], oh = d[12], ow = d[13], is_signed = d[14];
    int full = c / 32 * 32, empty = 0;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t row = 0; row < (int64_t)n * oh; row++) {
        int b = (int)(row / oh), oy = (int)(row % oh);
        for (int ox = 0; ox < ow; ox++) {
            uint8_t *dst = out + (((size_t)b * oh + oy) * ow + ox) * c;
            int first = 1;
            for (int ky = 0; ky < kh; ky++) {
                int iy = oy * sh - ph + ky * dh;
                if (iy < 0 || iy >= h) continue;
                for (int kx = 0; kx < kw; kx++) {
                    int ix = ox * sw - pw + kx * dw;
                    if (ix < 0 || ix >= w) continue;
                    const uint8_t *src = x + (((size_t)b * h + iy) * w + ix) * c;
                    if (first) {
                        memcpy(dst, src, c);
                        first = 0;
                        continue;
                    }
                    int i = 0;
                    for (; i < full; i += 32) {
                        __m256i a = _mm256_loadu_si256((const __m256i *)(dst + i));
                        __m256i v = _mm256_loadu_si256((const __m256i *)(src + i));
                        _mm256_storeu_si256((__m256i *)(dst + i), is_signed ? _mm256_max_epi8(a, v) : _mm256_max_epu8(a, v));
                    }
                    for (; i < c; i++) {
                        if (is_signed) { if ((int8_t)src[i] > (int8_t)dst[i]) dst[i] = src[i]; }
                        else if (src[i] > dst[i]) dst[i] = src[i];
                    }
                }
            }
            if (first) { /* a window with no pixel: the caller's shapes prevent it */
#pragma omp atomic write
                empty = 1;
            }
        }
    }
    return empty ? -1 : 0;
}

/* ---- a table over code pairs: out[i] = table[(a[i] ^ flip) * 256 + (b[i] ^ flip)] ----
 * flip = 0x80 maps int8 codes -128..127 onto 0..255 in order (the table's a-major layout). */
void qcal_pair_lookup(const uint8_t *a, const uint8_t *b, int64_t n, const uint8_t *table, int flip, uint8_t *out,
                      int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; i++) out[i] = table[(size_t)(a[i] ^ flip) * 256 + (b[i] ^ flip)];
}

/* ---- torch's per-tensor quantize (FBGEMM's vectorised kernel): q = clamp(rint(fma(x, inv, zp)), qmin, qmax) ----
 * fmaf rounds x * inv + zp once, nearbyintf rounds half to even (the default rounding mode);
 * NaN codes as 0, as the float path's conversion does on x86. */
void qcal_quantize(const float *x, int64_t n, float inv, float zp, int qmin, int qmax, void *out, int is_signed,
                   int threads) {
    const float lo = (float)qmin, hi = (float)qmax;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; i++) {
        float r = nearbyintf(fmaf(x[i], inv, zp));
        r = r != r ? 0.0f : (r < lo ? lo : (r > hi ? hi : r));
        if (is_signed) ((int8_t *)out)[i] = (int8_t)(int)r;
        else ((uint8_t *)out)[i] = (uint8_t)(int)r;
    }
}
