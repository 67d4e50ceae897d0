/* The CPU kernels of the mask mixing methods: each output element is written once, in one pass.
 *
 * Compiled on first use by pipelines/mixing/native.py with the system C compiler and called through
 * ctypes (which releases the GIL, so the Python side can split the batch over threads: every call
 * writes only the samples b0 <= b < b1 of `out`, reading partners from anywhere in `x`).
 *
 * Inputs are contiguous [B, C, D, H, W] batches (1-D and 2-D inputs padded with axes of size 1).
 * The box and mask kernels only select elements, so they move each element's bits as an unsigned
 * integer of its width: the result is the eager PyTorch ops' bit for bit, whatever the dtype.
 * The resize kernel does float32 arithmetic in the order pipelines/mixing/boxes.py's eager
 * resize does it, built with -ffp-contract=off so that no multiply-add is fused behind our back.
 */

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* the selection loops vectorise best with AVX2; target_clones picks the variant at load time,
 * so one build runs on any x86-64 CPU (a node without AVX2 gets the baseline) */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MP_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MP_CLONES
#endif

/* Box geometry shared with pipelines/mixing/boxes.py. Sample b's box on spatial axis k of `size`
 * has a side and a centre, either given (sides/centres: [*, n] int64) or, when `lam` is given,
 * drawn as CutMix draws them: side = floor(sqrt(1 - lam) * size) for 2 axes (floor((1 - lam) * size)
 * for one; 1 - lam clamped to [0, 1]), centre = floor(spot * size) from the uniform `spots`
 * ([*, n] double). Row `b * stride` is sample b's (stride 0: one box for the batch). The box is
 * low = clamp(centre - side / 2, 0, size), high = clamp(centre - side / 2 + side, 0, size); an
 * unmixed sample (mixed[b] == 0) gets an empty one. Axes before the last n are whole. Returns the
 * box's volume. */
static double box_corners(const float *lam, const double *spots, const int64_t *sides, const int64_t *centres,
                          int64_t stride, const uint8_t *mixed, int64_t b, int64_t n, const int64_t *sizes,
                          int64_t *low, int64_t *high) {
  double covered = 1.0;
  const int64_t row = b * stride;
  for (int64_t k = 0; k < 3; ++k) {
    const int64_t axis = k - (3 - n), size = sizes[k];
    if (axis < 0) {
      low[k] = 0;
      high[k] = size;
      continue;
    }
    int64_t side, centre;
    if (lam != NULL) {
      double left = 1.0 - (double)lam[row];
      left = left < 0.0 ? 0.0 : (left > 1.0 ? 1.0 : left);
      side = (int64_t)floor((n == 2 ? sqrt(left) : left) * (double)size);
      centre = (int64_t)floor(spots[row * n + axis] * (double)size);
    } else {
      side = sides[row * n + axis];
      centre = centres[row * n + axis];
    }
    if (!mixed[b]) side = 0;
    int64_t start = centre - side / 2, end = start + side;
    start = start < 0 ? 0 : (start > size ? size : start);
    end = end < 0 ? 0 : (end > size ? size : end);
    low[k] = start;
    high[k] = end;
    covered *= (double)(end - start);
  }
  return covered;
}

/* the rows h0 <= h < h1 of a plane through the box [w0, w1): one branch-free select per row, over
 * WIDTH values (a constant where it can be: for short rows, a loop's set-up costs more than its work) */
#define MP_PASTE_ROWS(T, WIDTH)                                                                           \
  for (int64_t h = h0; h < h1; ++h) {                                                                     \
    const T *restrict ro = o + h * (WIDTH), *restrict rp = p + h * (WIDTH);                               \
    T *restrict rq = q + h * (WIDTH);                                                                     \
    for (int64_t w = 0; w < (WIDTH); ++w) {                                                               \
      const T inside = (T)0 - (T)((w >= w0) & (w < w1));                                                  \
      rq[w] = (rp[w] & inside) | (ro[w] & (T)~inside);                                                    \
    }                                                                                                     \
  }

/* CutMix's paste: out[b] = x[b], with x[index[b]] inside its box at the same place. Rows outside the
 * box are copied whole; a row through it is one branch-free select, which measured faster than
 * three short copies. */
