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
 * gaunt_forward:  out = sc ⊙ Γ(sa ⊙ a, sb ⊙ b); optionally raw = Γ(sa ⊙ a, sb ⊙ b).
 * gaunt_backward: for out = w3 ⊙ Γ(w1 ⊙ x, w2 ⊙ y) and its gradient g: gx = w1 ⊙ Γ(w3 ⊙ g, w2 ⊙ y) (degrees of x),
 *   gy = w2 ⊙ Γ(w3 ⊙ g, w1 ⊙ x) (degrees of y), and per channel gw1 += Σ Γ(w3 ⊙ g, w2 ⊙ y) ⊙ x,
 *   gw2 += Σ Γ(w3 ⊙ g, w1 ⊙ x) ⊙ y, gw3 += Σ g ⊙ u (u the saved raw product). The Legendre step of g is shared.
 */
#include <cstdlib>
#include <cstring>

// Rows per tile; each step works on whole SIMD vectors of rows (GCC/Clang vector extension, split into
// narrower registers by the compiler where the CPU has no 64-byte vectors). Explicit vectors keep the compiler
// from vectorising the wrong loop (it gathers across table entries otherwise).
constexpr int TILE = 32;

template <typename T>
struct Tile {
    typedef T V __attribute__((vector_size(64)));
    static constexpr int NV = TILE * sizeof(T) / 64;  // vectors per tile
};

template <typename T>
struct Product {
    int La, Lb, Lc, n_theta;
    const T *leg_a, *leg_b, *leg_c, *coef;
    const int *start, *gstart, *m1, *m2;
};

static inline int dim(int L) { return (L + 1) * (L + 1); }

// Rows row0 .. row0+n-1 of src [rows][k] into dst [k][TILE], times the channel's scale; zero past row n.
template <typename T>
static void load(const T *src, const T *scale, int k, long row0, int n, int channels, T *dst) {
    if (n < TILE) memset(dst, 0, sizeof(T) * TILE * (size_t)k);
    for (int t = 0; t < n; t++) {
        const T *row = src + (row0 + t) * k;
        const T *s = scale ? scale + ((row0 + t) % channels) * k : nullptr;
        for (int j = 0; j < k; j++) dst[j * TILE + t] = s ? row[j] * s[j] : row[j];
    }
}

