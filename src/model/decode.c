/* decode.c — the batch-1 decode step (one token of one sequence): every run of
 * dense layers inside one OpenMP region, fused q/k/v and gate/up passes, no
 * allocation per token; LoRA adapters, pruned layers (the causal keep rule)
 * and the lightning indexer's key selection included. */
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/decode.h"
#include "model/acts.h"
#include "model/decode.h"
#include "model/indexer.h"
#include "model/linear.h"
#include "model/prune.h"
#include "model/quantized.h"
#include "quant/quant.h"
#include "util/util.h"

/* Rows per work chunk aim at this many weight bytes: big enough that the
 * dynamic hand-out costs little, small enough to balance two busy cores. */
#ifndef CHUNK_BYTES
#define CHUNK_BYTES 32768
#endif
#ifndef CHUNK_MAX_ROWS
#define CHUNK_MAX_ROWS 256
#endif

typedef struct {            /* per-thread buffers */
    float *xn;              /* [D] this thread's copy of the normed residual */
    void *xq8, *xqk;        /* the current input as Q8_0 / Q8_K activations */
    int32_t *aux8;          /* [2 max_in / 32] xq8's per-block terms for the Q4_0 x8 kernel */
    int have8, haveK, haveN, haveS;
    const ds4_lora_tensor *lkey[3];   /* adapters whose scale * A x this phase holds */
    float *lax;             /* [3][DS4_LORA_MAX_RANK] those vectors */
    int nl;
} dthread;


typedef struct {            /* one weight matrix, rows split into chunks */
    int type;               /* ds4_qtype */
    int x8;                 /* blocks in the x8 layout (chunks are whole groups of 8 rows) */
    const void *w;          /* fp32 rows or quantized blocks */
    size_t rb;              /* bytes per row */
    int in, rows, cr, nch;  /* cr rows per chunk, nch chunks */
    float *y;               /* [rows] output */
    int acc, rope;          /* y +=; rotate each chunk's heads (chunks hold whole heads) */
    const ds4_lora_tensor *lora;      /* attached LoRA adapter of this matrix, or NULL */
    const float *lB;                  /* [rows, r] its B rows */
    const float *gain;                /* acc only: y += *gain * (W x) (a pruned layer's gate), NULL = 1 */
} dseg;

typedef struct { dseg s[3]; int n, total; const float *x; } djob;   /* x: shared input, NULL = normed x */

typedef struct dlayer_s {
    djob qkv, o, gu, down;
} dlayer;

enum { PH_MV, PH_GU, PH_ATT, PH_PRUNE, PH_INDEX };

typedef struct dphase_s {
    int kind;
    const djob *job;          /* PH_MV; PH_GU: job->s[0] gate, s[1] up */
    const float *nw;          /* PH_MV/PH_GU with job->x NULL: the input is rmsnorm(x) * nw [D] */
    int layer;                /* PH_ATT, PH_PRUNE, PH_INDEX */
    const int *skip;          /* phase of a pruned layer: nothing to do when *skip (token dropped) */
    int total;                /* chunks */
} dphase;

typedef struct dsync_s {      /* one thread's lane of one phase, on its own line */
    _Alignas(64) atomic_ullong fb; /* next chunk (low 32 bits) and end (high 32) left in the lane */
    atomic_int done;              /* chunks of the lane completed, by any thread */
} dsync;

struct ds4_decode_scratch {
    int D, Q, KD, F, V, Dh, L, nth;
    float *x;               /* [D] residual stream */
    float *q;               /* [Q] roped queries */
    float *att;             /* [Q] attention output */
    float *h;               /* [F] silu(gate) * up */
    float *cs, *sn;         /* [Dh/2] RoPE table of this token */
    ds4_acts *moe;          /* one-row activations for MoE layers (NULL for dense models) */
    dthread *t;             /* [nth] */
    dlayer *plan;       /* [L] this token's work plan */
    dphase *ph;         /* [7 L + 1] phases of a region */
    dsync *sync;        /* [7 L + 1][nth] their lanes */
    int Hi, Di, sk;     /* lightning indexer: heads, head dim, key-list width (0: none) */
    float *iq, *ik, *ikraw, *iw, ikrstd;  /* [Hi*Di], [Di], [Di], [Hi]: this token's indexer projections */
    int *sel;           /* [sk] this token's key list in the current layer */
    int failed;         /* a phase failed (its error is set on its thread) */
    float *gate;        /* [L] pruned layer: sigmoid(router) of this token */
    int *skip;          /* [L] pruned layer: 1 when the token is dropped there */
};

