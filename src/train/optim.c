/* optim.c — AdamW (decoupled weight decay, bias-corrected moments) over the
 * trainable tensors of a model's layout, the warmup + cosine learning-rate
 * schedule, and global gradient-norm clipping. */
#include <math.h>
#include <stdlib.h>
#include "train/train.h"
#include "util/util.h"

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

void ds4_adamw_step(ds4_adamw *o, ds4_model *m, const float *grads, float lr) {
    o->t++;
    const float b1 = o->beta1, b2 = o->beta2;
    const float c1 = 1.0f - powf(b1, (float)o->t), c2 = 1.0f - powf(b2, (float)o->t);
    for (int i = 0; i < m->layout.n_tensors; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        if (!t->trainable) continue;
        const float wd = t->decay ? o->weight_decay : 0.0f;
        float *p = m->params + t->offset, *mm = o->m + t->offset, *vv = o->v + t->offset;
        const float *g = grads + t->offset;
        const long n = (long)t->numel;
        #pragma omp parallel for schedule(static) if (n > 32768)
        for (long k = 0; k < n; k++) {
            mm[k] = b1 * mm[k] + (1.0f - b1) * g[k];
            vv[k] = b2 * vv[k] + (1.0f - b2) * g[k] * g[k];
            const float mh = mm[k] / c1, vh = vv[k] / c2;
            p[k] -= lr * (mh / (sqrtf(vh) + o->eps) + wd * p[k]);
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

float ds4_clip_grad_norm(const ds4_model *m, float *grads, float max_norm) {
    double ss = 0;
    for (int i = 0; i < m->layout.n_tensors; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        if (!t->trainable) continue;
        const float *g = grads + t->offset;
        double s = 0;
        for (size_t k = 0; k < t->numel; k++) s += (double)g[k] * g[k];
        ss += s;
    }
    const float norm = (float)sqrt(ss);
    if (max_norm > 0 && norm > max_norm) {
        const float sc = max_norm / (norm + 1e-6f);
        for (size_t k = 0; k < m->layout.n_floats; k++) grads[k] *= sc;
    }
    return norm;
}
