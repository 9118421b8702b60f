/* indexer.c — the lightning indexer (SPEC §1.4): projections, blocked scores
 * over keys stored lane-major in blocks (one arithmetic per (query, key) pair
 * whatever the batch, so prefill and decode select the same keys; AVX2+FMA
 * when compiled for it), exact top-k selection by a sampled threshold,
 * and the KL(p_dense || softmax(I)) training loss with its gradient. */
#include <math.h>
#include <omp.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#include <stdlib.h>
#include <string.h>
#include "kernels/kernels.h"
#include "kernels/tile.h"
#include "model/indexer.h"
#include "model/linear.h"
#include "util/util.h"

#define QB 64            /* queries per selection chunk */

int ds4_indexer_sel_k(const ds4_config *c) {
    if (c->index_topk <= 0) return 0;
    return c->index_topk + (c->sliding_window > 0 ? c->sliding_window : 0);
}

void ds4_indexer_project(const ds4_config *c, const ds4_layer *W, const float *x, const int *pos, int n,
                         float *q, float *k, float *kraw, float *krstd, float *w) {
    const int D = c->hidden_size, Hi = c->index_n_heads, Di = c->index_head_dim;
    ds4_linear(NULL, q, x, W->idx_wq, n, D, Hi * Di, 0);
    ds4_rope(q, pos, n, Hi, Di, c->rope_theta);
    ds4_linear(NULL, kraw, x, W->idx_wk, n, D, Di, 0);
    ds4_rmsnorm(k, krstd, kraw, W->idx_k_norm, n, Di, c->rms_norm_eps);
    ds4_rope(k, pos, n, 1, Di, c->rope_theta);
    ds4_linear(NULL, w, x, W->idx_weights_proj, n, D, Hi, 0);
    const float s = 1.0f / sqrtf((float)Hi);
    for (size_t i = 0; i < (size_t)n * Hi; i++) w[i] *= s;
}

/* ---- scores ---------------------------------------------------------------- */

#define KB DS4_IDX_BLOCK

void ds4_indexer_key_put(float *kb, int j, const float *k, int Di) {
    float *blk = kb + (size_t)(j / KB) * KB * Di + j % KB;
    for (int d = 0; d < Di; d++) blk[(size_t)d * KB] = k[d];
}

/* I[qi*ldI + jj] for queries qi < nq (q rows of Hi*Di, w rows of Hi) and the
 * first nk <= KB keys of one block kt [Di, KB]. Every score accumulates over
 * d in order in its own lane, heads in order: independent of nq and of the
 * block's place (lanes past nk may hold anything and are not stored). */
