/* optim.c — AdamW (decoupled weight decay, bias-corrected moments) over the
 * trainable tensors of a model's layout, the warmup + cosine learning-rate
 * schedule, and global gradient-norm clipping. Each is one parallel pass over
 * the parameter buffer, vectorised; results do not depend on the thread count. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include "train/train.h"
#include "util/util.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define OPTIM_SIMD 1
#else
#define OPTIM_SIMD 0
#endif

/* Below this many parameters the passes stay on one thread. */
#define OPTIM_PAR_MIN 65536
/* Gradient-norm partial sums are taken over fixed chunks of this many floats. */
#define NORM_CHUNK 65536

int ds4_adamw_init(ds4_adamw *o, const ds4_model *m) {
    o->t = 0;
    o->m = ds4_alloc_aligned(m->layout.n_floats * sizeof(float));
    o->v = ds4_alloc_aligned(m->layout.n_floats * sizeof(float));
    if (!o->m || !o->v) { ds4_adamw_free(o); return -1; }
    return 0;
}

void ds4_adamw_free(ds4_adamw *o) {
    free(o->m); free(o->v);
    o->m = o->v = NULL;
}

typedef struct adamw_k {
    float b1, b2, c1, c2, lr, eps;
} adamw_k;

/* Elements [k0, k1) of one tensor: p [n], mm, vv [n] moments, g [n] grads. */
static void adamw_range(const adamw_k *K, float wd, float *p, float *mm, float *vv, const float *g,
                        size_t k0, size_t k1) {
    const float b1 = K->b1, b2 = K->b2, c1 = K->c1, c2 = K->c2, lr = K->lr, eps = K->eps;
    size_t k = k0;
#if OPTIM_SIMD
    const __m256 vb1 = _mm256_set1_ps(b1), vb2 = _mm256_set1_ps(b2), va1 = _mm256_set1_ps(1.0f - b1);
    const __m256 va2 = _mm256_set1_ps(1.0f - b2), vc1 = _mm256_set1_ps(c1), vc2 = _mm256_set1_ps(c2);
    const __m256 vlr = _mm256_set1_ps(lr), veps = _mm256_set1_ps(eps), vwd = _mm256_set1_ps(wd);
    /* the scalar formula below, operation for operation (no fused multiply-adds) */
    for (; k + 8 <= k1; k += 8) {
        __m256 gk = _mm256_loadu_ps(g + k), pk = _mm256_loadu_ps(p + k);
        __m256 m1 = _mm256_add_ps(_mm256_mul_ps(vb1, _mm256_loadu_ps(mm + k)), _mm256_mul_ps(va1, gk));
        __m256 v1 = _mm256_add_ps(_mm256_mul_ps(vb2, _mm256_loadu_ps(vv + k)),
                                  _mm256_mul_ps(_mm256_mul_ps(va2, gk), gk));
        _mm256_storeu_ps(mm + k, m1);
        _mm256_storeu_ps(vv + k, v1);
        __m256 mh = _mm256_div_ps(m1, vc1), vh = _mm256_div_ps(v1, vc2);
        __m256 up = _mm256_add_ps(_mm256_div_ps(mh, _mm256_add_ps(_mm256_sqrt_ps(vh), veps)), _mm256_mul_ps(vwd, pk));
        _mm256_storeu_ps(p + k, _mm256_sub_ps(pk, _mm256_mul_ps(vlr, up)));
    }
#endif
    for (; k < k1; k++) {
        mm[k] = b1 * mm[k] + (1.0f - b1) * g[k];
        vv[k] = b2 * vv[k] + (1.0f - b2) * g[k] * g[k];
        const float mh = mm[k] / c1, vh = vv[k] / c2;
        p[k] -= lr * (mh / (sqrtf(vh) + eps) + wd * p[k]);
    }
}

