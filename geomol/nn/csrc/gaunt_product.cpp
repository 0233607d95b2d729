/* Fused Gaunt product for CPUs (forward and backward), all intermediates of a tile of rows in L1/L2 cache.
 *
 * Why hand-written: the product is three small transforms and a product per row. As separate torch ops each
 * step streams a [rows, grid] tensor through memory and the GEMMs have inner sizes of 7–19, so they run far
 * from the FMA peak. Here a tile of TILE rows goes coefficients -> (order m, θ node) -> product -> back to
 * coefficients without leaving the cache, with the rows of the tile as the SIMD lanes.
 *
 * The math (see geomol/nn/gaunt.py): x_lm -> A_m(θ_i) = Σ_l P̄_l^|m|(θ_i) x_lm (Legendre step, tables carry the
 * cube root of the θ quadrature weight); the product of two functions written as Fourier series in φ is a
 * convolution of their orders, C_m3(θ_i) = Σ K[m1, m2, m3] A_m1(θ_i) B_m2(θ_i), with K the exact φ integral of
 * three real Fourier modes (so no φ grid is formed); then the adjoint Legendre step back to coefficients.
 * Coefficient (l, m) sits at l² + l + m (e3nn's order); order m at slot m + L.
 *
 * A "product" P = (La, Lb, Lc, tables) is described by
 *   leg_a/leg_b/leg_c [2L+1][n_theta][L+1]: entry j is degree l = |m| + j (zero padded);
 *   the nonzero K grouped by output slot and value (K takes three values, ±1/(2√π) and 1/√(2π), so a term
 *   costs one FMA): slot m3 owns groups start[m3] .. start[m3+1]-1, group g has value coef[g] and the order
 *   pairs (m1[q], m2[q]) for q in gstart[g] .. gstart[g+1]-1.
 * Inputs are [rows][k] row-major; row r uses scale row r % channels of a scale table [channels][k] (or NULL).
 *
 * Direct products (n_theta == 0): for small degrees the sparse sum out_k = Σ c_ijk a_i b_j over the nonzero Gaunt
 * coefficients is faster than the three grid steps (degree 2: 83 terms in 71 groups per row), so a plan
 * may carry the coefficients instead of the grid tables, grouped by output coefficient and by a's coefficient:
 * output k owns groups start[k] .. start[k+1]-1, group g multiplies a's coefficient m1[g] by the sum of coef[q]
 * b_{m2[q]} over q in gstart[g] .. gstart[g+1]-1. The Legendre tables are then unused.
 *
 * gaunt_forward:  out = sc ⊙ Γ(sa ⊙ a, sb ⊙ b).
 * gaunt_backward: for out = w3 ⊙ Γ(w1 ⊙ x, w2 ⊙ y) and its gradient g: gx = w1 ⊙ Γ(w3 ⊙ g, w2 ⊙ y) (degrees of x),
 *   gy = w2 ⊙ Γ(w3 ⊙ g, w1 ⊙ x) (degrees of y), and per channel gw1 += Σ Γ(w3 ⊙ g, w2 ⊙ y) ⊙ x,
 *   gw2 += Σ Γ(w3 ⊙ g, w1 ⊙ x) ⊙ y, gw3 += Σ g ⊙ u for a given u (the caller passes the forward's output and
 *   divides by w3). The Legendre step of g is shared.
 */
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include <omp.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

// Rows per tile; each step works on whole SIMD vectors of rows (GCC/Clang vector extension). Explicit vectors keep
// the compiler from vectorising the wrong loop (it gathers across table entries otherwise). Their width is the
// CPU's register width: a 64-byte vector type on an AVX2 CPU is split by GCC into pieces that go through the stack,
// which made every step 4–7× slower there (measured on AMD Zen 3, 2026-12-03).
constexpr int TILE = 32;

#if defined(__AVX512F__)
#define GAUNT_VECTOR_BYTES 64
#elif defined(__AVX__)
#define GAUNT_VECTOR_BYTES 32
#else
#define GAUNT_VECTOR_BYTES 16
#endif

template <typename T>
struct Tile {
    typedef T V __attribute__((vector_size(GAUNT_VECTOR_BYTES)));
    static constexpr int NV = TILE * sizeof(T) / GAUNT_VECTOR_BYTES;  // vectors per tile
};

template <typename T>
struct Product {
    int La, Lb, Lc, n_theta;
    const T *leg_a, *leg_b, *leg_c, *coef;
    const int *start, *gstart, *m1, *m2;
};