#if defined(__AVX2__) && defined(__FMA__)
static void score_block(const float *q, const float *w, int nq, int Hi, int Di, const float *kt, int nk,
                        float *I, size_t ldI) {
    const __m256 zero = _mm256_setzero_ps(), rs = _mm256_set1_ps(1.0f / sqrtf((float)Di));
    for (int qi = 0; qi < nq; qi++) {
        const float *qq = q + (size_t)qi * Hi * Di, *ww = w + (size_t)qi * Hi;
        __m256 t0 = zero, t1 = zero, t2 = zero, t3 = zero;
        int h = 0;
        for (; h + 2 <= Hi; h += 2) {          /* two heads at once: 8 independent chains */
            const float *qa = qq + (size_t)h * Di, *qb = qa + Di;
            __m256 a0 = zero, a1 = zero, a2 = zero, a3 = zero, b0 = zero, b1 = zero, b2 = zero, b3 = zero;
            for (int d = 0; d < Di; d++) {
                const float *kr = kt + (size_t)d * KB;
                const __m256 k0 = _mm256_loadu_ps(kr), k1 = _mm256_loadu_ps(kr + 8);
                const __m256 k2 = _mm256_loadu_ps(kr + 16), k3 = _mm256_loadu_ps(kr + 24);
                const __m256 x = _mm256_broadcast_ss(qa + d), y = _mm256_broadcast_ss(qb + d);
                a0 = _mm256_fmadd_ps(x, k0, a0); a1 = _mm256_fmadd_ps(x, k1, a1);
                a2 = _mm256_fmadd_ps(x, k2, a2); a3 = _mm256_fmadd_ps(x, k3, a3);
                b0 = _mm256_fmadd_ps(y, k0, b0); b1 = _mm256_fmadd_ps(y, k1, b1);
                b2 = _mm256_fmadd_ps(y, k2, b2); b3 = _mm256_fmadd_ps(y, k3, b3);
            }
            const __m256 wa = _mm256_broadcast_ss(ww + h), wb = _mm256_broadcast_ss(ww + h + 1);
            t0 = _mm256_fmadd_ps(wa, _mm256_max_ps(a0, zero), t0); t1 = _mm256_fmadd_ps(wa, _mm256_max_ps(a1, zero), t1);
            t2 = _mm256_fmadd_ps(wa, _mm256_max_ps(a2, zero), t2); t3 = _mm256_fmadd_ps(wa, _mm256_max_ps(a3, zero), t3);
            t0 = _mm256_fmadd_ps(wb, _mm256_max_ps(b0, zero), t0); t1 = _mm256_fmadd_ps(wb, _mm256_max_ps(b1, zero), t1);
            t2 = _mm256_fmadd_ps(wb, _mm256_max_ps(b2, zero), t2); t3 = _mm256_fmadd_ps(wb, _mm256_max_ps(b3, zero), t3);
        }
        for (; h < Hi; h++) {
            const float *qa = qq + (size_t)h * Di;
            __m256 a0 = zero, a1 = zero, a2 = zero, a3 = zero;
            for (int d = 0; d < Di; d++) {
                const float *kr = kt + (size_t)d * KB;
                const __m256 x = _mm256_broadcast_ss(qa + d);
                a0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(kr), a0); a1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(kr + 8), a1);
                a2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(kr + 16), a2); a3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(kr + 24), a3);
            }
            const __m256 wa = _mm256_broadcast_ss(ww + h);
            t0 = _mm256_fmadd_ps(wa, _mm256_max_ps(a0, zero), t0); t1 = _mm256_fmadd_ps(wa, _mm256_max_ps(a1, zero), t1);
            t2 = _mm256_fmadd_ps(wa, _mm256_max_ps(a2, zero), t2); t3 = _mm256_fmadd_ps(wa, _mm256_max_ps(a3, zero), t3);
        }
        float *out = I + (size_t)qi * ldI;
        if (nk == KB) {
            _mm256_storeu_ps(out, _mm256_mul_ps(t0, rs)); _mm256_storeu_ps(out + 8, _mm256_mul_ps(t1, rs));
            _mm256_storeu_ps(out + 16, _mm256_mul_ps(t2, rs)); _mm256_storeu_ps(out + 24, _mm256_mul_ps(t3, rs));
        } else {
            float tmp[KB];
            _mm256_storeu_ps(tmp, _mm256_mul_ps(t0, rs)); _mm256_storeu_ps(tmp + 8, _mm256_mul_ps(t1, rs));
            _mm256_storeu_ps(tmp + 16, _mm256_mul_ps(t2, rs)); _mm256_storeu_ps(tmp + 24, _mm256_mul_ps(t3, rs));
            memcpy(out, tmp, sizeof(float) * (size_t)nk);
        }
    }
}
#else
static void score_block(const float *q, const float *w, int nq, int Hi, int Di, const float *kt, int nk,
                        float *I, size_t ldI) {
    const float rs = 1.0f / sqrtf((float)Di);
    for (int qi = 0; qi < nq; qi++) {
        float tot[KB] = {0};
        for (int h = 0; h < Hi; h++) {
            const float *qh = q + ((size_t)qi * Hi + h) * Di;
            float acc[KB] = {0};
            for (int d = 0; d < Di; d++) {
                const float a = qh[d];
                const float *kr = kt + (size_t)d * KB;
                for (int jj = 0; jj < KB; jj++) acc[jj] += a * kr[jj];
            }
            const float wh = w[(size_t)qi * Hi + h];
            for (int jj = 0; jj < KB; jj++) tot[jj] += wh * (acc[jj] > 0.0f ? acc[jj] : 0.0f);
        }
        float *out = I + (size_t)qi * ldI;
        for (int jj = 0; jj < nk; jj++) out[jj] = tot[jj] * rs;
    }
}
#endif