// Legendre step: x [(L+1)²][TILE] -> F [2L+1][n_theta][TILE].
template <typename T>
static void legendre(const T *leg, int L, int n_theta, const T *xs, T *Fs) {
    typedef typename Tile<T>::V V;
    constexpr int NV = Tile<T>::NV;
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

// Product in φ-Fourier space and the adjoint Legendre step: A, B -> coefficients out [(Lc+1)²][TILE].
template <typename T>
static void product(const Product<T> &P, const T *As, const T *Bs, T *Cs, T *outs) {
    typedef typename Tile<T>::V V;
    constexpr int NV = Tile<T>::NV;
    const int n_theta = P.n_theta, Lc = P.Lc;
    const V *A = (const V *)As, *B = (const V *)Bs;
    V *C = (V *)Cs, *out = (V *)outs;
    for (int m3 = 0; m3 < 2 * Lc + 1; m3++)
        for (int i = 0; i < n_theta; i++) {
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
    for (int mi = 0; mi < 2 * Lc + 1; mi++) {
        const int m = mi - Lc, am = m < 0 ? -m : m;
        for (int l = am; l <= Lc; l++) {
            V acc[NV] = {};
            for (int i = 0; i < n_theta; i++) {
                const T p = P.leg_c[((size_t)mi * n_theta + i) * (Lc + 1) + l - am];
                const V *c = C + ((size_t)mi * n_theta + i) * NV;
                for (int s = 0; s < NV; s++) acc[s] += p * c[s];
            }
            for (int s = 0; s < NV; s++) out[(size_t)(l * l + l + m) * NV + s] = acc[s];
        }
    }
}

// Store a product tile u [k][TILE] to rows of dst (times the channel's scale), optionally the unscaled u to raw,
// and add Σ u ⊙ z over the tile's rows of each channel to dot [channels][k].
template <typename T>
static void store(const T *u, const T *scale, int k, long row0, int n, int channels, T *dst, T *raw, const T *z,
                  T *dot) {
    for (int t = 0; t < n; t++) {
        const long r = row0 + t;
        const int channel = (int)(r % channels);
        const T *s = scale ? scale + channel * k : nullptr;
        for (int j = 0; j < k; j++) dst[r * k + j] = s ? u[j * TILE + t] * s[j] : u[j * TILE + t];
        if (raw)
            for (int j = 0; j < k; j++) raw[r * k + j] = u[j * TILE + t];
        if (dot)
            for (int j = 0; j < k; j++) dot[channel * k + j] += u[j * TILE + t] * z[r * k + j];
    }
}

// Per-thread scratch of `count` tile-sized blocks of the given sizes, 64-byte aligned.
template <typename T>
struct Scratch {
    T *base = nullptr;
    explicit Scratch(size_t values) { base = (T *)aligned_alloc(64, ((values * sizeof(T) + 63) / 64) * 64); }
    ~Scratch() { free(base); }
};

template <typename T>
static void reduce(T *partial, T *total, size_t count) {
    if (!partial) return;
#pragma omp critical
    for (size_t j = 0; j < count; j++) total[j] += partial[j];
    free(partial);
}

template <typename T>
static void gaunt_forward(const Product<T> &P, const T *a, const T *b, T *out, T *raw, long rows, const T *sa,
                          const T *sb, const T *sc, int channels, int n_threads) {
    const int ka = dim(P.La), kb = dim(P.Lb), kc = dim(P.Lc), nt = P.n_theta;
    const long n_tiles = (rows + TILE - 1) / TILE;
#pragma omp parallel num_threads(n_threads)
    {
        const size_t sizes[] = {(size_t)ka, (size_t)kb, (size_t)kc, (size_t)(2 * P.La + 1) * nt,
                                (size_t)(2 * P.Lb + 1) * nt, (size_t)(2 * P.Lc + 1) * nt};
        size_t total = 0;
        for (size_t s : sizes) total += s * TILE;
        Scratch<T> scratch(total);
        T *xa = scratch.base, *xb = xa + ka * TILE, *xc = xb + kb * TILE, *A = xc + kc * TILE;
        T *B = A + sizes[3] * TILE, *C = B + sizes[4] * TILE;
#pragma omp for schedule(static)
        for (long tile = 0; tile < n_tiles; tile++) {
            const long row0 = tile * TILE;
            const int n = rows - row0 < TILE ? (int)(rows - row0) : TILE;
            load(a, sa, ka, row0, n, channels, xa);
            load(b, sb, kb, row0, n, channels, xb);
            legendre(P.leg_a, P.La, nt, xa, A);
            legendre(P.leg_b, P.Lb, nt, xb, B);
            product(P, A, B, C, xc);
            store(xc, sc, kc, row0, n, channels, out, raw, (const T *)nullptr, (T *)nullptr);
        }
    }
}

// Px: (L3, L2) -> L1 and Py: (L3, L1) -> L2, both with the output's degree L3 in role a.
template <typename T>
static void gaunt_backward(const Product<T> &Px, const Product<T> &Py, const T *g, const T *x, const T *y,
                           const T *u, T *gx, T *gy, long rows, const T *w1, const T *w2, const T *w3, T *gw1,
                           T *gw2, T *gw3, int channels, int n_threads) {
    const int L1 = Px.Lc, L2 = Py.Lc, L3 = Px.La, nt = Px.n_theta;
    const int k1 = dim(L1), k2 = dim(L2), k3 = dim(L3);
    const long n_tiles = (rows + TILE - 1) / TILE;
#pragma omp parallel num_threads(n_threads)
    {
        const size_t sizes[] = {(size_t)k3, (size_t)k1, (size_t)k2, (size_t)(k1 > k2 ? k1 : k2),
                                (size_t)(2 * L3 + 1) * nt, (size_t)(2 * L1 + 1) * nt, (size_t)(2 * L2 + 1) * nt,
                                (size_t)(2 * (L1 > L2 ? L1 : L2) + 1) * nt};
        size_t total = 0;
        for (size_t s : sizes) total += s * TILE;
        Scratch<T> scratch(total);
        T *xg = scratch.base, *xx = xg + sizes[0] * TILE, *xy = xx + sizes[1] * TILE, *xo = xy + sizes[2] * TILE;
        T *G = xo + sizes[3] * TILE, *X = G + sizes[4] * TILE, *Y = X + sizes[5] * TILE, *C = Y + sizes[6] * TILE;
        T *dw1 = gw1 ? (T *)calloc((size_t)channels * k1, sizeof(T)) : nullptr;
        T *dw2 = gw2 ? (T *)calloc((size_t)channels * k2, sizeof(T)) : nullptr;
        T *dw3 = gw3 ? (T *)calloc((size_t)channels * k3, sizeof(T)) : nullptr;
#pragma omp for schedule(static)
        for (long tile = 0; tile < n_tiles; tile++) {
            const long row0 = tile * TILE;
            const int n = rows - row0 < TILE ? (int)(rows - row0) : TILE;
            if (dw3)
                for (int t = 0; t < n; t++) {
                    const long r = row0 + t;
                    T *d = dw3 + (r % channels) * k3;
                    for (int j = 0; j < k3; j++) d[j] += g[r * k3 + j] * u[r * k3 + j];
                }
            load(g, w3, k3, row0, n, channels, xg);
            legendre(Px.leg_a, L3, nt, xg, G);
            if (gx || dw1) {
                load(y, w2, k2, row0, n, channels, xy);
                legendre(Px.leg_b, L2, nt, xy, Y);
                product(Px, G, Y, C, xo);
                store(xo, w1, k1, row0, n, channels, gx, (T *)nullptr, x, dw1);
            }
            if (gy || dw2) {
                load(x, w1, k1, row0, n, channels, xx);
                legendre(Py.leg_b, L1, nt, xx, X);
                product(Py, G, X, C, xo);
                store(xo, w2, k2, row0, n, channels, gy, (T *)nullptr, y, dw2);
            }
        }
        reduce(dw1, gw1, (size_t)channels * k1);
        reduce(dw2, gw2, (size_t)channels * k2);
        reduce(dw3, gw3, (size_t)channels * k3);
    }
}

#define PRODUCT(T, P) const T *P##_leg_a, const T *P##_leg_b, const T *P##_leg_c, const T *P##_coef, \
    const int *P##_start, const int *P##_gstart, const int *P##_m1, const int *P##_m2
#define MAKE(P, La, Lb, Lc) {La, Lb, Lc, n_theta, P##_leg_a, P##_leg_b, P##_leg_c, P##_coef, P##_start, \
    P##_gstart, P##_m1, P##_m2}

#define GAUNT_ENTRIES(T, SUFFIX)                                                                             \
    extern "C" void gaunt_forward_##SUFFIX(int La, int Lb, int Lc, int n_theta, PRODUCT(T, p), const T *a, \
                                           const T *b, T *out, T *raw, long rows, const T *sa, const T *sb, \
                                           const T *sc, int channels, int n_threads) {                      \
        const Product<T> P = MAKE(p, La, Lb, Lc);                                                            \
        gaunt_forward(P, a, b, out, raw, rows, sa, sb, sc, channels, n_threads);                             \
    }                                                                                                        \
    extern "C" void gaunt_backward_##SUFFIX(int L1, int L2, int L3, int n_theta, PRODUCT(T, px),           \
                                            PRODUCT(T, py), const T *g, const T *x, const T *y, const T *u, \
                                            T *gx, T *gy, long rows, const T *w1, const T *w2, const T *w3, \
                                            T *gw1, T *gw2, T *gw3, int channels, int n_threads) {          \
        const Product<T> Px = MAKE(px, L3, L2, L1), Py = MAKE(py, L3, L1, L2);                               \
        gaunt_backward(Px, Py, g, x, y, u, gx, gy, rows, w1, w2, w3, gw1, gw2, gw3, channels, n_threads);    \
    }

GAUNT_ENTRIES(float, f32)
GAUNT_ENTRIES(double, f64)