static size_t act_bytes8(int in) { return (size_t)(in / DS4_QK8_0 + 1) * sizeof(ds4_block_q8_0); }
static size_t act_bytesk(int in) { return (size_t)(in / DS4_QK_K + 1) * sizeof(ds4_block_q8_K); }

void ds4_decode_scratch_free(ds4_decode_scratch *s) {
    if (!s) return;
    if (s->t)
        for (int i = 0; i < s->nth; i++) { free(s->t[i].xn); free(s->t[i].xq8); free(s->t[i].xqk); free(s->t[i].aux8); free(s->t[i].lax); }
    free(s->t);
    free(s->plan); free(s->ph); free(s->sync); free(s->gate); free(s->skip);
    free(s->iq); free(s->ik); free(s->ikraw); free(s->iw); free(s->sel);
    free(s->x); free(s->q); free(s->att); free(s->h); free(s->cs); free(s->sn);
    ds4_acts_free(s->moe);
    free(s);
}

static ds4_decode_scratch *scratch_create(const ds4_config *c, int nth) {
    ds4_decode_scratch *s = ds4_calloc(1, sizeof *s);
    if (!s) return NULL;
    s->D = c->hidden_size; s->Dh = c->head_dim; s->Q = c->num_attention_heads * c->head_dim;
    s->KD = c->num_key_value_heads * c->head_dim; s->F = c->intermediate_size; s->V = c->vocab_size;
    s->nth = nth;
    s->L = c->num_hidden_layers;
    int max_in = DS4_MAX(DS4_MAX(s->D, s->Q), s->F);
    s->x = ds4_alloc_aligned(sizeof(float) * s->D);
    s->plan = ds4_calloc((size_t)s->L, sizeof(dlayer));
    s->ph = ds4_calloc((size_t)(7 * s->L + 1), sizeof(dphase));
    s->sync = ds4_alloc_aligned((size_t)(7 * s->L + 1) * (size_t)nth * sizeof(dsync));
    s->sk = ds4_indexer_sel_k(c);
    s->Hi = s->sk ? c->index_n_heads : 0;
    s->Di = s->sk ? c->index_head_dim : 0;
    s->iq = ds4_alloc_aligned(sizeof(float) * (size_t)DS4_MAX(1, s->Hi * s->Di));
    s->ik = ds4_alloc_aligned(sizeof(float) * (size_t)DS4_MAX(1, s->Di));
    s->ikraw = ds4_alloc_aligned(sizeof(float) * (size_t)DS4_MAX(1, s->Di));
    s->iw = ds4_alloc_aligned(sizeof(float) * (size_t)DS4_MAX(1, s->Hi));
    s->sel = ds4_calloc((size_t)DS4_MAX(1, s->sk), sizeof(int));
    s->gate = ds4_calloc((size_t)s->L, sizeof(float));
    s->skip = ds4_calloc((size_t)s->L, sizeof(int));
    s->q = ds4_alloc_aligned(sizeof(float) * s->Q);
    s->att = ds4_alloc_aligned(sizeof(float) * s->Q);
    s->h = ds4_alloc_aligned(sizeof(float) * (s->F > 0 ? s->F : 1));
    s->cs = ds4_alloc_aligned(sizeof(float) * s->Dh);
    s->sn = ds4_alloc_aligned(sizeof(float) * s->Dh);
    s->t = ds4_calloc((size_t)nth, sizeof *s->t);
    if (!s->x || !s->gate || !s->skip || !s->iq || !s->ik || !s->ikraw || !s->iw || !s->sel || !s->plan || !s->ph || !s->sync || !s->q || !s->att || !s->h || !s->cs || !s->sn || !s->t) goto fail;
    for (int i = 0; i < nth; i++) {
        if (!(s->t[i].xn = ds4_alloc_aligned(sizeof(float) * s->D))) goto fail;
        if (!(s->t[i].lax = ds4_alloc_aligned(sizeof(float) * 3 * DS4_LORA_MAX_RANK))) goto fail;
        if (!(s->t[i].xq8 = ds4_alloc_aligned(act_bytes8(max_in)))) goto fail;
        if (!(s->t[i].xqk = ds4_alloc_aligned(act_bytesk(max_in)))) goto fail;
        if (!(s->t[i].aux8 = ds4_alloc_aligned(sizeof(int32_t) * 2 * (size_t)(max_in / 32 + 1)))) goto fail;
    }
    if (c->n_routed_experts > 0 && c->first_k_dense_replace < c->num_hidden_layers)
        if (!(s->moe = ds4_acts_create(c, 1, 1, 0))) goto fail;
    return s;
fail:
    ds4_decode_scratch_free(s);
    return NULL;
}