void ds4_indexer_scores(const float *q, const float *w, int Hi, int Di, const float *kb, int n_kv, float *I) {
    for (int j0 = 0; j0 < n_kv; j0 += KB)
        score_block(q, w, 1, Hi, Di, kb + (size_t)j0 * Di, DS4_MIN(KB, n_kv - j0), I + j0, 0);
}

/* ---- selection --------------------------------------------------------------- */

/* The k-th largest (1 <= k <= n) of a [n]; a is reordered (Hoare quickselect,
 * median-of-three pivot, descending). */
static float kth_largest(float *a, int n, int k) {
    int lo = 0, hi = n - 1;
    const int t = k - 1;
    while (lo < hi) {
        float x = a[lo], y = a[lo + (hi - lo) / 2], z = a[hi];
        float p = x > y ? (y > z ? y : (x > z ? z : x)) : (x > z ? x : (y > z ? z : y));
        int i = lo, j = hi;
        while (i <= j) {
            while (a[i] > p) i++;
            while (a[j] < p) j--;
            if (i <= j) { float s = a[i]; a[i] = a[j]; a[j] = s; i++; j--; }
        }
        if (t <= j) hi = j;
        else if (t >= i) lo = i;
        else return a[t];
    }
    return a[t];
}

/* The r-th largest (1 <= r <= 64) of x [n], by insertion into a short
 * descending list: one comparison for most elements. */
static float rth_largest_small(const float *x, int n, int r) {
    float best[64];
    int m = 0;
    for (int i = 0; i < n; i++) {
        const float v = x[i];
        if (m == r && !(v > best[r - 1])) continue;
        int p = m < r ? m++ : r - 1;
        while (p > 0 && v > best[p - 1]) { best[p] = best[p - 1]; p--; }
        best[p] = v;
    }
    return best[r - 1];
}

/* Candidates with I[j] > thr, in index order: values sv, indices si. */
static int compact_gt(const float *I, int n, float thr, float *sv, int *si) {
    int m = 0, j = 0;
#if defined(__AVX2__)
    const __m256 t = _mm256_set1_ps(thr);
    for (; j + 8 <= n; j += 8) {
        unsigned msk = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(I + j), t, _CMP_GT_OQ));
        while (msk) {
            const int b = __builtin_ctz(msk);
            sv[m] = I[j + b];
            si[m++] = j + b;
            msk &= msk - 1;
        }
    }
#endif
    for (; j < n; j++)
        if (I[j] > thr) { sv[m] = I[j]; si[m++] = j; }
    return m;
}

int ds4_indexer_topk(const float *I, int n, int k, int *out, void *scratch) {
    if (n <= k) {
        for (int j = 0; j < n; j++) out[j] = j;
        return n;
    }
    if (k <= 0) return 0;
    float *sv = scratch, *sw = sv + n;               /* [n] candidate values, [n] working copy */
    int *si = (int *)(sw + n);                       /* [n] candidate indices */
    int m = 0;
    if (n >= 1024 && n >= 8 * k) {
        /* threshold thr from an evenly spaced sample of 256, low enough that
         * about 1.5 k + 4 n / 256 values exceed it */
        const int ns = 256, step = n / ns;
        const int r = (int)(1.5 * k * (double)ns / n) + 4;
        if (r <= 64) {
            for (int i = 0; i < ns; i++) sw[i] = I[(size_t)i * step];
            const float thr = rth_largest_small(sw, ns, r);
            m = compact_gt(I, n, thr, sv, si);
            if (m < k) {
                /* ties at thr (relu zeros are common): the answer is every value
                 * above thr plus the first k - m equal to it, if there are enough */
                int *eqi = (int *)(void *)sw, ne = 0;
                const int need = k - m;
                for (int j = 0; j < n && ne < need; j++)
                    if (I[j] == thr) eqi[ne++] = j;
                if (ne == need) {           /* merge two increasing index lists */
                    int a = 0, b = 0, o = 0;
                    while (a < m || b < ne) out[o++] = (b >= ne || (a < m && si[a] < eqi[b])) ? si[a++] : eqi[b++];
                    return o;
                }
            }
        }
    }
    if (m < k) {                                     /* every value is a candidate */
        memcpy(sw, I, sizeof(float) * (size_t)n);
        const float v = kth_largest(sw, n, k);
        int gt = 0;
        for (int j = 0; j < n; j++) gt += I[j] > v;
        int eq = k - gt, o = 0;
        for (int j = 0; j < n && o < k; j++)
            if (I[j] > v || (I[j] == v && eq-- > 0)) out[o++] = j;
        return o;
    }
    memcpy(sw, sv, sizeof(float) * (size_t)m);
    const float v = kth_largest(sw, m, k);
    int gt = 0;
    for (int t = 0; t < m; t++) gt += sv[t] > v;
    int eq = k - gt, o = 0;
    for (int t = 0; t < m && o < k; t++)
        if (sv[t] > v || (sv[t] == v && eq-- > 0)) out[o++] = si[t];
    return o;
}

