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
          for (int64_t h = h0; h < h1; ++h) {                                                             \
            const T *ro = o + h * W, *rp = p + h * W;                                                     \
            T *rq = q + h * W;                                                                            \
            for (int64_t w = 0; w < W; ++w) {                                                             \
              const T inside = (T)0 - (T)((w >= w0) & (w < w1));                                          \
              rq[w] = (rp[w] & inside) | (ro[w] & (T)~inside);                                            \
            }                                                                                             \
          }                                                                                               \
          memcpy(q + h1 * W, o + h1 * W, (size_t)((H - h1) * W) * sizeof(T));                             \
        }                                                                                                 \
      }                                                                                                   \
    }                                                                                                     \
    return 0;                                                                                             \
  }

/* position of output index u on an axis of `size` in a field shifted by `shift` and mirrored when
 * `flip`: ((flip ? size - 1 - u : u) + shift) % size (as pipelines/mixing/fourier.py's shifted_ranks) */
static inline int64_t shifted(int64_t u, int64_t size, int64_t shift, int64_t flip) {
  return ((flip ? size - 1 - u : u) + shift) % size;
}

/* FMix's hard masks, then the selection: x[b] where the rank of a position is below own[b],
 * x[index[b]] elsewhere. The ranks of sample b are either a row of `rank` (int32 [*, N], row
 * b * rank_stride) or, when `bank` is given, field[b] of the bank read shifted and mirrored on each
 * axis (shift_*: int32 [B], flip_*: bool [B]; NULL for an axis the input lacks), which never
 * materialises the [B, N] ranks. own[b] is given, or (own NULL) computed as pipelines/mixing/fourier.py
 * does: N for an unmixed sample, else round-half-even(lam[b] * N) in double; lam_out[b] = own / N. */
#define MP_KEEP_BELOW(T)                                                                                  \
  MP_CLONES int64_t mp_keep_below_##T(                                                                    \
      const T *x, T *out, const int64_t *index, const int32_t *rank, int64_t rank_stride,                 \
      const int32_t *bank, const int32_t *field, const int32_t *shift_d, const int32_t *shift_h,          \
      const int32_t *shift_w, const uint8_t *flip_d, const uint8_t *flip_h, const uint8_t *flip_w,        \
      const int64_t *own, const float *lam, const uint8_t *mixed, float *lam_out, int64_t C, int64_t D,   \
      int64_t H, int64_t W, int64_t b0, int64_t b1) {                                                     \
    const int64_t N = D * H * W;                                                                          \
    T *mask = (T *)malloc((size_t)N * sizeof(T));                                                         \
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
      } else {                                                                                            \
        const int32_t *f = bank + (int64_t)field[b] * N;                                                  \
        const int64_t sw = shift_w[b];                                                                    \
        for (int64_t d = 0; d < D; ++d) {                                                                 \
          const int64_t pd = shift_d ? shifted(d, D, shift_d[b], flip_d[b]) : d;                          \
          for (int64_t h = 0; h < H; ++h) {                                                               \
            const int64_t ph = shift_h ? shifted(h, H, shift_h[b], flip_h[b]) : h;                        \
            const int32_t *r = f + (pd * H + ph) * W;                                                     \
            T *m = mask + (d * H + h) * W;                                                                \
            /* the last axis in two contiguous runs (forward, or backward when mirrored) */             \
            if (!flip_w[b]) {                                                                             \
              for (int64_t w = 0; w < W - sw; ++w) m[w] = (T)0 - (T)(r[w + sw] < k);                      \
              for (int64_t w = W - sw; w < W; ++w) m[w] = (T)0 - (T)(r[w + sw - W] < k);                  \
            } else {                                                                                      \
              for (int64_t w = 0; w < sw; ++w) m[w] = (T)0 - (T)(r[sw - 1 - w] < k);                       \
              for (int64_t w = sw; w < W; ++w) m[w] = (T)0 - (T)(r[W - 1 - w + sw] < k);                   \
            }                                                                                             \
          }                                                                                               \
        }                                                                                                 \
      }                                                                                                   \
      /* both sources are read whole: FMix's masks change source within most 64-byte runs at 32x32, \
       * so copying runs from one source (and blending the rest) measured slower than this blend */     \
      for (int64_t c = 0; c < C; ++c) {                                                                   \
        const T *o = x + (b * C + c) * N, *p = x + (index[b] * C + c) * N;                                \
        T *q = out + (b * C + c) * N;                                                                     \
        for (int64_t i = 0; i < N; ++i) q[i] = (o[i] & mask[i]) | (p[i] & (T)~mask[i]);                   \
      }                                                                                                   \
    }                                                                                                     \
    free(mask);                                                                                           \
    return 0;                                                                                             \
  }

MP_PASTE_BOXES(uint8_t)
MP_PASTE_BOXES(uint16_t)
MP_PASTE_BOXES(uint32_t)
MP_PASTE_BOXES(uint64_t)
MP_KEEP_BELOW(uint8_t)
MP_KEEP_BELOW(uint16_t)
MP_KEEP_BELOW(uint32_t)
MP_KEEP_BELOW(uint64_t)

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

/* The box of one plane: `src` (float32 [H, W]) shrunk to [sh, sw] into `box`. Along w first,
 * t_r = near_w * P[r, w0] + far_w * P[r, w1] for the two source rows of output row i, then
 * near_h * t_0 + far_h * t_1 (only t_0 when `lines` is 0: a 1-D signal). */