void ds4_adamw_step(ds4_adamw *o, ds4_model *m, const float *grads, float lr) {
    o->t++;
    const adamw_k K = {.b1 = o->beta1, .b2 = o->beta2, .c1 = 1.0f - powf(o->beta1, (float)o->t),
                       .c2 = 1.0f - powf(o->beta2, (float)o->t), .lr = lr, .eps = o->eps};
    const ds4_layout *L = &m->layout;
    /* one region: thread th takes the buffer slice [a, b) across tensors */
    #pragma omp parallel if (L->n_floats >= OPTIM_PAR_MIN)
    {
        const int nt = omp_get_num_threads(), th = omp_get_thread_num();
        const size_t a = L->n_floats * th / nt, b = L->n_floats * (th + 1) / nt;
        for (int i = 0; i < L->n_tensors; i++) {
            const ds4_tensor_info *t = &L->tensors[i];
            const size_t lo = t->offset > a ? t->offset : a, hi = DS4_MIN(t->offset + t->numel, b);
            if (!t->trainable || lo >= hi) continue;
            adamw_range(&K, t->decay ? o->weight_decay : 0.0f, m->params + t->offset, o->m + t->offset,
                        o->v + t->offset, grads + t->offset, lo - t->offset, hi - t->offset);
        }
    }
}

float ds4_lr_schedule(long step, long total, long warmup, float lr, float min_frac) {
    if (warmup > 0 && step < warmup) return lr * (float)(step + 1) / (float)warmup;
    if (total <= warmup) return lr;
    double p = (double)(step - warmup) / (double)(total - warmup);
    if (p > 1) p = 1;
    const double min_lr = lr * min_frac;
    return (float)(min_lr + 0.5 * (lr - min_lr) * (1.0 + cos(M_PI * p)));
}

/* Sum of squares of g [n] in double. */
static double sumsq(const float *g, size_t n) {
    size_t k = 0;
    double s = 0;
#if OPTIM_SIMD
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (; k + 8 <= n; k += 8) {
        __m256 x = _mm256_loadu_ps(g + k);
        __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(x)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1));
        s0 = _mm256_fmadd_pd(lo, lo, s0);
        s1 = _mm256_fmadd_pd(hi, hi, s1);
    }
    double v[4];
    _mm256_storeu_pd(v, _mm256_add_pd(s0, s1));
    s = (v[0] + v[1]) + (v[2] + v[3]);
#endif
    for (; k < n; k++) s += (double)g[k] * g[k];
    return s;
}

float ds4_clip_grad_norm(const ds4_model *m, float *grads, float max_norm) {
    const ds4_layout *L = &m->layout;
    /* chunks: NORM_CHUNK-float pieces of the trainable tensors, summed in order */
    size_t nch = 0;
    for (int i = 0; i < L->n_tensors; i++)
        if (L->tensors[i].trainable) nch += (L->tensors[i].numel + NORM_CHUNK - 1) / NORM_CHUNK;
    double *part = ds4_malloc(DS4_MAX(nch, 1) * sizeof(double));
    size_t *start = ds4_malloc(DS4_MAX(nch, 1) * 2 * sizeof(size_t));
    double ss = 0;
    if (part && start) {
        size_t c = 0;
        for (int i = 0; i < L->n_tensors; i++) {
            const ds4_tensor_info *t = &L->tensors[i];
            if (!t->trainable) continue;
            for (size_t k = 0; k < t->numel; k += NORM_CHUNK, c++) {
                start[2 * c] = t->offset + k;
                start[2 * c + 1] = DS4_MIN(t->numel - k, (size_t)NORM_CHUNK);
            }
        }
        #pragma omp parallel for schedule(static) if (L->n_floats >= OPTIM_PAR_MIN)
        for (size_t j = 0; j < nch; j++) part[j] = sumsq(grads + start[2 * j], start[2 * j + 1]);
        for (size_t j = 0; j < nch; j++) ss += part[j];
    } else {                      /* out of memory: the same sums on one thread */
        for (int i = 0; i < L->n_tensors; i++) {
            const ds4_tensor_info *t = &L->tensors[i];
            if (!t->trainable) continue;
            for (size_t k = 0; k < t->numel; k += NORM_CHUNK)
                ss += sumsq(grads + t->offset + k, DS4_MIN(t->numel - k, (size_t)NORM_CHUNK));
        }
    }
    free(part);
    free(start);
    const float norm = (float)sqrt(ss);
    if (max_norm > 0 && norm > max_norm) {
        const float sc = max_norm / (norm + 1e-6f);
        const size_t n = L->n_floats;
        #pragma omp parallel for schedule(static) if (n >= OPTIM_PAR_MIN)
        for (size_t k = 0; k < n; k++) grads[k] *= sc;
    }
    return norm;
}