#define MP_PASTE_BOXES(T)                                                                                 \
  MP_CLONES int64_t mp_paste_boxes_##T(const T *x, T *out, const int64_t *index, const float *lam,        \
                                    const double *spots, const int64_t *sides, const int64_t *centres,    \
                                    int64_t stride, const uint8_t *mixed, float *lam_out, int64_t C,      \
                                    int64_t n, int64_t D, int64_t H, int64_t W, int64_t b0, int64_t b1) { \
    const int64_t plane = H * W, volume = D * plane, sample = C * volume;                                 \
    const int64_t sizes[3] = {D, H, W};                                                                   \
    for (int64_t b = b0; b < b1; ++b) {                                                                   \
      int64_t low[3], high[3];                                                                            \
      const double covered = box_corners(lam, spots, sides, centres, stride, mixed, b, n, sizes, low, high); \
      lam_out[b] = (float)(1.0 - covered / (double)volume);                                               \
      const int64_t d0 = low[0], h0 = low[1], w0 = low[2], d1 = high[0], h1 = high[1], w1 = high[2];     \
      const T *own = x + b * sample, *partner = x + index[b] * sample;                                    \
      T *dst = out + b * sample;                                                                          \
      if (d1 <= d0 || h1 <= h0 || w1 <= w0) {                                                             \
        memcpy(dst, own, (size_t)sample * sizeof(T));                                                     \
        continue;                                                                                         \
      }                                                                                                   \
      for (int64_t c = 0; c < C; ++c) {                                                                   \
        for (int64_t d = 0; d < D; ++d) {                                                                 \
          const int64_t at = c * volume + d * plane;                                                      \
          const T *o = own + at, *p = partner + at;                                                       \
          T *q = dst + at;                                                                                \
          if (d < d0 || d >= d1) {                                                                        \
            memcpy(q, o, (size_t)plane * sizeof(T));                                                      \
            continue;                                                                                     \
          }                                                                                               \
          memcpy(q, o, (size_t)(h0 * W) * sizeof(T));                                                    \
          switch (W) {                                                                                    \
            case 32: MP_PASTE_ROWS(T, 32) break;                                                          \
            case 64: MP_PASTE_ROWS(T, 64) break;                                                          \
            default: MP_PASTE_ROWS(T, W)                                                                  \
          }                                                                                               \
          memcpy(q + h1 * W, o + h1 * W, (size_t)((H - h1) * W) * sizeof(T));                             \
        }                                                                                                 \
      }                                                                                                   \
    }                                                                                                     \
    return 0;                                                                                             \
  }

/* position of output index u on an axis of `size` in a field shifted by `shift` (< size) and mirrored
 * when `flip`: ((flip ? size - 1 - u : u) + shift) % size (as pipelines/mixing/fourier.py's
 * shifted_ranks), by a subtraction: a division per row cost a fifth of FMix's whole kernel */
static inline int64_t shifted(int64_t u, int64_t size, int64_t shift, int64_t flip) {
  const int64_t at = (flip ? size - 1 - u : u) + shift;
  return at >= size ? at - size : at;
}

/* one row of WIDTH ranks at `ROW` (uint16 or int32) compared with k, forward or mirrored, into
 * `twice`. Mirrored, gcc vectorises byte masks only as reversed stores and wider ones best as
 * reversed loads (either the other way round measured 1.2-1.5x slower). */
#define MP_MASK_ROW(T, WIDTH, ROW)                                                                        \
  {                                                                                                       \
    const __typeof__(ROW) restrict r = ROW;                                                               \
    if (!flip[2]) {                                                                                       \
      for (int64_t w = 0; w < (WIDTH); ++w) twice[w] = (T)0 - (T)(r[w] < k);                              \
    } else if (sizeof(T) == 1) {                                                                          \
      for (int64_t w = 0; w < (WIDTH); ++w) twice[(WIDTH) - 1 - w] = (T)0 - (T)(r[w] < k);                \
    } else {                                                                                              \
      for (int64_t w = 0; w < (WIDTH); ++w) twice[w] = (T)0 - (T)(r[(WIDTH) - 1 - w] < k);                \
    }                                                                                                     \
  }

/* every mask row of a sample, twice over (2 WIDTH wide): field row (pd, ph), forward or mirrored */
#define MP_MASK_ROWS(T, WIDTH)                                                                            \
  for (int64_t d = 0; d < D; ++d) {                                                                       \
    const int64_t pd = shifted(d, D, shift[0], flip[0]);                                                  \
    for (int64_t h = 0; h < H; ++h) {                                                                     \
      const int64_t from = (pd * H + shifted(h, H, shift[1], flip[1])) * (WIDTH);                         \
      T *restrict twice = mask + (d * H + h) * 2 * (WIDTH);                                               \
      if (bank_width == 2) {                                                                              \
        MP_MASK_ROW(T, WIDTH, (const uint16_t *)f + from)                                                 \
      } else {                                                                                            \
        MP_MASK_ROW(T, WIDTH, (const int32_t *)f + from)                                                  \
      }                                                                                                   \
      T *restrict again = twice + (WIDTH);                                                                \
      for (int64_t w = 0; w < (WIDTH); ++w) again[w] = twice[w];                                          \
    }                                                                                                     \
  }