static inline int dim(int L) { return (L + 1) * (L + 1); }

#if defined(__AVX512F__)
// 16×16 transpose of float vectors in registers (unpack pairs, then pairs of pairs, then 128-bit lanes): moving a
// full tile between [rows][k] and [k][TILE] this way costs a quarter of an instruction per value instead of two.
static inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {  // r[4i + q], 128-bit lane L: column 4L + q of rows 4i .. 4i+3
        const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
        const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int q = 0; q < 4; q++) {  // 4×4 transpose of 128-bit lanes among r[q], r[4+q], r[8+q], r[12+q]
        const __m512 u0 = _mm512_shuffle_f32x4(r[q], r[4 + q], 0x44), u1 = _mm512_shuffle_f32x4(r[q], r[4 + q], 0xEE);
        const __m512 u2 = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0x44);
        const __m512 u3 = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0xEE);
        t[q] = _mm512_shuffle_f32x4(u0, u2, 0x88);
        t[4 + q] = _mm512_shuffle_f32x4(u0, u2, 0xDD);
        t[8 + q] = _mm512_shuffle_f32x4(u1, u3, 0x88);
        t[12 + q] = _mm512_shuffle_f32x4(u1, u3, 0xDD);
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}
#endif

#if defined(__AVX2__) && !defined(__AVX512F__)
// 8×8 transpose of float vectors in registers (the AVX2 counterpart of transpose16).
static inline void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {  // u[4i + q], 128-bit lane L: column 4L + q of rows 4i .. 4i+3
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int q = 0; q < 4; q++) {
        r[q] = _mm256_permute2f128_ps(u[q], u[4 + q], 0x20);
        r[4 + q] = _mm256_permute2f128_ps(u[q], u[4 + q], 0x31);
    }
}

static inline __m256i first_lanes(int count) {  // mask of the first count (0..8) of 8 lanes
    const __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), index);
}
#endif

// Rows row[0] .. row[n-1] of src [rows][k] -> dst [k][TILE], zero past lane n. The row list is what lets one
// kernel gather: a tile's lanes may read any rows (the sender's features of each edge, for a convolution).
template <typename T>
static void transpose_in(const T *src, int k, const long *row, int n, T *dst) {
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float>) {
        if (n == TILE) {
            for (int t0 = 0; t0 < TILE; t0 += 16)
                for (int j0 = 0; j0 < k; j0 += 16) {
                    const __mmask16 mask = k - j0 >= 16 ? 0xFFFF : (__mmask16)((1u << (k - j0)) - 1);
                    __m512 r[16];
#pragma GCC unroll 16
                    for (int t = 0; t < 16; t++) r[t] = _mm512_maskz_loadu_ps(mask, src + row[t0 + t] * k + j0);
                    transpose16(r);
                    for (int j = 0; j < 16 && j0 + j < k; j++) _mm512_store_ps(dst + (j0 + j) * TILE + t0, r[j]);
                }
            return;
        }
    }
#endif
#if defined(__AVX2__) && !defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float>) {
        if (n == TILE) {
            for (int t0 = 0; t0 < TILE; t0 += 8)
                for (int j0 = 0; j0 < k; j0 += 8) {
                    const __m256i mask = first_lanes(k - j0);
                    __m256 r[8];
#pragma GCC unroll 8
                    for (int t = 0; t < 8; t++) r[t] = _mm256_maskload_ps(src + row[t0 + t] * k + j0, mask);
                    transpose8(r);
                    for (int j = 0; j < 8 && j0 + j < k; j++) _mm256_store_ps(dst + (j0 + j) * TILE + t0, r[j]);
                }
            return;
        }
    }
#endif
    if (n < TILE) memset(dst, 0, sizeof(T) * TILE * (size_t)k);
    for (int t = 0; t < n; t++)
        for (int j = 0; j < k; j++) dst[j * TILE + t] = src[row[t] * k + j];
}

// u [k][TILE] -> rows row[0] .. row[n-1] of dst [rows][k], written (ADD false) or added to (ADD true: a scatter-add;
// lanes are handled one after another, so two lanes may name the same row).
template <bool ADD, typename T>
static void transpose_out(const T *u, int k, const long *row, int n, T *dst) {
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float>) {
        if (n == TILE) {
            for (int t0 = 0; t0 < TILE; t0 += 16)
                for (int j0 = 0; j0 < k; j0 += 16) {
                    const __mmask16 mask = k - j0 >= 16 ? 0xFFFF : (__mmask16)((1u << (k - j0)) - 1);
                    __m512 r[16];
                    for (int j = 0; j < 16; j++)
                        r[j] = j0 + j < k ? _mm512_load_ps(u + (j0 + j) * TILE + t0) : _mm512_setzero_ps();
                    transpose16(r);
#pragma GCC unroll 16
                    for (int t = 0; t < 16; t++) {
                        float *d = dst + row[t0 + t] * k + j0;
                        _mm512_mask_storeu_ps(d, mask, ADD ? _mm512_add_ps(_mm512_maskz_loadu_ps(mask, d), r[t]) : r[t]);
                    }
                }
            return;
        }
    }
