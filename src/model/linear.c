/* linear.c — ds4_linear: find the tensor a weight pointer belongs to (binary
 * search over the layout's offsets), then run the quantized kernel on its
 * blocks or the fp32 matmul; then the LoRA slot adds an attached adapter. */
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/kernels.h"
#include "model/linear.h"
#include "model/quantized.h"
#include "util/util.h"

int ds4_linear_lookup(const ds4_model *m, const float *w, int in, int out, const void **qdata, int *x8, int *skip) {
    *qdata = NULL;
    *x8 = *skip = 0;
    if (!m) m = ds4_quant_owner_of(w);
    if (!m || !m->quant || !m->params) return DS4_Q_F32;
    uintptr_t base = (uintptr_t)m->params, p = (uintptr_t)w;
    if (p < base || p >= base + m->layout.n_floats * sizeof(float)) return DS4_Q_F32;
    size_t off = (size_t)(p - base) / sizeof(float);
    const ds4_tensor_info *ts = m->layout.tensors;
    int lo = 0, hi = m->layout.n_tensors - 1;      /* last tensor with offset <= off */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (ts[mid].offset <= off) lo = mid; else hi = mid - 1;
    }
    const ds4_tensor_info *t = &ts[lo];
    const ds4_qtensor *q = &m->quant->t[lo];
    if (q->type == DS4_Q_F32 || t->ndim != 2 || t->shape[1] != in) return DS4_Q_F32;
    size_t rel = off - t->offset;
    if (rel % (size_t)in) return DS4_Q_F32;                 /* not a row start */
    size_t row0 = rel / (size_t)in;
    if (row0 + (size_t)out > (size_t)t->shape[0]) return DS4_Q_F32;
    if (q->x8) {
        *x8 = 1;
        *skip = (int)(row0 % 8);
        row0 -= (size_t)*skip;
    }
    *qdata = (const char *)q->data + row0 * q->row_bytes;
    return q->type;
}

/* ---- LoRA: models with an attached adapter, found by weight pointer ------ */
#define N_LORA 64
static _Atomic(const ds4_model *) g_lora[N_LORA];
static _Atomic int g_n_lora;
static _Thread_local float *tl_lora;       /* [n, r] x A^T */
static _Thread_local size_t tl_lora_cap;

int ds4_linear_set_lora(ds4_model *m, ds4_lora_slot *slot) {
    for (int i = 0; i < N_LORA && m->lora; i++) {
        const ds4_model *expect = m;
        if (atomic_compare_exchange_strong(&g_lora[i], &expect, NULL)) atomic_fetch_sub(&g_n_lora, 1);
    }
    m->lora = NULL;
    if (!slot) return 0;
    for (int i = 0; i < N_LORA; i++) {
        const ds4_model *expect = NULL;
        if (atomic_compare_exchange_strong(&g_lora[i], &expect, m)) {
            atomic_fetch_add(&g_n_lora, 1);
            m->lora = slot;
            return 0;
        }
    }
    ds4_set_error("more than %d models with LoRA adapters loaded at once", N_LORA);
    return -1;
}

static const ds4_model *lora_owner_of(const float *w) {
    if (atomic_load_explicit(&g_n_lora, memory_order_relaxed) == 0) return NULL;
    uintptr_t p = (uintptr_t)w;
    for (int i = 0; i < N_LORA; i++) {
        const ds4_model *m = atomic_load_explicit(&g_lora[i], memory_order_acquire);
        if (m && p >= (uintptr_t)m->params && p < (uintptr_t)(m->params + m->layout.n_floats)) return m;
    }
    return NULL;
}

const ds4_lora_tensor *ds4_linear_lora(const ds4_model *m, const float *w, int in, int out, size_t *row0) {
    if (!m || !m->lora) m = lora_owner_of(w);
    if (!m || !m->lora) return NULL;
    uintptr_t base = (uintptr_t)m->params, p = (uintptr_t)w;
    if (p < base || p >= base + m->layout.n_floats * sizeof(float)) return NULL;
    size_t off = (size_t)(p - base) / sizeof(float);
    const ds4_tensor_info *ts = m->layout.tensors;
    int lo = 0, hi = m->layout.n_tensors - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (ts[mid].offset <= off) lo = mid; else hi = mid - 1;
    }
    const ds4_lora_tensor *a = &m->lora->t[lo];
    const ds4_tensor_info *t = &ts[lo];
    if (!a->A || t->ndim != 2 || t->shape[1] != in || (off - t->offset) % (size_t)in) return NULL;
    *row0 = (off - t->offset) / (size_t)in;
    if (*row0 + (size_t)out > (size_t)t->shape[0]) return NULL;
    return a;
}

/* y[n, out] += scale * (x[n, in] A^T) B[row0 .. row0+out)^T when w (rows
 * row0.. of a tensor) has an adapter. */