/* the selection of a plane, row by row, from the doubled mask rows (2W apart) at offset `at`, for rows
 * of WIDTH values (a constant where it can be: a loop of unknown length costs a set-up per row) */
#define MP_BLEND_ROWS(T, WIDTH)                                                                           \
  for (int64_t row = 0; row < rows; ++row) {                                                              \
    const T *restrict m = mask + row * 2 * (WIDTH) + at;                                                  \
    const T *restrict ro = o + row * (WIDTH), *restrict rp = p + row * (WIDTH);                           \
    T *restrict rq = q + row * (WIDTH);                                                                   \
    for (int64_t w = 0; w < (WIDTH); ++w) rq[w] = (ro[w] & m[w]) | (rp[w] & (T)~m[w]);                    \
  }

/* FMix's hard masks, then the selection: x[b] where the rank of a position is below own[b],
 * x[index[b]] elsewhere. The ranks of sample b are either a row of `rank` (int32 [*, N], row
 * b * rank_stride) or, when `bank` is given, a field of the bank (uint16 or int32 ranks, `bank_width`
 * bytes each) read shifted and mirrored on each of the n spatial axes, which never materialises the
 * [B, N] ranks. Sample b's row of `picks` ([B, 1 + 2n] uniform doubles) chooses them as
 * pipelines/mixing/fourier.py's draw_shifts does: field floor(u * fields), then per axis a shift
 * floor(u * size), then per axis a mirror (u < 0.5). own[b] is given, or (own NULL) computed as
 * fourier.py does: N for an unmixed sample, else round-half-even(lam[b] * N) in double;
 * lam_out[b] = own / N. */
#define MP_KEEP_BELOW(T)                                                                                  \
  MP_CLONES int64_t mp_keep_below_##T(                                                                    \
      const T *x, T *out, const int64_t *index, const int32_t *rank, int64_t rank_stride,                 \
      const void *bank, int64_t bank_width, int64_t fields, const double *picks, int64_t n,               \
      const int64_t *own, const float *lam, const uint8_t *mixed, float *lam_out, int64_t C, int64_t D,   \
      int64_t H, int64_t W, int64_t b0, int64_t b1) {                                                     \
    const int64_t N = D * H * W, rows = D * H;                                                            \
    T *mask = (T *)malloc((size_t)(2 * N) * sizeof(T));                                                   \
    if (mask == NULL) return -1;                                                                          \
    for (int64_t b = b0; b < b1; ++b) {                                                                   \
      int64_t own_b;                                                                                      \
      if (own != NULL) {                                                                                  \
        own_b = own[b];                                                                                   \
      } else {                                                                                            \
        own_b = mixed[b] ? (int64_t)nearbyint((double)lam[b] * (double)N) : N;                            \
        lam_out[b] = (float)((double)own_b / (double)N);                                                  \
      }                                                                                                   \
      /* ranks lie in [0, N): the threshold fits an int32, so the compares stay 32-bit wide */            \
      const int32_t k = (int32_t)(own_b < 0 ? 0 : (own_b > N ? N : own_b));                               \
      if (bank == NULL) {                                                                                 \
        const int32_t *r = rank + b * rank_stride;                                                        \
        for (int64_t i = 0; i < N; ++i) mask[i] = (T)0 - (T)(r[i] < k);                                   \
        /* both sources are read whole: FMix's masks change source within most 64-byte runs at 32x32, \
         * so copying runs from one source (and blending the rest) measured slower than this blend */   \
        for (int64_t c = 0; c < C; ++c) {                                                                 \
          const T *o = x + (b * C + c) * N, *p = x + (index[b] * C + c) * N;                              \
          T *q = out + (b * C + c) * N;                                                                   \
          for (int64_t i = 0; i < N; ++i) q[i] = (o[i] & mask[i]) | (p[i] & (T)~mask[i]);                 \
        }                                                                                                 \
        continue;                                                                                         \
      }                                                                                                   \
      const int64_t sizes[3] = {D, H, W};                                                                 \
      int64_t shift[3] = {0, 0, 0}, flip[3] = {0, 0, 0};                                                  \
      const double *pick = picks + b * (1 + 2 * n);                                                       \
      for (int64_t a = 0; a < n; ++a) { /* the kernel's axes are (d, h, w): the input's last n */          \
        shift[3 - n + a] = (int64_t)(pick[1 + a] * (double)sizes[3 - n + a]);                             \
        flip[3 - n + a] = pick[1 + n + a] < 0.5;                                                          \
      }                                                                                                   \
      const int64_t field_bytes = N * bank_width;                                                         \
      const char *f = (const char *)bank + (int64_t)(pick[0] * (double)fields) * field_bytes;             \
      if (b + 1 < b1) { /* the next sample's field: a random one of a bank larger than the L2 cache */    \
        const char *next = (const char *)bank + (int64_t)(pick[1 + 2 * n] * (double)fields) * field_bytes; \
        for (int64_t at = 0; at < field_bytes; at += 64) __builtin_prefetch(next + at);                  \
      }                                                                                                   \
      /* Each mask row twice over (2W wide), read from field row (pd, ph) forward or mirrored: the       \
       * shifted row is then the W values from `at` on, so every loop runs the full width. Mirrored,    \
       * position w reads r[(W - 1 - w + s) % W], which is the reversed row at (w - s) % W. */          \
      const int64_t at = flip[2] ? (W - shift[2]) % W : shift[2];                                         \
      switch (W) {                                                                                        \
        case 32: MP_MASK_ROWS(T, 32) break;                                                               \
        case 64: MP_MASK_ROWS(T, 64) break;                                                               \
        default: MP_MASK_ROWS(T, W)                                                                       \
      }                                                                                                   \
      for (int64_t c = 0; c < C; ++c) {                                                                   \
        const T *o = x + (b * C + c) * N, *p = x + (index[b] * C + c) * N;                                \
        T *q = out + (b * C + c) * N;                                                                     \
        /* rows of 32 or 64 (CIFAR, Tiny-ImageNet) get loops of a known length: no set-up per row */      \
        switch (W) {                                                                                      \
          case 32: MP_BLEND_ROWS(T, 32) break;                                                            \
          case 64: MP_BLEND_ROWS(T, 64) break;                                                            \
          default: MP_BLEND_ROWS(T, W)                                                                    \
        }                                                                                                 \
      }                                                                                                   \
    }                                                                                                     \
    free(mask);                                                                                           \
    return 0;                                                                                             \
  }

