/* attn_decode.c — decode attention: one query head against the KV cache (or
 * the indexer's key list) in chunks of keys with an online softmax, plus the
 * per-token RoPE table. */
#include <math.h>
#include "kernels/decode.h"
#include "kernels/tile.h"
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

void ds4_rope_table(float *cs, float *sn, int pos, int hd, float theta) {
    /* same double-precision angles as rope_apply in ops.c */
    for (int i = 0; i < hd / 2; i++) {
        double f = pow((double)theta, -2.0 * (double)i / (double)hd), s, c;
        sincos((double)pos * f, &s, &c);
        cs[i] = (float)c;
        sn[i] = (float)s;
    }
}

void ds4_rope_heads(float *x, const float *cs, const float *sn, int nh, int hd) {
    const int half = hd / 2;
    for (int h = 0; h < nh; h++) {
        float *a = x + (size_t)h * hd, *b = a + half;
        for (int i = 0; i < half; i++) {
            float x1 = a[i], x2 = b[i];
            a[i] = x1 * cs[i] - x2 * sn[i];
            b[i] = x2 * cs[i] + x1 * sn[i];
        }
    }
}

static inline float dot(const float *a, const float *b, int n) {
    int i = 0;
    float s = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    __m256 v = _mm256_add_ps(acc0, acc1);
    __m128 t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    t = _mm_add_ps(t, _mm_movehl_ps(t, t));
    t = _mm_add_ss(t, _mm_movehdup_ps(t));
    s = _mm_cvtss_f32(t);
#endif
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* first index j in [0, n) with kpos[j] > p (kpos strictly increasing) */
static int first_after(const int *kpos, int n, long p) {
    int lo = 0, hi = n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (kpos[mid] <= p) lo = mid + 1; else hi = mid;
    }
    return lo;
}

void ds4_attn_decode_head(const ds4_attn *a, int h, float *out) {
    enum { CH = 64 };
    const int Dh = a->head_dim, KD = a->n_kv_heads * Dh, kvh = h / (a->n_heads / a->n_kv_heads);
    const long qp = a->qpos[0];
    /* candidates: keys lo..hi-1, or the slots of the key list (sel, -1 = unused) */
    const int *sel = a->sel;
    const int hi = sel ? a->sel_k : first_after(a->kpos, a->n_kv, qp);
    const int lo = !sel && a->window > 0 ? first_after(a->kpos, hi, qp - a->window) : 0;
    /* scores in base 2 (q k / sqrt(Dh) * log2 e): the weights are 2^(s - max), 8 at a time */
    const float *q = a->q + (size_t)h * Dh, scale = 1.4426950408889634f / sqrtf((float)Dh);
    const float *K = a->k + (size_t)kvh * Dh, *V = a->v + (size_t)kvh * Dh;
    /* the sink starts the softmax: logit sinks[h], weight 2^0 = 1, value 0 */
    float m = a->sinks ? a->sinks[h] * 1.4426950408889634f : -INFINITY, l = a->sinks ? 1.0f : 0.0f;
    for (int d = 0; d < Dh; d++) out[d] = 0.0f;
    float s[CH];
    int kj[CH];
    for (int j0 = lo; j0 < hi; j0 += CH) {
        const int nj = hi - j0 < CH ? hi - j0 : CH;
        float cm = -INFINITY;
        for (int j = 0; j < nj; j++) {
            kj[j] = sel ? sel[j0 + j] : j0 + j;
            /* a listed key must still be visible: causal, and inside the window if any */
            if (sel && (kj[j] < 0 || a->kpos[kj[j]] > qp || (a->window > 0 && qp - a->kpos[kj[j]] >= a->window))) {
                kj[j] = -1;
                s[j] = -INFINITY;          /* weight 0 */
                continue;
            }
            s[j] = dot(q, K + (size_t)kj[j] * KD, Dh) * scale;
            cm = s[j] > cm ? s[j] : cm;
        }
        if (cm > m) {                       /* rescale what is accumulated */
            const float r = exp2f(m - cm);  /* 0 when m is -inf */
            l *= r;
            for (int d = 0; d < Dh; d++) out[d] *= r;
            m = cm;
        }
        if (m == -INFINITY) continue;       /* nothing visible yet */
        l += ds4_tile_exp2_sum(s, nj, m);   /* s[j] = 2^(s[j] - m) */
        for (int j = 0; j < nj; j++) {
            if (kj[j] < 0) continue;
            const float p = s[j], *v = V + (size_t)kj[j] * KD;
            for (int d = 0; d < Dh; d++) out[d] += p * v[d];
        }
    }
    if (l > 0.0f) {
        const float il = 1.0f / l;
        for (int d = 0; d < Dh; d++) out[d] *= il;
    }
}