int ds4_decode_supported(const ds4_model *m, const ds4_batch *b, const ds4_acts *acts) {
    (void)m;
    return b->n == 1 && !acts;
}

/* ---- work plan --------------------------------------------------------------- */

/* rows per chunk of a matrix with rb bytes per row: a multiple of 4 (of 8 for x8) */
static int chunk_rows(size_t rb, int x8) {
    const int r = (int)DS4_MAX(x8 ? 8 : 4, CHUNK_BYTES / rb);
    return DS4_MIN(CHUNK_MAX_ROWS, r & (x8 ? ~7 : ~3));
}

static void seg_init(dseg *s, const ds4_model *m, const float *w, int in, int rows, float *y, int acc,
                     int head_rows) {
    const void *qd;
    int skip;
    s->type = ds4_linear_lookup(m, w, in, rows, &qd, &s->x8, &skip);   /* whole tensors: skip 0 */
    size_t row0 = 0;
    s->lora = ds4_linear_lora(m, w, in, rows, &row0);
    s->lB = s->lora ? s->lora->B + row0 * (size_t)s->lora->rank : NULL;
    s->w = s->type == DS4_Q_F32 ? (const void *)w : qd;
    s->rb = s->type == DS4_Q_F32 ? (size_t)in * sizeof(float) : ds4_q_row_bytes((ds4_qtype)s->type, in);
    s->in = in;
    s->rows = rows;
    s->y = y;
    s->acc = acc;
    s->rope = head_rows > 0;
    if (head_rows > 0) {                 /* whole heads per chunk (x8: and whole groups) */
        int heads = (int)DS4_MAX(1, CHUNK_BYTES / (s->rb * (size_t)head_rows));
        while (s->x8 && heads * head_rows % 8) heads++;
        s->cr = heads * head_rows;
    } else {
        s->cr = chunk_rows(s->rb, s->x8);
    }
    s->nch = (rows + s->cr - 1) / s->cr;
}

static void job_done(djob *j) {
    j->total = 0;
    for (int i = 0; i < j->n; i++) j->total += j->s[i].nch;
}

/* ---- execution ---------------------------------------------------------------
 * A region runs a list of phases (norm, matvec job, attention, ...). Each
 * phase is split into chunks, and the chunks into one contiguous lane per
 * thread. A thread works through its own lane front to back, so its weight
 * rows stream in order and the kernels' prefetch runs ahead into its own next
 * chunk (interleaved chunks sent half of it to the other core); then it takes
 * chunks from the back of the other lanes. A thread moves to the next phase
 * once every chunk of this one is complete. There is no barrier: a thread the
 * OS has parked holds nothing up unless it holds a chunk (the others empty
 * its lane), and it skips the phases finished without it when it wakes. */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* lanes of a phase of `total` chunks over nth threads: [t total/nth, (t+1) total/nth) */
static void lanes_reset(dsync *ln, int total, int nth) {
    for (int t = 0; t < nth; t++) {
        const unsigned long long a = (unsigned long long)((long)total * t / nth);
        const unsigned long long b = (unsigned long long)((long)total * (t + 1) / nth);
        atomic_store_explicit(&ln[t].fb, a | b << 32, memory_order_relaxed);
        atomic_store_explicit(&ln[t].done, 0, memory_order_relaxed);
    }
}