/* Number of keys with kpos <= p (kpos increasing). */
static int upper_bound(const int *kpos, int n, long p) {
    int a = 0, b = n;
    while (a < b) {
        int mid = a + (b - a) / 2;
        if ((long)kpos[mid] <= p) a = mid + 1; else b = mid;
    }
    return a;
}

int ds4_indexer_select(const ds4_config *c, const float *iq, const float *iw, int nq, const int *qpos,
                       const float *kb, const int *kpos, int n_kv, int *sel) {
    const int Hi = c->index_n_heads, Di = c->index_head_dim, topk = c->index_topk;
    const int win = c->sliding_window, sk = ds4_indexer_sel_k(c);
    const int nth = omp_get_max_threads();
    const int nkv1 = DS4_MAX(n_kv, 1);
    float *I = ds4_malloc(sizeof(float) * (size_t)QB * nkv1);                 /* [QB, n_kv] */
    char *scr = ds4_malloc(DS4_IDX_TOPK_SCRATCH(nkv1) * (size_t)nth);         /* per-thread top-k scratch */
    int *hi = ds4_malloc(sizeof(int) * QB);
    if (!I || !scr || !hi) { free(I); free(scr); free(hi); return -1; }
    for (int q0 = 0; q0 < nq; q0 += QB) {
        const int nb = DS4_MIN(QB, nq - q0);
        int qa = nb, maxhi = 0;      /* queries qa.. need scores (hi > topk), over keys < maxhi */
        for (int i = 0; i < nb; i++) {
            hi[i] = upper_bound(kpos, n_kv, qpos[q0 + i]);
            if (hi[i] > topk && qa == nb) qa = i;
            if (hi[i] > topk && hi[i] > maxhi) maxhi = hi[i];
        }
        const int nblk = (maxhi + KB - 1) / KB;
        if (qa < nb) {
            #pragma omp parallel for schedule(dynamic, 4) num_threads(nth)
            for (int b = 0; b < nblk; b++)
                score_block(iq + (size_t)(q0 + qa) * Hi * Di, iw + (size_t)(q0 + qa) * Hi, nb - qa, Hi, Di,
                            kb + (size_t)b * KB * Di, DS4_MIN(KB, maxhi - b * KB), I + (size_t)qa * nkv1 + b * KB,
                            (size_t)nkv1);
        }
        #pragma omp parallel for schedule(dynamic, 1) num_threads(nth) if (nb > 1)
        for (int i = 0; i < nb; i++) {
            int *out = sel + (size_t)(q0 + i) * sk;
            int n = 0;
            if (hi[i] <= topk) {
                for (int j = 0; j < hi[i]; j++) out[n++] = j;
            } else {
                void *s = scr + (size_t)omp_get_thread_num() * DS4_IDX_TOPK_SCRATCH(nkv1);
                n = ds4_indexer_topk(I + (size_t)i * nkv1, hi[i], topk, out, s);
                if (win > 0) {   /* union with the window keys [jw, hi): drop top-k entries there, append the range */
                    const int jw = upper_bound(kpos, hi[i], (long)qpos[q0 + i] - win);
                    while (n > 0 && out[n - 1] >= jw) n--;
                    for (int j = jw; j < hi[i]; j++) out[n++] = j;
                }
            }
            for (int e = n; e < sk; e++) out[e] = -1;
        }
    }
    free(I); free(scr); free(hi);
    return 0;
}

/* ---- training loss --------------------------------------------------------------- */

static int cmp_int(const void *x, const void *y) {
    int a = *(const int *)x, b = *(const int *)y;
    return (a > b) - (a < b);
}