/* the selection kernels move elements as unsigned integers of their width */
#define MP_EACH_WIDTH(APPLY) APPLY(uint8_t) APPLY(uint16_t) APPLY(uint32_t) APPLY(uint64_t)
MP_EACH_WIDTH(MP_PASTE_BOXES)
MP_EACH_WIDTH(MP_KEEP_BELOW)

/* Source taps of a half-pixel resize of an axis of `size` into `side` outputs (side <= size):
 * output u samples s = (u + 0.5) * (size / side) - 0.5, clamped to [0, size - 1]. int32 taps let
 * the row loop below vectorise with gathers. */
static void resize_taps(int64_t side, int64_t size, int32_t *first, int32_t *second, float *near, float *far) {
  const double scale = (double)size / (double)side;
  for (int64_t u = 0; u < side; ++u) {
    double s = ((double)u + 0.5) * scale - 0.5;
    s = s < 0.0 ? 0.0 : (s > (double)(size - 1) ? (double)(size - 1) : s);
    const double low = floor(s);
    first[u] = (int32_t)low;
    second[u] = first[u] + 1 < size ? first[u] + 1 : (int32_t)(size - 1);
    far[u] = (float)(s - low);
    near[u] = 1.0f - far[u];
  }
}

/* The box of one plane: `src` (float32 [H, W]) shrunk to [sh, sw] into `box` (rows `box_stride`
 * apart: the output batch itself for float32, a scratch box for uint8). Along h first: for
 * output row i, line[w] = near_h * P[h0, w] + far_h * P[h1, w] over the whole row (contiguous: it
 * vectorises), then near_w * line[w0] + far_w * line[w1] per output (`line` is the row itself when
 * `lines` is 0: a 1-D signal). The other order would read four scattered values per output, not two.
 * The AVX2 variant reads those two with hardware gathers, 8 outputs at a time (gcc emulates a gather
 * with scalar loads, about 10 instructions per output), the AVX-512 one with permutes (rows up to 32
 * wide); they compute the same products and sums, one lane per output, so all agree bit for bit. */
#define MP_RESIZE_PLANE(NAME, ATTRIBUTES, ROW)                                                            \
  ATTRIBUTES static void NAME(const float *src, float *box, int64_t box_stride, float *line, int64_t W,   \
                              int64_t sh, int64_t sw, int64_t lines, const int32_t *h0, const int32_t *h1, \
                              const float *hn, const float *hf, const int32_t *w0, const int32_t *w1,     \
                              const float *wn, const float *wf) {                                         \
    for (int64_t i = 0; i < sh; ++i) {                                                                    \
      const float *v = src;                                                                               \
      if (lines) {                                                                                        \
        const float *r0 = src + (int64_t)h0[i] * W, *r1 = src + (int64_t)h1[i] * W;                       \
        const float near = hn[i], far = hf[i];                                                            \
        for (int64_t w = 0; w < W; ++w) line[w] = near * r0[w] + far * r1[w];                             \
        v = line;                                                                                         \
      }                                                                                                   \
      float *row = box + i * box_stride;                                                                  \
      int64_t j = 0;                                                                                      \
      ROW                                                                                                 \
      for (; j < sw; ++j) row[j] = wn[j] * v[w0[j]] + wf[j] * v[w1[j]];                                   \
    }                                                                                                     \
  }