/* claim a chunk of lane ln from its front (owner) or back (others); -1 when empty */
static int lane_claim(dsync *ln, int front) {
    unsigned long long v = atomic_load_explicit(&ln->fb, memory_order_relaxed);
    for (;;) {
        const unsigned long long f = v & 0xffffffffull, b = v >> 32;
        if (f >= b) return -1;
        const unsigned long long nv = front ? (f + 1) | b << 32 : f | (b - 1) << 32;
        if (atomic_compare_exchange_weak_explicit(&ln->fb, &v, nv, memory_order_relaxed, memory_order_relaxed))
            return (int)(front ? f : b - 1);
    }
}

static void phase_wait(dsync *ln, int nth, int total) {
    for (int spins = 0;;) {
        int done = 0;
        for (int t = 0; t < nth; t++) done += atomic_load_explicit(&ln[t].done, memory_order_acquire);
        if (done >= total) return;
        if (++spins < 4000) cpu_relax();
        else { sched_yield(); spins = 0; }
    }
}

/* ds4_rmsnorm of one row, without its OpenMP region (same arithmetic) */
static void norm_row(float *y, const float *x, const float *w, int d, float eps) {
    float ss = 0.0f;
    for (int j = 0; j < d; j++) ss += x[j] * x[j];
    const float rs = 1.0f / sqrtf(ss / (float)d + eps);
    for (int j = 0; j < d; j++) y[j] = x[j] * rs * w[j];
}

static const void *thread_act(dthread *t, int type, const float *x, int in) {
    if (type == DS4_Q_F32) return x;
    if (type == DS4_Q_Q4_K) {
        if (!t->haveK) { ds4_q_quantize_act_row(DS4_Q_Q4_K, x, t->xqk, in); t->haveK = 1; }
        return t->xqk;
    }
    if (!t->have8) { ds4_q_quantize_act_row(DS4_Q_Q8_0, x, t->xq8, in); t->have8 = 1; }
    return t->xq8;
}

/* y[n] = n quantized rows of s at w . xq, in s's layout */
static void mv_rows(const dseg *s, float *y, const void *xq, const int32_t *sx, const char *w, int n) {
    if (s->x8) ds4_q_matvec_rows_x8((ds4_qtype)s->type, y, xq, sx, w, s->in, n);
    else ds4_q_matvec_rows((ds4_qtype)s->type, y, xq, w, s->in, n);
}

/* base weights of rows r0..r1 of s (fp32 or quantized) */
static void seg_base_rows(const dseg *s, dthread *t, const float *x, int r0, int r1) {
    const int n = r1 - r0;
    const char *w = (const char *)s->w + (size_t)r0 * s->rb;
    if (s->type == DS4_Q_F32 && !s->gain) {
        ds4_gemv_rows(s->y + r0, x, (const float *)w, s->in, n, s->acc);
        return;
    }
    const void *xq = s->type == DS4_Q_F32 ? NULL : thread_act(t, s->type, x, s->in);
    const int32_t *sx = NULL;
    if (s->x8 && s->type == DS4_Q_Q4_0) {          /* per-block terms of xq, once per input */
        if (!t->haveS) { ds4_q_act_aux_x8(xq, s->in, t->aux8); t->haveS = 1; }
        sx = t->aux8;
    }
    if (!s->acc) { mv_rows(s, s->y + r0, xq, sx, w, n); return; }
    const float g = s->gain ? *s->gain : 1.0f;
    float tmp[CHUNK_MAX_ROWS];
    for (int o = 0; o < n; o += CHUNK_MAX_ROWS) {
        const int k = DS4_MIN(CHUNK_MAX_ROWS, n - o);
        if (s->type == DS4_Q_F32) ds4_gemv_rows(tmp, x, (const float *)(w + (size_t)o * s->rb), s->in, k, 0);
        else mv_rows(s, tmp, xq, sx, w + (size_t)o * s->rb, k);
        if (s->gain) for (int i = 0; i < k; i++) s->y[r0 + o + i] += g * tmp[i];
        else for (int i = 0; i < k; i++) s->y[r0 + o + i] += tmp[i];
    }
}