double ds4_indexer_kl(const ds4_indexer_seg *s, float scale, float *diq, float *diw, float *dik) {
    const int H = s->H, G = s->H / s->K, Dh = s->Dh, Hi = s->Hi, Di = s->Di;
    const size_t Q = (size_t)H * Dh, KD = (size_t)s->K * Dh;
    const double scq = 1.0 / sqrt((double)Dh);
    const float rs = 1.0f / sqrtf((float)Di);
    const int cap = s->sel ? DS4_MAX(s->sel_k, 1) : DS4_MAX(s->n_kv, 1);
    int *cand = ds4_malloc(sizeof(int) * (size_t)cap);
    double *p = ds4_malloc(sizeof(double) * (size_t)cap);
    double *e = ds4_malloc(sizeof(double) * (size_t)cap);
    float *z = ds4_malloc(sizeof(float) * (size_t)cap * Hi);
    if (!cand || !p || !e || !z) { free(cand); free(p); free(e); free(z); return NAN; }
    double total = 0;
    for (int i = 0; i < s->nq; i++) {
        const int hi = upper_bound(s->kpos, s->n_kv, s->qpos[i]);
        int nc = 0;
        if (s->sel) {
            const int *sl = s->sel + (size_t)i * s->sel_k;
            for (int t = 0; t < s->sel_k; t++)
                if (sl[t] >= 0 && sl[t] < hi) cand[nc++] = sl[t];
            qsort(cand, (size_t)nc, sizeof(int), cmp_int);
            int u = 0;
            for (int t = 0; t < nc; t++)
                if (u == 0 || cand[t] != cand[u - 1]) cand[u++] = cand[t];
            nc = u;
        } else {
            for (int j = 0; j < hi; j++) cand[nc++] = j;
        }
        if (nc == 0) continue;
        const float *qi = s->q + (size_t)i * Q, *iqi = s->iq + (size_t)i * Hi * Di, *iwi = s->iw + (size_t)i * Hi;
        const float *lse = s->lse + (size_t)i * H;
        double psum = 0, mx = -INFINITY;
        for (int t = 0; t < nc; t++) {
            const int j = cand[t];
            const float *kj = s->k + (size_t)j * KD;
            double pj = 0;
            for (int h = 0; h < H; h++) {
                const float dot = ds4_tile_dot(qi + (size_t)h * Dh, kj + (size_t)(h / G) * Dh, Dh);
                pj += expf((float)(dot * scq) - lse[h]);
            }
            p[t] = pj;
            psum += pj;
            const float *ikj = s->ik + (size_t)j * Di;
            double Ij = 0;
            for (int h = 0; h < Hi; h++) {
                const float dot = ds4_tile_dot(iqi + (size_t)h * Di, ikj, Di);
                z[(size_t)t * Hi + h] = dot;
                Ij += iwi[h] * (dot > 0 ? dot : 0);
            }
            e[t] = Ij * rs;
            if (e[t] > mx) mx = e[t];
        }
        double Z = 0;
        for (int t = 0; t < nc; t++) Z += exp(e[t] - mx);
        const double lZ = mx + log(Z);
        double kl = 0;
        for (int t = 0; t < nc; t++) {
            p[t] /= psum;
            const double logq = e[t] - lZ;
            if (p[t] > 0) kl += p[t] * (log(p[t]) - logq);
            e[t] = exp(logq);          /* softmax(I) */
        }
        total += kl;
        if (scale == 0.0f) continue;
        for (int t = 0; t < nc; t++) {
            const int j = cand[t];
            const float dI = scale * (float)(e[t] - p[t]);
            const float *ikj = s->ik + (size_t)j * Di;
            float *dikj = dik + (size_t)j * Di;
            for (int h = 0; h < Hi; h++) {
                const float zz = z[(size_t)t * Hi + h];
                if (zz <= 0) continue;
                diw[(size_t)i * Hi + h] += dI * zz * rs;
                const float g = dI * iwi[h] * rs;
                float *dq = diq + ((size_t)i * Hi + h) * Di;
                const float *qh = iqi + (size_t)h * Di;
                for (int d = 0; d < Di; d++) { dq[d] += g * ikj[d]; dikj[d] += g * qh[d]; }
            }
        }
    }
    free(cand); free(p); free(e); free(z);
    return total;
}