static void lora_add(const ds4_model *m, float *y, const float *x, const float *w, int n, int in, int out) {
    size_t row0;
    const ds4_lora_tensor *a = n > 0 ? ds4_linear_lora(m, w, in, out, &row0) : NULL;
    if (!a) return;
    const int r = a->rank;
    size_t need = (size_t)n * (size_t)r;
    if (need > tl_lora_cap) {
        free(tl_lora);
        tl_lora_cap = need + need / 2 + 64;
        tl_lora = malloc(tl_lora_cap * sizeof(float));
        if (!tl_lora) tl_lora_cap = 0;
    }
    const float *B = a->B + row0 * (size_t)r;
    if (tl_lora) {
        ds4_matmul(tl_lora, x, a->A, n, in, r, 0);
        for (size_t i = 0; i < need; i++) tl_lora[i] *= a->scale;
        ds4_matmul(y, tl_lora, B, n, r, out, 1);
    } else {                          /* out of memory: one row at a time on the stack */
        float tmp[DS4_LORA_MAX_RANK];
        for (int i = 0; i < n; i++) {
            ds4_matmul(tmp, x + (size_t)i * in, a->A, 1, in, r, 0);
            for (int k = 0; k < r; k++) tmp[k] *= a->scale;
            ds4_matmul(y + (size_t)i * out, tmp, B, 1, r, out, 1);
        }
    }
}


/* Per-thread scratch for acc = 1 with quantized weights. */
static _Thread_local float *tl_buf;
static _Thread_local size_t tl_cap;

/* tl_buf with room for need floats, or NULL (out of memory) */
static float *scratch(size_t need) {
    if (need > tl_cap) {
        free(tl_buf);
        tl_cap = need + need / 2 + 64;
        tl_buf = malloc(tl_cap * sizeof(float));
        if (!tl_buf) tl_cap = 0;
    }
    return tl_buf;
}

/* y [n, out] (+)= x @ rows [skip, skip + out) of the x8 groups at w8: whole
 * groups straight into y, else the covering groups into scratch first. */
static void linear_x8(ds4_qtype t, float *y, const float *x, const void *w8, int skip, int n, int in, int out,
                      int acc) {
    const int cover = (skip + out + 7) / 8 * 8;
    if (!acc && !skip && cover == out) {
        ds4_q_matmul_x8(t, y, x, w8, n, in, out);
        return;
    }
    float *buf = scratch((size_t)n * (size_t)cover);
    if (buf) {
        ds4_q_matmul_x8(t, buf, x, w8, n, in, cover);
        for (int r = 0; r < n; r++)
            for (int o = 0; o < out; o++)
                y[(size_t)r * out + o] = (acc ? y[(size_t)r * out + o] : 0.0f) + buf[(size_t)r * cover + skip + o];
        return;
    }
    float tmp[256];                       /* out of memory: 256 rows of one input at a time on the stack */
    const size_t rb = ds4_q_row_bytes(t, in);
    for (int r = 0; r < n; r++)
        for (int g0 = 0; g0 < cover; g0 += 256) {
            const int k = DS4_MIN(256, cover - g0);
            ds4_q_matmul_x8(t, tmp, x + (size_t)r * in, (const char *)w8 + (size_t)g0 * rb, 1, in, k);
            for (int i = 0; i < k; i++) {
                const int o = g0 + i - skip;
                if (o >= 0 && o < out) y[(size_t)r * out + o] = (acc ? y[(size_t)r * out + o] : 0.0f) + tmp[i];
            }
        }
}

void ds4_linear(const ds4_model *m, float *y, const float *x, const float *w, int n, int in, int out, int acc) {
    const void *qw;
    int x8, skip;
    int qt = ds4_linear_lookup(m, w, in, out, &qw, &x8, &skip);
    if (qt == DS4_Q_F32) {
        ds4_matmul(y, x, w, n, in, out, acc);
    } else if (x8) {
        linear_x8((ds4_qtype)qt, y, x, qw, skip, n, in, out, acc);
    } else if (!acc) {
        ds4_q_matmul((ds4_qtype)qt, y, x, qw, n, in, out);
    } else {
        const size_t need = (size_t)n * (size_t)out;
        float *buf = scratch(need);
        if (buf) {
            ds4_q_matmul((ds4_qtype)qt, buf, x, qw, n, in, out);
            for (size_t i = 0; i < need; i++) y[i] += buf[i];
        } else {                      /* out of memory: chunks on the stack */
            float tmp[256];
            size_t rb = ds4_q_row_bytes((ds4_qtype)qt, in);
            for (int r = 0; r < n; r++)
                for (int o0 = 0; o0 < out; o0 += 256) {
                    int k = DS4_MIN(256, out - o0);
                    ds4_q_matmul((ds4_qtype)qt, tmp, x + (size_t)r * in, (const char *)qw + (size_t)o0 * rb, 1, in, k);
                    for (int i = 0; i < k; i++) y[(size_t)r * out + o0 + i] += tmp[i];
                }
        }
    }
    /* ---- LoRA slot ---------------------------------------------------------
     * When the model holds an adapter (A [r, in], B [out, r], scale) for the
     * tensor w belongs to, add y += scale * (x A^T) B[rows]^T. */
    lora_add(m, y, x, w, n, in, out);
}