#endif
#if defined(__AVX2__) && !defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float>) {
        if (n == TILE) {
            for (int t0 = 0; t0 < TILE; t0 += 8)
                for (int j0 = 0; j0 < k; j0 += 8) {
                    const __m256i mask = first_lanes(k - j0);
                    __m256 r[8];
                    for (int j = 0; j < 8; j++)
                        r[j] = j0 + j < k ? _mm256_load_ps(u + (j0 + j) * TILE + t0) : _mm256_setzero_ps();
                    transpose8(r);
#pragma GCC unroll 8
                    for (int t = 0; t < 8; t++) {
                        float *d = dst + row[t0 + t] * k + j0;
                        _mm256_maskstore_ps(d, mask, ADD ? _mm256_add_ps(_mm256_maskload_ps(d, mask), r[t]) : r[t]);
                    }
                }
            return;
        }
    }
#endif
    for (int t = 0; t < n; t++)
        for (int j = 0; j < k; j++) {
            T &d = dst[row[t] * k + j];
            d = ADD ? d + u[j * TILE + t] : u[j * TILE + t];
        }
}

// The rows of a tile: row0 + t, or, through an index over groups of `channels` rows (one group per edge),
// index[r / channels] * channels + r % channels for row r = row0 + t.
static inline void tile_rows(long row0, int n, const long *index, int channels, long *row) {
    for (int t = 0; t < n; t++) {
        const long r = row0 + t;
        row[t] = index ? index[r / channels] * channels + r % channels : r;
    }
    for (int t = n; t < TILE; t++) row[t] = 0;  // never read (partial tiles take the scalar paths)
}

template <typename T>
static void transpose_in(const T *src, int k, long row0, int n, T *dst) {
    long row[TILE];
    tile_rows(row0, n, nullptr, 1, row);
    transpose_in(src, k, row, n, dst);
}

template <typename T>
static void transpose_out(const T *u, int k, long row0, int n, T *dst) {
    long row[TILE];
    tile_rows(row0, n, nullptr, 1, row);
    transpose_out<false>(u, k, row, n, dst);
}

// Per-channel tables in the tile's lane layout: S[j][t] = s[channel of row row0 + t][j]. When the channel count
// divides TILE every tile has the same layout, and this runs once per thread instead of once per tile.
template <typename T>
static void lanes(const T *s, int k, long row0, int channels, T *S) {
    int channel = (int)(row0 % channels);
    for (int t = 0; t < TILE; t++, channel = channel + 1 == channels ? 0 : channel + 1)
        for (int j = 0; j < k; j++) S[j * TILE + t] = s[channel * k + j];
}

template <typename T>
static void scale(T *x, const T *S, int k) {  // x ⊙= S, both [k][TILE]
    typedef typename Tile<T>::V V;
    for (int v = 0; v < k * Tile<T>::NV; v++) ((V *)x)[v] *= ((const V *)S)[v];
}

template <typename T>
static void accumulate(T *acc, const T *u, const T *z, int k) {  // acc += u ⊙ z, all [k][TILE]
    typedef typename Tile<T>::V V;
    for (int v = 0; v < k * Tile<T>::NV; v++) ((V *)acc)[v] += ((const V *)u)[v] * ((const V *)z)[v];
}

// Lane sums acc [k][TILE] of rows row0 .. -> dot [channels][k] (per channel), then clear acc.
template <typename T>
static void fold(T *acc, int k, long row0, int channels, T *dot) {
    int channel = (int)(row0 % channels);
    for (int t = 0; t < TILE; t++, channel = channel + 1 == channels ? 0 : channel + 1)
        for (int j = 0; j < k; j++) dot[channel * k + j] += acc[j * TILE + t];
    memset(acc, 0, sizeof(T) * TILE * (size_t)k);
}