/* y[r0..r1) += scale * B[rows] (A x): A x once per adapter per phase and thread */
static void lora_rows(const dseg *s, dthread *t, const float *x, int r0, int r1) {
    const ds4_lora_tensor *a = s->lora;
    const int r = a->rank;
    float *ax = NULL;
    for (int k = 0; k < t->nl; k++)
        if (t->lkey[k] == a) ax = t->lax + (size_t)k * DS4_LORA_MAX_RANK;
    if (!ax) {                       /* at most 3 matrices (q, k, v) share a phase */
        ax = t->lax + (size_t)t->nl * DS4_LORA_MAX_RANK;
        t->lkey[t->nl++] = a;
        ds4_gemv_rows(ax, x, a->A, s->in, r, 0);
        for (int j = 0; j < r; j++) ax[j] *= a->scale;
    }
    const float g = s->gain ? *s->gain : 1.0f;
    for (int i = r0; i < r1; i++) {
        const float *b = s->lB + (size_t)i * r;
        float v = 0.0f;
        for (int j = 0; j < r; j++) v += b[j] * ax[j];
        s->y[i] += g * v;
    }
}

static void seg_rows(const dseg *s, dthread *t, const float *x, int r0, int r1) {
    seg_base_rows(s, t, x, r0, r1);
    if (s->lora) lora_rows(s, t, x, r0, r1);
}

/* chunk c of a matvec job (rope: the chunk's rows are whole heads) */
static void mv_chunk(const djob *j, const ds4_decode_scratch *S, dthread *t, int c) {
    int k = 0;
    while (c >= j->s[k].nch) c -= j->s[k++].nch;
    const dseg *s = &j->s[k];
    const int r0 = c * s->cr, r1 = DS4_MIN(s->rows, r0 + s->cr);
    seg_rows(s, t, j->x ? j->x : t->xn, r0, r1);
    if (s->rope) ds4_rope_heads(s->y + r0, S->cs, S->sn, (r1 - r0) / S->Dh, S->Dh);
}

/* h = silu(gate xn) * up xn for chunk c of F rows: both matrices in one pass */
static void gu_chunk(const djob *j, const ds4_decode_scratch *S, dthread *t, int c) {
    const dseg *g = &j->s[0], *u = &j->s[1];
    const int r0 = c * g->cr, r1 = DS4_MIN(g->rows, r0 + g->cr);
    float gb[CHUNK_MAX_ROWS], ub[CHUNK_MAX_ROWS];
    dseg gs = *g, us = *u;
    gs.y = gb - r0;
    us.y = ub - r0;
    seg_rows(&gs, t, t->xn, r0, r1);
    seg_rows(&us, t, t->xn, r0, r1);
    for (int i = 0; i < r1 - r0; i++) {
        const float sg = 1.0f / (1.0f + expf(-gb[i]));
        S->h[r0 + i] = gb[i] * sg * ub[i];
    }
}

typedef struct {
    const ds4_model *m;
    ds4_kv_cache *kv;
    int seq;
    const int *pos;
} dctx;

static void att_chunk(const dctx *X, const ds4_decode_scratch *S, int l, int h) {
    const ds4_config *c = &X->m->cfg;
    const ds4_kv_cache *kv = X->kv;
    const size_t base = (size_t)X->seq * kv->capacity;
    ds4_attn a = {
        .n_q = 1, .q = S->q, .qpos = X->pos, .n_kv = kv->len[l][X->seq], .k = kv->k[l] + base * S->KD,
        .v = kv->v[l] + base * S->KD, .kpos = kv->pos[l] + base, .n_heads = c->num_attention_heads,
        .n_kv_heads = c->num_key_value_heads, .head_dim = S->Dh, .window = c->sliding_window,
        .sinks = X->m->w.layers[l].sinks, .sel = NULL, .sel_k = 0,
    };
    if (S->sk) { a.window = 0; a.sel = S->sel; a.sel_k = S->sk; }   /* the window is in the key list */
    ds4_attn_decode_head(&a, h, S->att + (size_t)h * S->Dh);
}

/* Pruned layer l (SPEC 1.3, inference rule): r = w_r . rmsnorm(x); the token
 * is kept iff position 0 or r > 0. Kept: its cache row is taken and the
 * layer's updates are scaled by sigmoid(r); dropped: the layer's phases do
 * nothing (x passes through, no cache row). The counters as ds4_forward's. */