MP_RESIZE_PLANE(resize_plane, , )

typedef void (*mp_resize_plane_fn)(const float *, float *, int64_t, float *, int64_t, int64_t, int64_t, int64_t,
                                   const int32_t *, const int32_t *, const float *, const float *, const int32_t *,
                                   const int32_t *, const float *, const float *);

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MP_GATHER_ROW                                                                                     \
  for (; j + 8 <= sw; j += 8) {                                                                           \
    const __m256 a = _mm256_i32gather_ps(v, _mm256_loadu_si256((const __m256i *)(w0 + j)), 4);            \
    const __m256 b = _mm256_i32gather_ps(v, _mm256_loadu_si256((const __m256i *)(w1 + j)), 4);            \
    _mm256_storeu_ps(row + j, _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(wn + j), a),                    \
                                            _mm256_mul_ps(_mm256_loadu_ps(wf + j), b)));                  \
  }
MP_RESIZE_PLANE(resize_plane_avx2, __attribute__((target("avx2"))), MP_GATHER_ROW)

/* the first `count` of 16 lanes */
static inline __mmask16 mp_first(int64_t count) {
  return count <= 0 ? (__mmask16)0 : (count >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << count) - 1));
}

/* Rows of at most 32 values fit two AVX-512 registers, and one two-source permute picks any 16 of
 * them: a tenth of the gathers' cost. Masked loads and stores cover the row's end. */
#define MP_PERMUTE_ROW                                                                                    \
  {                                                                                                       \
    const __m512 lo = _mm512_maskz_loadu_ps(mp_first(W), v);                                              \
    const __m512 hi = _mm512_maskz_loadu_ps(mp_first(W - 16), v + 16);                                    \
    for (; j < sw; j += 16) {                                                                             \
      const __mmask16 k = mp_first(sw - j);                                                               \
      const __m512 a = _mm512_permutex2var_ps(lo, _mm512_maskz_loadu_epi32(k, w0 + j), hi);              \
      const __m512 b = _mm512_permutex2var_ps(lo, _mm512_maskz_loadu_epi32(k, w1 + j), hi);              \
      _mm512_mask_storeu_ps(row + j, k, _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, wn + j), a), \
                                                      _mm512_mul_ps(_mm512_maskz_loadu_ps(k, wf + j), b))); \
    }                                                                                                     \
  }
MP_RESIZE_PLANE(resize_plane_avx512, __attribute__((target("avx512f"))), MP_PERMUTE_ROW)

/* the fastest variant this CPU runs for rows of W values (all compute the same bits) */
static mp_resize_plane_fn mp_resize_plane_for(int64_t W) {
  if (W <= 32 && __builtin_cpu_supports("avx512f")) return resize_plane_avx512;
  return __builtin_cpu_supports("avx2") ? resize_plane_avx2 : resize_plane;
}
#else
static mp_resize_plane_fn mp_resize_plane_for(int64_t W) {
  (void)W;
  return resize_plane;
}
#endif

/* ResizeMix's paste: out[b] = x[b], except inside a box holding x[index[b]] shrunk into it
 * (bilinear; linear for 1-D signals, which have H = 1), as pipelines/mixing/boxes.py's ResizeMix:
 * the scale is tau = low + span * lam[b] (in double), each side max(1, round-half-even(tau * size)),
 * placed at start = floor(room * (size - side + 1)) on each of the n axes (room: [*, n] double
 * uniform draws; row b * stride is sample b's). An unmixed sample keeps x[b]. The resize is
 * resize_plane's, in float32, written in place (DIRECT) or, for uint8, rounded to the nearest level
 * from a scratch box. lam_out[b] is the own fraction, 1 - box area / area in double, rounded once. */