static void resize_plane(const float *src, float *box, int64_t W, int64_t sh, int64_t sw, int64_t lines,
                         const int32_t *h0, const int32_t *h1, const float *hn, const float *hf, const int32_t *w0,
                         const int32_t *w1, const float *wn, const float *wf) {
  for (int64_t i = 0; i < sh; ++i) {
    const float *r0 = src + (int64_t)h0[i] * W, *r1 = src + (int64_t)h1[i] * W;
    const float near = hn[i], far = hf[i];
    float *row = box + i * sw;
    for (int64_t j = 0; j < sw; ++j) {
      const float t0 = wn[j] * r0[w0[j]] + wf[j] * r0[w1[j]];
      row[j] = lines ? near * t0 + far * (wn[j] * r1[w0[j]] + wf[j] * r1[w1[j]]) : t0;
    }
  }
}

/* ResizeMix's paste: out[b] = x[b], except inside a box holding x[index[b]] shrunk into it
 * (bilinear; linear for 1-D signals, which have H = 1), as pipelines/mixing/boxes.py's ResizeMix:
 * the scale is tau = low + span * lam[b] (in double), each side max(1, round-half-even(tau * size)),
 * placed at start = floor(room * (size - side + 1)) on each of the n axes (room: [*, n] double
 * uniform draws; row b * stride is sample b's). An unmixed sample keeps x[b]. The resize is
 * resize_plane's, in float32; uint8 results are rounded to the nearest level. lam_out[b] is the
 * own fraction, 1 - box area / area in double, rounded once. */
#define MP_RESIZE(T, NAME, STORE)                                                                         \
  int64_t NAME(const T *x, T *out, const int64_t *index, const float *lam, double low, double span,       \
            const double *room, int64_t stride, const uint8_t *mixed, float *lam_out, int64_t C,          \
            int64_t n, int64_t H, int64_t W, int64_t b0, int64_t b1) {                                    \
    const int64_t N = H * W;                                                                              \
    int32_t *taps = (int32_t *)malloc((size_t)(2 * (H + W)) * sizeof(int32_t));                          \
    float *work = (float *)malloc((size_t)(2 * (H + W) + 2 * N) * sizeof(float));                         \
    if (taps == NULL || work == NULL) { free(taps); free(work); return -1; }                              \
    int32_t *h0 = taps, *h1 = taps + H, *w0 = taps + 2 * H, *w1 = taps + 2 * H + W;                      \
    float *hn = work, *hf = work + H, *wn = work + 2 * H, *wf = work + 2 * H + W;                         \
    float *plane = work + 2 * (H + W), *box = plane + N;                                                  \
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
        const T *p = x + (index[b] * C + c) * N;                                                          \
        const float *source = MP_PLANE_##T(p, plane, N);                                                  \
        resize_plane(source, box, W, sh, sw, n == 2, h0, h1, hn, hf, w0, w1, wn, wf);                     \
        const T *o = x + (b * C + c) * N;                                                                 \
        T *q = out + (b * C + c) * N;                                                                     \
        /* own values around the box, the resized partner in it: each element written once */            \
        memcpy(q, o, (size_t)(y * W) * sizeof(T));                                                        \
        for (int64_t i = 0; i < sh; ++i) {                                                                \
          T *dst = q + (y + i) * W;                                                                       \
          const T *src = o + (y + i) * W;                                                                 \
          const float *row = box + i * sw;                                                                \
          memcpy(dst, src, (size_t)xs * sizeof(T));                                                       \
          for (int64_t j = 0; j < sw; ++j) dst[xs + j] = STORE(row[j]);                                   \
          memcpy(dst + xs + sw, src + xs + sw, (size_t)(W - xs - sw) * sizeof(T));                        \
        }                                                                                                 \
        memcpy(q + (y + sh) * W, o + (y + sh) * W, (size_t)((H - y - sh) * W) * sizeof(T));               \
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
#define MP_AS_BYTE(v) ((uint8_t)nearbyintf(v))
MP_RESIZE(float, mp_resize_paste_float32, MP_AS_FLOAT)
MP_RESIZE(uint8_t, mp_resize_paste_uint8, MP_AS_BYTE)

/* Marsaglia-Tsang Gamma sampling (pipelines/mixing/sampling.py), the arithmetic between PyTorch's
 * draws and logs, in the eager code's order. v = (1 + c z)^3. mp_gamma_logs_of lays out what is
 * logged next, in one buffer so that one log call serves both: [u | v, or 1 where v <= 0]. */
static inline double gamma_cube(double z, double c) {
  const double t = 1.0 + c * z;
  return t * t * t;
}

void mp_gamma_logs_of(const double *z, const double *u, double *both, double c, int64_t m) {
  memcpy(both, u, (size_t)m * sizeof(double));
  for (int64_t i = 0; i < m; ++i) {
    const double v = gamma_cube(z[i], c);
    both[m + i] = v > 0.0 ? v : 1.0;
  }
}

/* With logs = [log u | log v]: the accepted candidates' log v + log d, in the order drawn, at most
 * `missing` of them, into `out`; returns how many. */
int64_t mp_gamma_accept(const double *z, const double *logs, double c, double d, double log_d, int64_t m,
                        int64_t missing, double *out) {
  int64_t kept = 0;
  for (int64_t i = 0; i < m && kept < missing; ++i) {
    const double v = gamma_cube(z[i], c), log_u = logs[i], log_v = logs[m + i];
    if (v > 0.0 && log_u < 0.5 * z[i] * z[i] + d - d * v + d * log_v) out[kept++] = log_v + log_d;
  }
  return kept;
}