static void prune_chunk(const dctx *X, ds4_decode_scratch *S, dthread *t, int l) {
    const ds4_config *c = &X->m->cfg;
    const ds4_layer *W = &X->m->w.layers[l];
    norm_row(t->xn, S->x, W->input_layernorm, S->D, c->rms_norm_eps);
    float r;
    ds4_gemv_rows(&r, t->xn, W->prune_router, S->D, 1, 0);
    const int pos = *X->pos;
    unsigned char kept = (unsigned char)ds4_prune_causal_keep(r, pos), mark = 0;
    if (pos == 0) ds4_prune_topk(&r, &pos, 1, ds4_prune_ratio(c, l), &mark);   /* membership known */
    ds4_prune_count(&X->kv->prune[l], &r, &pos, pos == 0 ? &mark : NULL, &kept, 1);
    S->gate[l] = 1.0f / (1.0f + expf(-r));
    S->skip[l] = !kept;
    if (kept) {
        const size_t row = (size_t)X->seq * X->kv->capacity + X->kv->len[l][X->seq]++;
        X->kv->pos[l][row] = pos;
    }
}

/* Lightning indexer of layer l (SPEC 1.4): this token's indexer query,
 * weights and key (stored in the cache beside its K/V row), then its key
 * list over the layer's cached keys, exactly as the batched forward. */
static int index_chunk(const dctx *X, ds4_decode_scratch *S, dthread *t, int l) {
    const ds4_config *c = &X->m->cfg;
    const ds4_layer *W = &X->m->w.layers[l];
    ds4_kv_cache *kv = X->kv;
    norm_row(t->xn, S->x, W->input_layernorm, S->D, c->rms_norm_eps);
    ds4_indexer_project(c, W, t->xn, X->pos, 1, S->iq, S->ik, S->ikraw, &S->ikrstd, S->iw);
    const int n_kv = kv->len[l][X->seq];
    const size_t base = (size_t)X->seq * kv->capacity;
    float *kb = kv->ki[l] + (size_t)X->seq * kv->ki_stride;
    ds4_indexer_key_put(kb, n_kv - 1, S->ik, S->Di);
    return ds4_indexer_select(c, S->iq, S->iw, 1, X->pos, kb, kv->pos[l] + base, n_kv, S->sel);
}

/* Every thread of the region runs this over the same phase list. */
static void run_phases(const dctx *X, const dphase *ph, dsync *sy, int n_ph, ds4_decode_scratch *S, int nth) {
    const int me = omp_get_thread_num();
    dthread *t = &S->t[me];
    const float eps = X->m->cfg.rms_norm_eps;
    for (int p = 0; p < n_ph; p++) {
        const dphase *P = &ph[p];
        dsync *ln = sy + (size_t)p * nth;
        t->have8 = t->haveK = t->haveN = t->haveS = t->nl = 0;
        if (P->skip && *P->skip) continue;        /* dropped token: no chunk is claimed, none awaited */
        for (int k = 0; k < nth; k++) {           /* own lane first, then the others' */
            dsync *L = &ln[(me + k) % nth];
            for (int c; (c = lane_claim(L, k == 0)) >= 0;) {
                if (P->nw && !t->haveN) {           /* the norm, once per thread that works here */
                    norm_row(t->xn, S->x, P->nw, S->D, eps);
                    t->haveN = 1;
                }
                switch (P->kind) {
                case PH_MV: mv_chunk(P->job, S, t, c); break;
                case PH_GU: gu_chunk(P->job, S, t, c); break;
                case PH_ATT: att_chunk(X, S, P->layer, c); break;
                case PH_PRUNE: prune_chunk(X, S, t, P->layer); break;
                case PH_INDEX:
                    if (index_chunk(X, S, t, P->layer) != 0) S->failed = 1;
                    break;
                }
                atomic_fetch_add_explicit(&L->done, 1, memory_order_release);
            }
        }
        phase_wait(ln, nth, P->total);
    }
}