// Degrees up to this many get a copy of the Legendre steps compiled for that degree (loop bounds known, so the
// short loops over l are unrolled); larger degrees use the generic code.
#define GAUNT_FIXED_DEGREES(F) F(0) F(1) F(2) F(3) F(4) F(5) F(6)
#define GAUNT_DISPATCH(L, CALL)                                     \
    switch (L) {                                                    \
        GAUNT_FIXED_DEGREES(CALL)                                   \
        default: CALL##_ANY                                         \
    }

// Legendre step: x [(L+1)²][TILE] -> F [2L+1][n_theta][TILE].
template <typename T, int FIXED>
static void legendre_fixed(const T *leg, int L_any, int n_theta, const T *xs, T *Fs) {
    typedef typename Tile<T>::V V;
    constexpr int NV = Tile<T>::NV;
    const int L = FIXED >= 0 ? FIXED : L_any;
    const V *x = (const V *)xs;
    V *F = (V *)Fs;
    for (int mi = 0; mi < 2 * L + 1; mi++) {
        const int m = mi - L, am = m < 0 ? -m : m;
        for (int i = 0; i < n_theta; i++) {
            const T *p = leg + ((size_t)mi * n_theta + i) * (L + 1);
            V acc[NV] = {};
            for (int l = am; l <= L; l++) {
                const V *xl = x + (size_t)(l * l + l + m) * NV;
                for (int s = 0; s < NV; s++) acc[s] += p[l - am] * xl[s];
            }
            for (int s = 0; s < NV; s++) F[((size_t)mi * n_theta + i) * NV + s] = acc[s];
        }
    }
}

template <typename T>
static void legendre(const T *leg, int L, int n_theta, const T *xs, T *Fs) {
#define LEGENDRE(D) case D: return legendre_fixed<T, D>(leg, L, n_theta, xs, Fs);
#define LEGENDRE_ANY return legendre_fixed<T, -1>(leg, L, n_theta, xs, Fs);
    GAUNT_DISPATCH(L, LEGENDRE)
#undef LEGENDRE
#undef LEGENDRE_ANY
}

// Adjoint Legendre step: C [2L+1][n_theta][TILE] -> coefficients out [(L+1)²][TILE].
template <typename T, int FIXED>
static void adjoint_legendre_fixed(const T *leg, int L_any, int n_theta, const T *Cs, T *outs) {
    typedef typename Tile<T>::V V;
    constexpr int NV = Tile<T>::NV;
    const int L = FIXED >= 0 ? FIXED : L_any;
    const V *C = (const V *)Cs;
    V *out = (V *)outs;
    for (int mi = 0; mi < 2 * L + 1; mi++) {
        const int m = mi - L, am = m < 0 ? -m : m;
        for (int l = am; l <= L; l++) {
            V acc[NV] = {};
            for (int i = 0; i < n_theta; i++) {
                const T p = leg[((size_t)mi * n_theta + i) * (L + 1) + l - am];
                const V *c = C + ((size_t)mi * n_theta + i) * NV;
                for (int s = 0; s < NV; s++) acc[s] += p * c[s];
            }
            for (int s = 0; s < NV; s++) out[(size_t)(l * l + l + m) * NV + s] = acc[s];
        }
    }
}

template <typename T>
static void adjoint_legendre(const T *leg, int L, int n_theta, const T *Cs, T *outs) {
#define ADJOINT(D) case D: return adjoint_legendre_fixed<T, D>(leg, L, n_theta, Cs, outs);
#define ADJOINT_ANY return adjoint_legendre_fixed<T, -1>(leg, L, n_theta, Cs, outs);
    GAUNT_DISPATCH(L, ADJOINT)
#undef ADJOINT
#undef ADJOINT_ANY
}

// Product in φ-Fourier space and the adjoint Legendre step: A, B -> coefficients out [(Lc+1)²][TILE].
template <typename T>
static void product(const Product<T> &P, const T *As, const T *Bs, T *Cs, T *outs) {
    typedef typename Tile<T>::V V;
    constexpr int NV = Tile<T>::NV;
    const int n_theta = P.n_theta, Lc = P.Lc;
    const V *A = (const V *)As, *B = (const V *)Bs;
    V *C = (V *)Cs;
    // θ node outermost: the orders of A, B and C at one node (3 × (2L+1) vectors) stay in L1 while every
    // output order is formed; order-major loops stream all of A and B once per output order instead.
    for (int i = 0; i < n_theta; i++)
        for (int m3 = 0; m3 < 2 * Lc + 1; m3++) {
            V acc[NV] = {};
            for (int g = P.start[m3]; g < P.start[m3 + 1]; g++) {
                V sum[NV] = {};
                for (int q = P.gstart[g]; q < P.gstart[g + 1]; q++) {
                    const V *u = A + ((size_t)P.m1[q] * n_theta + i) * NV;
                    const V *v = B + ((size_t)P.m2[q] * n_theta + i) * NV;
                    for (int s = 0; s < NV; s++) sum[s] += u[s] * v[s];
                }
                for (int s = 0; s < NV; s++) acc[s] += P.coef[g] * sum[s];
            }
            for (int s = 0; s < NV; s++) C[((size_t)m3 * n_theta + i) * NV + s] = acc[s];
        }
    adjoint_legendre(P.leg_c, Lc, n_theta, Cs, outs);
}