#define MP_RESIZE(T, NAME, STORE, DIRECT)                                                                 \
  int64_t NAME(const T *x, T *out, const int64_t *index, const float *lam, double low, double span,       \
            const double *room, int64_t stride, const uint8_t *mixed, float *lam_out, int64_t C,          \
            int64_t n, int64_t H, int64_t W, int64_t b0, int64_t b1) {                                    \
    const int64_t N = H * W;                                                                              \
    int32_t *taps = (int32_t *)malloc((size_t)(2 * (H + W)) * sizeof(int32_t));                          \
    float *work = (float *)malloc((size_t)(2 * (H + W) + 2 * N + W) * sizeof(float));                     \
    if (taps == NULL || work == NULL) { free(taps); free(work); return -1; }                              \
    int32_t *h0 = taps, *h1 = taps + H, *w0 = taps + 2 * H, *w1 = taps + 2 * H + W;                      \
    float *hn = work, *hf = work + H, *wn = work + 2 * H, *wf = work + 2 * H + W;                         \
    float *plane = work + 2 * (H + W), *box = plane + N, *line = box + N;                                 \
    const mp_resize_plane_fn resize = mp_resize_plane_for(W);                                             \
    for (int64_t b = b0; b < b1; ++b) {                                                                   \
      if (!mixed[b]) {                                                                                    \
        memcpy(out + b * C * N, x + b * C * N, (size_t)(C * N) * sizeof(T));                              \
        lam_out[b] = 1.0f;                                                                                \
        continue;                                                                                         \
      }                                                                                                   \
      const double tau = low + span * (double)lam[b * stride];                                            \
      const double *draw = room + b * stride * n;                                                         \
      int64_t sh = 1, y = 0;                                                                              \
      if (n == 2) {                                                                                       \
        sh = (int64_t)nearbyint(tau * (double)H);                                                         \
        sh = sh < 1 ? 1 : sh;                                                                             \
        y = (int64_t)floor(draw[0] * (double)(H - sh + 1));                                               \
      }                                                                                                   \
      int64_t sw = (int64_t)nearbyint(tau * (double)W);                                                   \
      sw = sw < 1 ? 1 : sw;                                                                               \
      const int64_t xs = (int64_t)floor(draw[n - 1] * (double)(W - sw + 1));                              \
      lam_out[b] = (float)(1.0 - (double)sh * (double)sw / (double)N);                                    \
      resize_taps(sh, H, h0, h1, hn, hf);                                                                 \
      resize_taps(sw, W, w0, w1, wn, wf);                                                                 \
      for (int64_t c = 0; c < C; ++c) {                                                                   \
        const T *p = x + (index[b] * C + c) * N, *o = x + (b * C + c) * N;                                \
        T *q = out + (b * C + c) * N;                                                                     \
        /* the own plane in one copy, then the box over it while those lines are in L1: two copies     \
         * a row around the box cost more in call overhead than the box's second write */                 \
        memcpy(q, o, (size_t)N * sizeof(T));                                                              \
        const float *source = MP_PLANE_##T(p, plane, N);                                                  \
        if (DIRECT) {                                                                                     \
          resize(source, (float *)(q + y * W + xs), W, line, W, sh, sw, n == 2, h0, h1, hn, hf, w0, w1,   \
                 wn, wf);                                                                                 \
        } else {                                                                                          \
          resize(source, box, sw, line, W, sh, sw, n == 2, h0, h1, hn, hf, w0, w1, wn, wf);               \
          for (int64_t i = 0; i < sh; ++i)                                                                \
            for (int64_t j = 0; j < sw; ++j) q[(y + i) * W + xs + j] = STORE(box[i * sw + j]);            \
        }                                                                                                 \
      }                                                                                                   \
    }                                                                                                     \
    free(taps);                                                                                           \
    free(work);                                                                                           \
    return 0;                                                                                             \
  }

/* a float32 plane is read in place; a uint8 one is widened into `plane` first (exact) */
static inline const float *MP_PLANE_float(const float *p, float *plane, int64_t N) {
  (void)plane;
  (void)N;
  return p;
}
static inline const float *MP_PLANE_uint8_t(const uint8_t *p, float *plane, int64_t N) {
  for (int64_t i = 0; i < N; ++i) plane[i] = (float)p[i];
  return plane;
}
#define MP_AS_FLOAT(v) (v)
/* round half to even without a libm call (nearbyintf is one without SSE4.1): for 0 <= v < 2^23,
 * adding 2^23 rounds v to an integer in the default rounding mode, and subtracting it is exact */
#define MP_AS_BYTE(v) ((uint8_t)(((v) + 8388608.0f) - 8388608.0f))
MP_RESIZE(float, mp_resize_paste_float32, MP_AS_FLOAT, 1)
MP_RESIZE(uint8_t, mp_resize_paste_uint8, MP_AS_BYTE, 0)

/* The random choices of one mixing call, from a stream seeded by one draw of the call's
 * torch.Generator (pipelines/mixing/sampling.py, whose Python code computes the same, operation for
 * operation, where these kernels are not built: keep the two in step). */

/* SplitMix64 (G. L. Steele, D. Lea, C. H. Flood, "Fast splittable pseudorandom number generators",
 * OOPSLA 2014): a 64-bit counter stepped by the golden gamma, then mixed. */