static void plan_layer(const ds4_model *m, const ds4_kv_cache *kv, int l, int seq, dlayer *P,
                       ds4_decode_scratch *S) {
    const ds4_config *c = &m->cfg;
    const ds4_layer *W = &m->w.layers[l];
    const int D = S->D, Q = S->Q, KD = S->KD, F = S->F, Dh = S->Dh;
    /* this token's cache row: taken already, or by the keep decision of a pruned layer */
    const int pruned = ds4_prune_ratio(c, l) > 0;
    const size_t row = (size_t)seq * kv->capacity + kv->len[l][seq] - (pruned ? 0 : 1);
    memset(P, 0, sizeof *P);
    seg_init(&P->qkv.s[0], m, W->q_proj, D, Q, S->q, 0, Dh);
    seg_init(&P->qkv.s[1], m, W->k_proj, D, KD, kv->k[l] + row * KD, 0, Dh);
    seg_init(&P->qkv.s[2], m, W->v_proj, D, KD, kv->v[l] + row * KD, 0, 0);
    P->qkv.n = 3;
    job_done(&P->qkv);
    seg_init(&P->o.s[0], m, W->o_proj, Q, D, S->x, 1, 0);
    P->o.n = 1;
    P->o.x = S->att;
    if (pruned) P->o.s[0].gain = &S->gate[l];       /* x + g o_proj(att) */
    job_done(&P->o);
    if (!ds4_layer_is_moe(c, l)) {
        seg_init(&P->gu.s[0], m, W->gate_proj, D, F, NULL, 0, 0);
        seg_init(&P->gu.s[1], m, W->up_proj, D, F, NULL, 0, 0);
        P->gu.s[0].cr = P->gu.s[1].cr = DS4_MIN(P->gu.s[0].cr, P->gu.s[1].cr);
        P->gu.total = (F + P->gu.s[0].cr - 1) / P->gu.s[0].cr;
        seg_init(&P->down.s[0], m, W->down_proj, F, D, S->x, 1, 0);
        P->down.n = 1;
        P->down.x = S->h;
        if (pruned) P->down.s[0].gain = &S->gate[l];  /* x + g ffn */
        job_done(&P->down);
    }
}

/* a phase of layer l; the phases of a pruned layer are skipped when its token is dropped */
static int add_phase(dphase *ph, int n, int kind, const djob *job, const float *nw, int layer, int total,
                     const ds4_decode_scratch *S, const ds4_config *c) {
    const int *skip = kind != PH_PRUNE && ds4_prune_ratio(c, layer) > 0 ? &S->skip[layer] : NULL;
    ph[n] = (dphase){.kind = kind, .job = job, .nw = nw, .layer = layer, .total = total, .skip = skip};
    return n + 1;
}

/* attention half of layer l: x += o_proj(attn(norm(x))) (pruned: the keep decision first) */
static int add_attn(dphase *ph, int n, const ds4_model *m, int l, const dlayer *P, const ds4_decode_scratch *S) {
    const ds4_config *c = &m->cfg;
    if (ds4_prune_ratio(c, l) > 0) n = add_phase(ph, n, PH_PRUNE, NULL, NULL, l, 1, S, c);
    n = add_phase(ph, n, PH_MV, &P->qkv, m->w.layers[l].input_layernorm, l, P->qkv.total, S, c);
    if (S->sk) n = add_phase(ph, n, PH_INDEX, NULL, NULL, l, 1, S, c);
    n = add_phase(ph, n, PH_ATT, NULL, NULL, l, c->num_attention_heads, S, c);
    return add_phase(ph, n, PH_MV, &P->o, NULL, l, P->o.total, S, c);
}

static int add_ffn(dphase *ph, int n, const ds4_model *m, int l, const dlayer *P, const ds4_decode_scratch *S) {
    n = add_phase(ph, n, PH_GU, &P->gu, m->w.layers[l].post_attention_layernorm, l, P->gu.total, S, &m->cfg);
    return add_phase(ph, n, PH_MV, &P->down, NULL, l, P->down.total, S, &m->cfg);
}

static void run_region(const dctx *X, const dphase *ph, int n_ph, ds4_decode_scratch *S, int nth) {
    for (int p = 0; p < n_ph; p++) lanes_reset(S->sync + (size_t)p * nth, ph[p].total, nth);
    if (nth > 1) {
        #pragma omp parallel num_threads(nth)
        run_phases(X, ph, S->sync, n_ph, S, nth);   /* every lane is visited, however many threads came */
    } else {
        run_phases(X, ph, S->sync, n_ph, S, 1);
    }
}