// Direct product (plans with n_theta == 0, see the top): a [ka][TILE], b [kb][TILE] -> out [kc][TILE].
template <typename T>
static void direct(const Product<T> &P, const T *As, const T *Bs, T *outs) {
    typedef typename Tile<T>::V V;
    constexpr int NV = Tile<T>::NV;
    const V *A = (const V *)As, *B = (const V *)Bs;
    V *out = (V *)outs;
    for (int k = 0; k < dim(P.Lc); k++) {
        V acc[NV] = {};
        for (int g = P.start[k]; g < P.start[k + 1]; g++) {
            V sum[NV] = {};
            for (int q = P.gstart[g]; q < P.gstart[g + 1]; q++) {
                const T c = P.coef[q];
                const V *b = B + (size_t)P.m2[q] * NV;
                for (int s = 0; s < NV; s++) sum[s] += c * b[s];
            }
            const V *a = A + (size_t)P.m1[g] * NV;
            for (int s = 0; s < NV; s++) acc[s] += a[s] * sum[s];
        }
        for (int s = 0; s < NV; s++) out[(size_t)k * NV + s] = acc[s];
    }
}

// Per-thread scratch, 64-byte aligned; blocks are handed out in tile-sized multiples.
template <typename T>
struct Scratch {
    T *base, *next;
    explicit Scratch(size_t values) {
        base = next = (T *)aligned_alloc(64, ((values * TILE * sizeof(T) + 63) / 64) * 64);
        if (base) memset(base, 0, values * TILE * sizeof(T));
    }
    bool ok() const { return base != nullptr; }
    T *take(size_t rows_of_tile) {  // a block of rows_of_tile × TILE values (nullptr if the allocation failed)
        if (!base) return nullptr;
        T *block = next;
        next += rows_of_tile * TILE;
        return block;
    }
    ~Scratch() { free(base); }
};

// Scale tables of one call in lane layout, refreshed per tile unless the channel count divides TILE.
template <typename T>
struct Scales {
    const T *table[3];
    int k[3];
    T *S[3] = {nullptr, nullptr, nullptr};
    int channels;
    bool fixed;
    Scales(const T *a, int ka, const T *b, int kb, const T *c, int kc, int channels_, Scratch<T> &scratch)
        : table{a, b, c}, k{ka, kb, kc}, channels(channels_), fixed(TILE % channels_ == 0) {
        for (int i = 0; i < 3; i++)
            if (table[i]) {
                S[i] = scratch.take(k[i]);
                if (fixed && S[i]) lanes(table[i], k[i], 0, channels, S[i]);
            }
    }
    void at(long row0) {
        if (!fixed)
            for (int i = 0; i < 3; i++)
                if (table[i]) lanes(table[i], k[i], row0, channels, S[i]);
    }
};

template <typename T>
static void reduce(T *partial, T *total, size_t count) {
#pragma omp critical
    for (size_t j = 0; j < count; j++) total[j] += partial[j];
}

// Both return GAUNT_OK, or GAUNT_OUT_OF_MEMORY when a thread's scratch could not be allocated (the outputs are then
// incomplete; the caller raises).
enum { GAUNT_OK = 0, GAUNT_OUT_OF_MEMORY = 1 };