static inline uint64_t mp_next(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

/* a uniform double in [0, 1): the top 53 bits, exactly */
static inline double mp_uniform(uint64_t *state) { return (double)(mp_next(state) >> 11) * 0x1.0p-53; }

/* log, with log(0) = -inf spelled out (Python's math.log raises there) */
static inline double mp_log(double v) { return v > 0.0 ? log(v) : -INFINITY; }

/* a * e^v, saturating at DBL_MAX where it would overflow (Python's math.exp raises beyond 709.78) */
static inline double mp_scaled_exp(double a, double v) {
  if (v > 709.0) return DBL_MAX;
  const double w = a * exp(v);
  return w > DBL_MAX ? DBL_MAX : w;
}

#define MP_LN4 1.3862943611198906
#define MP_ONE_PLUS_LN5 2.6094379124341005

/* Cheng's Beta(a, b) sampler (R. C. H. Cheng, "Generating beta variates with nonintegral shape
 * parameters", Communications of the ACM 21(4), 1978): algorithm BB when both shapes exceed 1, BC
 * otherwise. `lo`, `hi` are min(a, b), max(a, b); a candidate is a pair of uniforms; w_first says
 * whether the draw is w / (other + w) (else other / (other + w)). */
typedef struct {
  double lo, hi, sum, beta, gamma, k1, k2;
  int bb, w_first;
} mp_cheng;

static mp_cheng mp_cheng_setup(double a, double b) {
  mp_cheng k = {0};
  k.lo = a < b ? a : b;
  k.hi = a < b ? b : a;
  k.sum = a + b;
  k.bb = k.lo > 1.0;
  if (k.bb) {
    k.beta = sqrt((k.sum - 2.0) / (2.0 * k.lo * k.hi - k.sum));
    k.gamma = k.lo + 1.0 / k.beta;
    k.w_first = a == k.lo;
  } else {
    const double delta = 1.0 + k.hi - k.lo;
    k.beta = 1.0 / k.lo;
    k.k1 = delta * (0.0138889 + 0.0416667 * k.lo) / (k.hi * k.beta - 0.777778);
    k.k2 = 0.25 + (0.5 + 0.25 / delta) * k.lo;
    k.w_first = a == k.hi;
  }
  return k;
}

/* One candidate: 1 and the draw in *out when accepted, else 0. */
static int mp_cheng_candidate(const mp_cheng *k, double u1, double u2, double *out) {
  double v, w, z, other;
  if (k->bb) {
    other = k->hi;
    v = k->beta * mp_log(u1 / (1.0 - u1));
    w = mp_scaled_exp(k->lo, v);
    z = u1 * u1 * u2;
    const double r = k->gamma * v - MP_LN4, s = k->lo + r - w;
    if (s + MP_ONE_PLUS_LN5 < 5.0 * z) {
      const double t = mp_log(z);
      if (s < t && r + k->sum * mp_log(k->sum / (k->hi + w)) < t) return 0;
    }
  } else {
    other = k->lo;
    int sure = 0;
    if (u1 < 0.5) {
      const double y = u1 * u2;
      z = u1 * y;
      if (0.25 * u2 + z - y >= k->k1) return 0;
    } else {
      z = u1 * u1 * u2;
      if (z <= 0.25) {
        sure = 1;
      } else if (z >= k->k2) {
        return 0;
      }
    }
    v = k->beta * mp_log(u1 / (1.0 - u1));
    w = mp_scaled_exp(k->hi, v);
    if (!sure && k->sum * (mp_log(k->sum / (k->lo + w)) + v) - MP_LN4 < mp_log(z)) return 0;
  }
  *out = k->w_first ? w / (other + w) : other / (other + w);
  return 1;
}

/* A call's draws from the stream of `seed`, in this order: `extra` uniforms for the method itself
 * (box places, FMix's field picks) into `uniforms`; the partner permutation by Fisher-Yates into
 * `index` (unless it is NULL: given); whether each of `count` samples mixes (u < prob); then λ from
 * as many Cheng candidates as it takes (one uniform each for Beta(1, 1)), 1 for a sample that does
 * not mix. */
void mp_mixing_draws(uint64_t seed, double *uniforms, int64_t extra, int64_t batch, int64_t *index, int64_t count,
                     double prob, uint8_t *mixed, double a, double b, float *lam) {
  uint64_t state = seed;
  for (int64_t i = 0; i < extra; ++i) uniforms[i] = mp_uniform(&state);
  if (index != NULL) {
    for (int64_t i = 0; i < batch; ++i) index[i] = i;
    for (int64_t i = batch - 1; i > 0; --i) {
      int64_t j = (int64_t)(mp_uniform(&state) * (double)(i + 1));
      j = j > i ? i : j;
      const int64_t t = index[i];
      index[i] = index[j];
      index[j] = t;
    }
  }
  for (int64_t i = 0; i < count; ++i) mixed[i] = mp_uniform(&state) < prob;
  if (a == 1.0 && b == 1.0) { /* Beta(1, 1) is the uniform distribution itself */
    for (int64_t i = 0; i < count; ++i) {
      const double draw = mp_uniform(&state);
      lam[i] = mixed[i] ? (float)draw : 1.0f;
    }
    return;
  }
  const mp_cheng k = mp_cheng_setup(a, b);
  for (int64_t i = 0; i < count;) {
    const double u1 = mp_uniform(&state), u2 = mp_uniform(&state);
    double draw;
    if (mp_cheng_candidate(&k, u1, u2, &draw)) {
      lam[i] = mixed[i] ? (float)draw : 1.0f;
      ++i;
    }
  }
}

/* A whole mixing call for the samples b0 <= b < b1 of a batch of `batch`: the call's draws
 * (mp_mixing_draws, all of them, so that every thread of a split batch draws the same), then the
 * method's kernel. `method` is MP_CUTMIX (paste_boxes from λ and place draws), MP_FMIX (keep_below
 * on `bank`'s `fields`; elem mode) or MP_RESIZEMIX (resize_paste with scale low + span * λ);
 * `width` is the element size in bytes (for MP_RESIZEMIX: 4 for float32, 1 for uint8). Writes the
 * samples' partners into index[b0:b1] and their own fractions into lam_out. Returns 0, or -1 when
 * memory ran out or the method is unknown. */
enum { MP_CUTMIX = 0, MP_FMIX = 1, MP_RESIZEMIX = 2 };
#define MP_CUTMIX_CASE(T)                                                                                 \
  case sizeof(T):                                                                                         \
    code = mp_paste_boxes_##T((const T *)x, (T *)out, partners, lam, uniforms, NULL, NULL, stride, mixed, \
                              lam_out, C, n, D, H, W, b0, b1);                                            \
    break;