int ds4_decode_step(const ds4_model *m, int token, int seq, ds4_kv_cache *kv, float *logits) {
    const ds4_config *c = &m->cfg;
    const int L = c->num_hidden_layers, D = c->hidden_size, V = c->vocab_size;
    int nth = omp_get_max_threads();
    ds4_decode_scratch *S = kv->decode;
    if (S && (S->nth < nth || S->D != D || S->Q != c->num_attention_heads * c->head_dim ||
              S->KD != kv->kv_dim || S->F != c->intermediate_size || S->Dh != c->head_dim ||
              S->L != L || (!S->moe && c->n_routed_experts > 0 && c->first_k_dense_replace < L) ||
              S->sk != ds4_indexer_sel_k(c) || (S->sk && (S->Hi != c->index_n_heads || S->Di != c->index_head_dim)))) {
        ds4_decode_scratch_free(S);
        kv->decode = S = NULL;
    }
    if (!S && !(kv->decode = S = scratch_create(c, nth))) return -1;
    /* the token's cache rows and position (check_batch has verified capacity) */
    const int pos = kv->next_pos[seq];
    for (int l = 0; l < L; l++) {
        if (ds4_prune_ratio(c, l) > 0) continue;    /* taken by the keep decision (prune_chunk) */
        const size_t row = (size_t)seq * kv->capacity + kv->len[l][seq]++;
        kv->pos[l][row] = pos;
    }
    kv->next_pos[seq] = pos + 1;
    memcpy(S->x, m->w.embed + (size_t)token * D, sizeof(float) * D);
    ds4_rope_table(S->cs, S->sn, pos, S->Dh, c->rope_theta);
    const dctx X = {.m = m, .kv = kv, .seq = seq, .pos = &pos};
    djob lm;
    memset(&lm, 0, sizeof lm);
    if (logits) {
        seg_init(&lm.s[0], m, m->w.lm_head, D, V, logits, 0, 0);
        if (m->quant && m->quant->lm_head_q8) {     /* tied: the table's Q8_0 copy */
            lm.s[0].type = DS4_Q_Q8_0;
            lm.s[0].w = m->quant->lm_head_q8;
            lm.s[0].rb = m->quant->lm_head_rb;
            lm.s[0].x8 = m->quant->lm_head_x8;
            lm.s[0].cr = chunk_rows(lm.s[0].rb, lm.s[0].x8);
            lm.s[0].nch = (V + lm.s[0].cr - 1) / lm.s[0].cr;
        }
        lm.n = 1;
        job_done(&lm);
    }
    dlayer *P = S->plan;
    for (int l = 0; l < L; l++) plan_layer(m, kv, l, seq, &P[l], S);
    /* runs of dense layers in one region; a MoE layer ends its region after
     * attention and runs its FFN (with its own threading) between regions */
    for (int l0 = 0; l0 <= L;) {
        int n = 0, l = l0;
        for (; l < L && !ds4_layer_is_moe(c, l); l++) {
            n = add_attn(S->ph, n, m, l, &P[l], S);
            n = add_ffn(S->ph, n, m, l, &P[l], S);
        }
        if (l < L) n = add_attn(S->ph, n, m, l, &P[l], S);
        else if (logits) {
            n = add_phase(S->ph, n, PH_MV, &lm, m->w.norm, l, lm.total, S, c);
        }
        S->failed = 0;
        run_region(&X, S->ph, n, S, nth);
        if (S->failed) {
            ds4_set_error("decode step: the indexer's key selection failed (out of memory?)");
            return -1;
        }
        if (l == L) break;
        l0 = l + 1;
        const int pruned = ds4_prune_ratio(c, l) > 0;
        if (pruned && S->skip[l]) continue;            /* dropped here: x passes through */
        ds4_layer_acts *A = &S->moe->l[0];
        norm_row(A->xn2, S->x, m->w.layers[l].post_attention_layernorm, D, c->rms_norm_eps);
        ds4_moe_forward(c, &m->w.layers[l], A, A->xn2, 1);
        const float g = pruned ? S->gate[l] : 1.0f;   /* a kept token: x + g ffn */
        for (int d = 0; d < D; d++) S->x[d] += g * A->ffn[d];
    }
    return 0;
}