// out = sc ⊙ Γ(sa ⊙ a, sb ⊙ b) over `rows` rows; with index arrays over groups of `channels` rows (one group per
// edge: see tile_rows) a reads rows ia, b rows ib, and the products are added to rows io of out [out_rows][kc]
// (zeroed by the caller): a convolution's gather, product and scatter in one pass, no [edges, channels, k] tensor.
// With several threads each thread but the first adds into its own copy of out, and the copies are summed into out
// in thread order at the end (the result does not depend on timing).
template <typename T>
static int gaunt_forward(const Product<T> &P, const T *a, const T *b, T *out, long rows, const T *sa, const T *sb,
                         const T *sc, int channels, int n_threads, const long *ia = nullptr,
                         const long *ib = nullptr, const long *io = nullptr, long out_rows = 0) {
    const int ka = dim(P.La), kb = dim(P.Lb), kc = dim(P.Lc), nt = P.n_theta;
    const long n_tiles = (rows + TILE - 1) / TILE;
    const size_t out_size = (size_t)out_rows * kc;
    int status = GAUNT_OK;
    T **copies = io && n_threads > 1 ? (T **)calloc(n_threads, sizeof(T *)) : nullptr;
    if (io && n_threads > 1 && !copies) return GAUNT_OUT_OF_MEMORY;
#pragma omp parallel num_threads(n_threads)
    {
        const int thread = omp_get_thread_num();
        Scratch<T> scratch(2 * (size_t)(ka + kb + kc) + (size_t)nt * (2 * P.La + 2 * P.Lb + 2 * P.Lc + 3));
        T *xa = scratch.take(ka), *xb = scratch.take(kb), *xc = scratch.take(kc);
        T *A = scratch.take((2 * P.La + 1) * nt), *B = scratch.take((2 * P.Lb + 1) * nt);
        T *C = scratch.take((2 * P.Lc + 1) * nt);
        Scales<T> s(sa, ka, sb, kb, sc, kc, channels, scratch);
        T *target = out;
        if (copies && thread > 0) target = copies[thread] = (T *)calloc(out_size, sizeof(T));
        const bool ok = scratch.ok() && target != nullptr;
        if (!ok) {
#pragma omp atomic write
            status = GAUNT_OUT_OF_MEMORY;
        }
        long ra[TILE], rb[TILE], rc[TILE];
#pragma omp for schedule(static)
        for (long tile = 0; tile < n_tiles; tile++) {
            if (!ok) continue;  // every thread still takes part in the worksharing loop
            const long row0 = tile * TILE;
            const int n = rows - row0 < TILE ? (int)(rows - row0) : TILE;
            s.at(row0);
            tile_rows(row0, n, ia, channels, ra);
            tile_rows(row0, n, ib, channels, rb);
            transpose_in(a, ka, ra, n, xa);
            transpose_in(b, kb, rb, n, xb);
            if (sa) scale(xa, s.S[0], ka);
            if (sb) scale(xb, s.S[1], kb);
            if (nt == 0) {
                direct(P, xa, xb, xc);
            } else {
                legendre(P.leg_a, P.La, nt, xa, A);
                legendre(P.leg_b, P.Lb, nt, xb, B);
                product(P, A, B, C, xc);
            }
            if (sc) scale(xc, s.S[2], kc);
            tile_rows(row0, n, io, channels, rc);
            if (io)
                transpose_out<true>(xc, kc, rc, n, target);
            else
                transpose_out<false>(xc, kc, rc, n, out);
        }
        if (copies) {  // the worksharing loop ended with a barrier: every copy is complete
            const int team = omp_get_num_threads();
#pragma omp for schedule(static)
            for (size_t j = 0; j < out_size; j++)
                for (int t = 1; t < team; t++)
                    if (copies[t]) out[j] += copies[t][j];
            if (thread > 0) free(copies[thread]);  // after the loop's barrier: nobody reads it any more
        }
    }
    free(copies);
    return status;
}

// One input's gradient for a tile: Γ(w3 ⊙ g, w_other ⊙ other) on the input's degrees (G holds the Legendre step of
// w3 ⊙ g, or w3 ⊙ g itself for a direct plan; other is w_other ⊙ other in lane layout), its lane sums against the
// input (the weight gradient, if acc), then times the input's weight, to rows of grad. Scratch: F for other's
// Legendre step, C and xo.
template <typename T>
static void input_gradient(const Product<T> &P, const T *G, const T *other, const T *input, int k, const T *S,
                           long row0, int n, T *F, T *C, T *xo, T *acc, T *grad) {
    if (P.n_theta == 0) {
        direct(P, G, other, xo);
    } else {
        legendre(P.leg_b, P.Lb, P.n_theta, other, F);
        product(P, G, F, C, xo);
    }
    if (acc) accumulate(acc, xo, input, k);
    if (S) scale(xo, S, k);
    transpose_out(xo, k, row0, n, grad);
}

// dst = src ⊙ S, all [k][TILE].
template <typename T>
static void scaled_copy(T *dst, const T *src, const T *S, int k) {
    typedef typename Tile<T>::V V;
    for (int v = 0; v < k * Tile<T>::NV; v++) ((V *)dst)[v] = ((const V *)src)[v] * ((const V *)S)[v];
}