#define MP_FMIX_CASE(T)                                                                                   \
  case sizeof(T):                                                                                         \
    code = mp_keep_below_##T((const T *)x, (T *)out, partners, NULL, 0, bank, bank_width, fields, uniforms, \
                             n, NULL, lam, mixed, lam_out, C, D, H, W, b0, b1);                           \
    break;

int64_t mp_mix(int64_t method, int64_t width, uint64_t seed, double alpha, double prob, int64_t count, const void *x,
               void *out, int64_t *index, float *lam_out, const void *bank, int64_t bank_width, int64_t fields,
               double low, double span, int64_t C, int64_t n, int64_t D, int64_t H, int64_t W, int64_t batch,
               int64_t b0, int64_t b1) {
  const int64_t extra = count * (method == MP_FMIX ? 1 + 2 * n : n);
  double *uniforms = (double *)malloc((size_t)(extra > 0 ? extra : 1) * sizeof(double));
  int64_t *partners = (int64_t *)malloc((size_t)batch * sizeof(int64_t));
  uint8_t *mixed = (uint8_t *)malloc((size_t)batch);
  float *lam = (float *)malloc((size_t)batch * sizeof(float));
  int64_t code = -1;
  if (uniforms == NULL || partners == NULL || mixed == NULL || lam == NULL) goto done;
  mp_mixing_draws(seed, uniforms, extra, batch, partners, count, prob, mixed, alpha, alpha, lam);
  for (int64_t b = count; b < batch; ++b) { /* batch mode: one draw for every sample */
    mixed[b] = mixed[0];
    lam[b] = lam[0];
  }
  memcpy(index + b0, partners + b0, (size_t)(b1 - b0) * sizeof(int64_t));
  const int64_t stride = count > 1;
  if (method == MP_CUTMIX) {
    switch (width) { MP_EACH_WIDTH(MP_CUTMIX_CASE) }
  } else if (method == MP_FMIX) {
    switch (width) { MP_EACH_WIDTH(MP_FMIX_CASE) }
  } else if (method == MP_RESIZEMIX) {
    if (width == 4)
      code = mp_resize_paste_float32((const float *)x, (float *)out, partners, lam, low, span, uniforms, stride, mixed,
                                     lam_out, C, n, H, W, b0, b1);
    else if (width == 1)
      code = mp_resize_paste_uint8((const uint8_t *)x, (uint8_t *)out, partners, lam, low, span, uniforms, stride,
                                   mixed, lam_out, C, n, H, W, b0, b1);
  }
done:
  free(uniforms);
  free(partners);
  free(mixed);
  free(lam);
  return code;
}