// Px: (L3, L2) -> L1 and Py: (L3, L1) -> L2, both with the output's degree L3 in role a. Weight gradients are
// summed per lane over the tiles (vector FMAs) and folded into channels at the end (or per tile when the
// channel count does not divide TILE).
template <typename T>
static int gaunt_backward(const Product<T> &Px, const Product<T> &Py, const T *g, const T *x, const T *y,
                          const T *u, T *gx, T *gy, long rows, const T *w1, const T *w2, const T *w3, T *gw1,
                          T *gw2, T *gw3, int channels, int n_threads) {
    const int L1 = Px.Lc, L2 = Py.Lc, L3 = Px.La, nt = Px.n_theta;
    const int k1 = dim(L1), k2 = dim(L2), k3 = dim(L3), kmax = k1 > k2 ? k1 : k2;
    const long n_tiles = (rows + TILE - 1) / TILE;
    int status = GAUNT_OK;
#pragma omp parallel num_threads(n_threads)
    {
        Scratch<T> scratch(4 * (size_t)(k1 + k2 + k3) + (size_t)kmax +
                           (size_t)nt * (2 * L1 + 2 * L2 + 2 * L3 + 2 * (L1 > L2 ? L1 : L2) + 4));
        T *xg = scratch.take(k3), *xx = scratch.take(k1), *xy = scratch.take(k2), *xo = scratch.take(kmax);
        T *xs = scratch.take(k1), *ys = scratch.take(k2), *z = scratch.take(k3);
        T *G = scratch.take((2 * L3 + 1) * nt), *X = scratch.take((2 * L1 + 1) * nt);
        T *Y = scratch.take((2 * L2 + 1) * nt), *C = scratch.take((2 * (L1 > L2 ? L1 : L2) + 1) * nt);
        T *acc1 = gw1 ? scratch.take(k1) : nullptr, *acc2 = gw2 ? scratch.take(k2) : nullptr;
        T *acc3 = gw3 ? scratch.take(k3) : nullptr;
        Scales<T> s(w1, k1, w2, k2, w3, k3, channels, scratch);
        T *dot = (T *)calloc((size_t)channels * (k1 + k2 + k3), sizeof(T));
        T *dot1 = dot, *dot2 = dot1 + (size_t)channels * k1, *dot3 = dot2 + (size_t)channels * k2;
        const bool ok = scratch.ok() && dot != nullptr;
        if (!ok) {
#pragma omp atomic write
            status = GAUNT_OUT_OF_MEMORY;
        }
        auto fold_all = [&](long row0) {
            if (acc1) fold(acc1, k1, row0, channels, dot1);
            if (acc2) fold(acc2, k2, row0, channels, dot2);
            if (acc3) fold(acc3, k3, row0, channels, dot3);
        };
#pragma omp for schedule(static)
        for (long tile = 0; tile < n_tiles; tile++) {
            if (!ok) continue;
            const long row0 = tile * TILE;
            const int n = rows - row0 < TILE ? (int)(rows - row0) : TILE;
            s.at(row0);
            transpose_in(g, k3, row0, n, xg);
            if (acc3) {
                transpose_in(u, k3, row0, n, z);
                accumulate(acc3, xg, z, k3);
            }
            if (w3) scale(xg, s.S[2], k3);
            if (nt == 0)
                G = xg;  // direct plans read w3 ⊙ g itself
            else
                legendre(Px.leg_a, L3, nt, xg, G);
            const T *S1 = w1 ? s.S[0] : nullptr, *S2 = w2 ? s.S[1] : nullptr;
            // x and y enter twice (as the other factor, weighted, and against their own gradient for the weight
            // gradient): one transpose each.
            const T *x_other = xx, *y_other = xy;
            if (gy || acc1) transpose_in(x, k1, row0, n, xx);
            if (gx || acc2) transpose_in(y, k2, row0, n, xy);
            if (gy && S1) {
                scaled_copy(xs, xx, S1, k1);
                x_other = xs;
            }
            if (gx && S2) {
                scaled_copy(ys, xy, S2, k2);
                y_other = ys;
            }
            if (gx) input_gradient(Px, G, y_other, xx, k1, S1, row0, n, Y, C, xo, acc1, gx);
            if (gy) input_gradient(Py, G, x_other, xy, k2, S2, row0, n, X, C, xo, acc2, gy);
            if (!s.fixed) fold_all(row0);
        }
        if (ok) {
            if (s.fixed) fold_all(0);
            if (gw1) reduce(dot1, gw1, (size_t)channels * k1);
            if (gw2) reduce(dot2, gw2, (size_t)channels * k2);
            if (gw3) reduce(dot3, gw3, (size_t)channels * k3);
        }
        free(dot);
    }
    return status;
}

// The C interface: one struct of arguments per call (mirrored by ctypes Structures in gaunt_kernel.py, whose
// sizes gaunt_struct_sizes reports so that a mismatch is caught at load time). Pointers of the tables and the
// tensors are float or double as the entry point's suffix says.
extern "C" {
struct GauntTables {  // one product Γ: (≤ La) × (≤ Lb) -> (≤ Lc), as gaunt_kernel.plan lays it out
    int La, Lb, Lc, n_theta;
    const void *leg_a, *leg_b, *leg_c, *coef;
    const int *start, *gstart, *m1, *m2;
};

struct GauntForwardCall {  // out = sc ⊙ Γ(sa ⊙ a, sb ⊙ b)
    GauntTables p;
    const void *a, *b;
    void *out;
    long rows;
    const void *sa, *sb, *sc;  // [channels][k] or NULL
    int channels, n_threads;
};

struct GauntBackwardCall {  // px: (L3, L2) -> L1, py: (L3, L1) -> L2; see gaunt_backward
    GauntTables px, py;
    const void *g, *x, *y, *u;
    void *gx, *gy;  // NULL: not needed
    long rows;
    const void *w1, *w2, *w3;
    void *gw1, *gw2, *gw3;  // [channels][k], zeroed by the caller, or NULL
    int channels, n_threads;
};

struct GauntConvCall {  // out[io] += sc ⊙ Γ(sa ⊙ a[ia], sb ⊙ b[ib]), per edge and channel; see gaunt_forward
    GauntForwardCall f;         // f.rows = edges × channels
    const long *ia, *ib, *io;  // [edges], or NULL: row r itself
    long out_rows;              // rows of f.out, zeroed by the caller when io is set
};

void gaunt_struct_sizes(long *sizes) {
    sizes[0] = sizeof(GauntTables);
    sizes[1] = sizeof(GauntForwardCall);
    sizes[2] = sizeof(GauntBackwardCall);
    sizes[3] = sizeof(GauntConvCall);
}
}

template <typename T>
static Product<T> product_of(const GauntTables &t) {
    return {t.La, t.Lb, t.Lc, t.n_theta, (const T *)t.leg_a, (const T *)t.leg_b, (const T *)t.leg_c,
            (const T *)t.coef, t.start, t.gstart, t.m1, t.m2};
}

template <typename T>
static int forward_call(const GauntForwardCall *c) {
    return gaunt_forward(product_of<T>(c->p), (const T *)c->a, (const T *)c->b, (T *)c->out, c->rows,
                         (const T *)c->sa, (const T *)c->sb, (const T *)c->sc, c->channels, c->n_threads);
}

template <typename T>
static int conv_call(const GauntConvCall *c) {
    const GauntForwardCall &f = c->f;
    return gaunt_forward(product_of<T>(f.p), (const T *)f.a, (const T *)f.b, (T *)f.out, f.rows, (const T *)f.sa,
                         (const T *)f.sb, (const T *)f.sc, f.channels, f.n_threads, c->ia, c->ib, c->io,
                         c->out_rows);
}

template <typename T>
static int backward_call(const GauntBackwardCall *c) {
    return gaunt_backward(product_of<T>(c->px), product_of<T>(c->py), (const T *)c->g, (const T *)c->x,
                          (const T *)c->y, (const T *)c->u, (T *)c->gx, (T *)c->gy, c->rows, (const T *)c->w1,
                          (const T *)c->w2, (const T *)c->w3, (T *)c->gw1, (T *)c->gw2, (T *)c->gw3, c->channels,
                          c->n_threads);
}

extern "C" int gaunt_forward_f32(const GauntForwardCall *c) { return forward_call<float>(c); }
extern "C" int gaunt_forward_f64(const GauntForwardCall *c) { return forward_call<double>(c); }
extern "C" int gaunt_conv_f32(const GauntConvCall *c) { return conv_call<float>(c); }
extern "C" int gaunt_conv_f64(const GauntConvCall *c) { return conv_call<double>(c); }
extern "C" int gaunt_backward_f32(const GauntBackwardCall *c) { return backward_call<float>(c); }
extern "C" int gaunt_backward_f64(const GauntBackwardCall *c) { return backward_call<double>(c); }
