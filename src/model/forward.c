/* forward.c — the forward pass over a token batch with a KV cache: embeddings,
 * per layer RMSNorm → (token pruning: router, keep set, gate) → GQA attention
 * (RoPE; dense, windowed or indexed sparse) → RMSNorm → dense or MoE SwiGLU,
 * final norm and lm_head. Training calls it with acts to save activations. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/kernels.h"
#include "model/acts.h"
#include "model/decode.h"
#include "model/forward.h"
#include "model/linear.h"
#include "model/indexer.h"
#include "model/moe.h"
#include "model/prune.h"
#include "model/quantized.h"
#include "util/util.h"

/* ---- KV cache ----------------------------------------------------------- */

ds4_kv_cache *ds4_kv_cache_create(const ds4_config *c, int n_seq, int capacity) {
    if (n_seq <= 0 || capacity <= 0) {
        ds4_set_error("KV cache: n_seq (%d) and capacity (%d) must be positive", n_seq, capacity);
        return NULL;
    }
    ds4_kv_cache *kv = ds4_calloc(1, sizeof *kv);
    if (!kv) return NULL;
    kv->n_layers = c->num_hidden_layers;
    kv->n_seq = n_seq;
    kv->capacity = capacity;
    kv->kv_dim = c->num_key_value_heads * c->head_dim;
    kv->ki_dim = c->index_topk > 0 ? c->index_head_dim : 0;
    kv->ki_stride = kv->ki_dim ? ds4_indexer_keys_floats(capacity, kv->ki_dim) : 0;
    size_t rows = (size_t)n_seq * capacity;
    kv->next_pos = ds4_calloc((size_t)n_seq, sizeof(int));
    if (!kv->next_pos) goto fail;
    for (int l = 0; l < kv->n_layers; l++) {
        kv->k[l] = ds4_alloc_aligned(rows * kv->kv_dim * sizeof(float));
        kv->v[l] = ds4_alloc_aligned(rows * kv->kv_dim * sizeof(float));
        kv->pos[l] = ds4_calloc(rows, sizeof(int));
        kv->len[l] = ds4_calloc((size_t)n_seq, sizeof(int));
        if (!kv->k[l] || !kv->v[l] || !kv->pos[l] || !kv->len[l]) goto fail;
        if (kv->ki_dim && !(kv->ki[l] = ds4_alloc_aligned((size_t)n_seq * kv->ki_stride * sizeof(float)))) goto fail;
    }
    return kv;
fail:
    ds4_kv_cache_free(kv);
    return NULL;
}

void ds4_kv_cache_free(ds4_kv_cache *kv) {
    if (!kv) return;
    for (int l = 0; l < kv->n_layers; l++) {
        free(kv->k[l]); free(kv->v[l]); free(kv->pos[l]); free(kv->len[l]); free(kv->ki[l]);
    }
    free(kv->next_pos);
    ds4_decode_scratch_free(kv->decode);
    free(kv);
}

void ds4_kv_cache_reset_seq(ds4_kv_cache *kv, int seq) {
    for (int l = 0; l < kv->n_layers; l++) kv->len[l][seq] = 0;
    kv->next_pos[seq] = 0;
}

size_t ds4_kv_cache_bytes_used(const ds4_kv_cache *kv) {
    size_t rows = 0;
    for (int l = 0; l < kv->n_layers; l++)
        for (int s = 0; s < kv->n_seq; s++) rows += (size_t)kv->len[l][s];
    return rows * ((size_t)kv->kv_dim * 2 + (size_t)kv->ki_dim) * sizeof(float);
}

void ds4_kv_cache_reset_stats(ds4_kv_cache *kv) {
    memset(kv->prune, 0, sizeof kv->prune);
}

/* ---- activations -------------------------------------------------------- */

#define FALLOC(p, count) do { if (!((p) = ds4_alloc_aligned((size_t)(count) * sizeof(float)))) goto fail; } while (0)
#define IALLOC(p, count) do { if (!((p) = ds4_calloc((size_t)(count), sizeof(int)))) goto fail; } while (0)

ds4_acts *ds4_acts_create(const ds4_config *c, int n, int n_layers, int with_logits) {
    ds4_acts *a = ds4_calloc(1, sizeof *a);
    if (!a) return NULL;
    a->n_cap = n;
    a->n_layers = n_layers;
    const size_t D = c->hidden_size, Q = (size_t)c->num_attention_heads * c->head_dim;
    const size_t KD = (size_t)c->num_key_value_heads * c->head_dim;
    const size_t E = c->n_routed_experts, k = ds4_moe_k(c), Fm = c->moe_intermediate_size;
    const size_t S = (size_t)c->n_shared_experts * Fm;
    for (int l = 0; l < n_layers; l++) {
        ds4_layer_acts *L = &a->l[l];
        const int moe = n_layers == 1 ? c->n_routed_experts > 0 : ds4_layer_is_moe(c, l);
        const int dense = n_layers == 1 ? c->first_k_dense_replace > 0 || !moe : !moe;
        FALLOC(L->x_in, n * D); FALLOC(L->xn1, n * D); FALLOC(L->rstd1, n);
        FALLOC(L->q, n * Q); FALLOC(L->kn, n * KD); FALLOC(L->vn, n * KD);
        FALLOC(L->att, n * Q); FALLOC(L->lse, (size_t)n * c->num_attention_heads);
        FALLOC(L->x_mid, n * D); FALLOC(L->xn2, n * D); FALLOC(L->rstd2, n);
        FALLOC(L->ffn, n * D);
        if (dense) { FALLOC(L->g, n * (size_t)c->intermediate_size); FALLOC(L->u, n * (size_t)c->intermediate_size);
                     FALLOC(L->h, n * (size_t)c->intermediate_size); }
        if (moe) {
            FALLOC(L->rlogits, n * E); FALLOC(L->scores, n * E);
            IALLOC(L->experts, n * k); FALLOC(L->weights, n * k);
            IALLOC(L->offsets, E + 1); IALLOC(L->perm_tok, n * k); IALLOC(L->perm_slot, n * k);
            FALLOC(L->ex, n * k * D); FALLOC(L->eg, n * k * Fm); FALLOC(L->eu, n * k * Fm);
            FALLOC(L->eh, n * k * Fm); FALLOC(L->ey, n * k * D);
            if (S) { FALLOC(L->sg, n * S); FALLOC(L->su, n * S); FALLOC(L->sh, n * S); }
        }
        L->aux_scale = 1.0f;
        L->nk = n;
        const int prunes = n_layers == 1 ? ds4_prune_any(c) : ds4_prune_ratio(c, l) > 0;
        if (prunes) {
            IALLOC(L->kidx, n); IALLOC(L->kpos, n); IALLOC(L->kseq, n);
            FALLOC(L->prune_r, n); FALLOC(L->prune_y, n); FALLOC(L->gate, n);
            FALLOC(L->xk, n * D); FALLOC(L->ao, n * D);
        }
        if (c->index_topk > 0) {
            const size_t Hi = c->index_n_heads, Di = c->index_head_dim;
            FALLOC(L->iq, n * Hi * Di); FALLOC(L->ik, n * Di); FALLOC(L->ikraw, n * Di);
            FALLOC(L->ikrstd, n); FALLOC(L->iw, n * Hi);
            IALLOC(L->sel, n * (size_t)ds4_indexer_sel_k(c));
        }
    }
    FALLOC(a->x_out, n * D); FALLOC(a->xnf, n * D); FALLOC(a->rstdf, n);
    if (with_logits) FALLOC(a->logits, (size_t)n * c->vocab_size);
    return a;
fail:
    ds4_acts_free(a);
    return NULL;
}

void ds4_acts_free(ds4_acts *a) {
    if (!a) return;
    for (int l = 0; l < a->n_layers; l++) {
        ds4_layer_acts *L = &a->l[l];
        void *ps[] = {L->x_in, L->xn1, L->rstd1, L->q, L->kn, L->vn, L->att, L->lse, L->x_mid, L->xn2,
                      L->rstd2, L->g, L->u, L->h, L->rlogits, L->scores, L->experts, L->weights,
                      L->offsets, L->perm_tok, L->perm_slot, L->ex, L->eg, L->eu, L->eh, L->ey,
                      L->sg, L->su, L->sh, L->ffn, L->kidx, L->kpos, L->kseq, L->prune_r, L->prune_y,
                      L->gate, L->xk, L->ao, L->iq, L->ik, L->ikraw, L->ikrstd, L->iw, L->sel};
        for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) free(ps[i]);
    }
    free(a->x_out); free(a->xnf); free(a->rstdf); free(a->logits);
    ds4_backward_scratch_free(a->bw);
    free(a);
}

/* ---- FFN ---------------------------------------------------------------- */

/* SwiGLU y[n,D] = down(silu(gate x) * up x) with gate/up [F,D], down [D,F]. */
void ds4_swiglu_ffn(float *y, const float *x, const float *wg, const float *wu, const float *wd,
                       float *g, float *u, float *h, int n, int D, int F, int acc) {
    ds4_linear(NULL, g, x, wg, n, D, F, 0);
    ds4_linear(NULL, u, x, wu, n, D, F, 0);
    ds4_swiglu(h, g, u, (size_t)n * F);
    ds4_linear(NULL, y, h, wd, n, F, D, acc);
}

/* ---- the forward pass --------------------------------------------------- */

/* logits [n, V] = x [n, D] @ lm_head^T; a quantized tied model reads the
 * Q8_0 copy of the table (model/quantized.h) */
static void lm_head(const ds4_model *m, float *logits, const float *x, int n) {
    const ds4_config *c = &m->cfg;
    if (m->quant && m->quant->lm_head_q8)
        (m->quant->lm_head_x8 ? ds4_q_matmul_x8 : ds4_q_matmul)(DS4_Q_Q8_0, logits, x, m->quant->lm_head_q8, n,
                                                                 c->hidden_size, c->vocab_size);
    else
        ds4_linear(m, logits, x, m->w.lm_head, n, c->hidden_size, c->vocab_size, 0);
}

static int check_batch(const ds4_model *m, const ds4_batch *b, const ds4_kv_cache *kv) {
    const ds4_config *c = &m->cfg;
    if (b->n <= 0) { ds4_set_error("forward: empty batch"); return -1; }
    int prev = -1;
    unsigned char *seen = ds4_calloc((size_t)kv->n_seq, 1);
    if (!seen) return -1;
    int rc = 0, count = 0;
    for (int i = 0; i < b->n && rc == 0; i++) {
        int t = b->tokens[i], s = b->seq[i];
        if (t < 0 || t >= c->vocab_size) { ds4_set_error("forward: token id %d at row %d outside [0, %d)", t, i, c->vocab_size); rc = -1; }
        else if (s < 0 || s >= kv->n_seq) { ds4_set_error("forward: sequence %d at row %d outside the cache's %d slots", s, i, kv->n_seq); rc = -1; }
        else if (s != prev) {
            if (seen[s]) { ds4_set_error("forward: rows of sequence %d are not contiguous", s); rc = -1; }
            seen[s] = 1;
            count = 0;
        }
        if (rc == 0 && kv->next_pos[s] + ++count > kv->capacity) {
            ds4_set_error("forward: sequence %d would exceed the KV cache capacity of %d tokens", s, kv->capacity);
            rc = -1;
        }
        prev = s;
    }
    free(seen);
    return rc;
}

/* Pruned layer: router logits of all n tokens, the keep decision per
 * sequence segment (training: top-k; inference: sigmoid(r) > 0.5), counters,
 * BCE targets, and the compact lists of kept rows. Returns nk. */
static int prune_select(const ds4_config *c, const ds4_layer *W, ds4_layer_acts *A, const ds4_batch *b,
                        const int *pos, int n, float rho, int topk_rule, int training,
                        unsigned char *mark, unsigned char *kept, ds4_prune_counts *counts) {
    const int D = c->hidden_size;
    ds4_linear(NULL, A->prune_r, A->xn1, W->prune_router, n, D, 1, 0);
    for (int i0 = 0; i0 < n;) {
        int i1 = i0;
        while (i1 < n && b->seq[i1] == b->seq[i0]) i1++;
        /* top-k membership is known when the segment is a whole sequence so far */
        const int known = topk_rule || pos[i0] == 0;
        if (known) ds4_prune_topk(A->prune_r + i0, pos + i0, i1 - i0, rho, mark + i0);
        for (int i = i0; i < i1; i++) {
            kept[i] = topk_rule ? mark[i] : (unsigned char)ds4_prune_causal_keep(A->prune_r[i], pos[i]);
            A->prune_y[i] = (!known || pos[i] == 0) ? -1.0f : (float)mark[i];
        }
        ds4_prune_count(counts, A->prune_r + i0, pos + i0, known ? mark + i0 : NULL, kept + i0, i1 - i0);
        i0 = i1;
    }
    int nk = 0;
    for (int i = 0; i < n; i++) {
        if (!kept[i]) continue;
        A->kidx[nk] = i;
        A->kpos[nk] = pos[i];
        A->kseq[nk] = b->seq[i];
        A->gate[nk] = 1.0f / (1.0f + expf(-A->prune_r[i]));
        memcpy(A->xk + (size_t)nk * D, A->xn1 + (size_t)i * D, sizeof(float) * D);
        nk++;
    }
    A->prune_bce = training ? ds4_prune_bce(A->prune_r, A->prune_y, n, NULL, 0, &A->prune_bce_n) : 0;
    if (!training) A->prune_bce_n = 0;
    return nk;
}

int ds4_forward_impl(const ds4_model *m, const ds4_batch *b, ds4_kv_cache *kv,
                     ds4_acts *acts, const int *out_rows, int n_out, float *logits) {
    const ds4_config *c = &m->cfg;
    if (check_batch(m, b, kv) != 0) return -1;
    if (ds4_decode_supported(m, b, acts)) {   /* batch-1 decode: model/decode.c */
        if (ds4_decode_step(m, b->tokens[0], b->seq[0], kv, out_rows && n_out <= 0 ? NULL : logits)) return -1;
        for (int j = 1; out_rows && j < n_out; j++)   /* the one row asked for again */
            memcpy(logits + (size_t)j * c->vocab_size, logits, sizeof(float) * c->vocab_size);
        return 0;
    }
    const int n = b->n, D = c->hidden_size, H = c->num_attention_heads, K = c->num_key_value_heads;
    const int Dh = c->head_dim, Q = H * Dh, KD = K * Dh;
    const int Hi = c->index_n_heads, Di = c->index_head_dim, sk = ds4_indexer_sel_k(c);
    const int topk_rule = acts && !acts->prune_causal;     /* training keeps the top-k */
    const int warmup = acts && acts->indexer_warmup;       /* indexer layers attend densely */
    ds4_acts *scratch = NULL;
    if (!acts) { if (!(scratch = ds4_acts_create(c, n, 1, 0))) return -1; }
    else if (acts->n_cap < n) { ds4_set_error("forward: activations hold %d tokens, batch has %d", acts->n_cap, n); return -1; }
    int *pos = ds4_malloc(sizeof(int) * (size_t)n);
    unsigned char *mark = ds4_malloc(2 * (size_t)n);       /* [n] top-k membership, [n] kept */
    if (!pos || !mark) { free(pos); free(mark); ds4_acts_free(scratch); return -1; }
    for (int i = 0; i < n; i++)
        pos[i] = (i > 0 && b->seq[i] == b->seq[i - 1]) ? pos[i - 1] + 1 : kv->next_pos[b->seq[i]];
    int rc = 0;

    /* x [n, D]: the residual stream, carried in the next layer's x_in */
    float *x = acts ? acts->l[0].x_in : scratch->l[0].x_in;
    for (int i = 0; i < n; i++) memcpy(x + (size_t)i * D, m->w.embed + (size_t)b->tokens[i] * D, sizeof(float) * D);

    for (int l = 0; l < c->num_hidden_layers && rc == 0; l++) {
        const ds4_layer *W = &m->w.layers[l];
        ds4_layer_acts *A = acts ? &acts->l[l] : &scratch->l[0];
        float *next = (acts && l + 1 < c->num_hidden_layers) ? acts->l[l + 1].x_in
                    : acts ? acts->x_out : A->x_in;
        if (A->x_in != x) memcpy(A->x_in, x, sizeof(float) * (size_t)n * D);
        ds4_rmsnorm(A->xn1, A->rstd1, A->x_in, W->input_layernorm, n, D, c->rms_norm_eps);

        /* token pruning: the layer runs on nk compact rows xs / ps / ss */
        const float rho = ds4_prune_ratio(c, l);
        const int pruned = rho > 0;
        int nk = n;
        const float *xs = A->xn1;
        const int *ps = pos, *ss = b->seq;
        if (pruned) {
            if (acts) memset(&A->prune_counts, 0, sizeof A->prune_counts);
            nk = prune_select(c, W, A, b, pos, n, rho, topk_rule, acts != NULL, mark, mark + n,
                              acts ? &A->prune_counts : &kv->prune[l]);
            xs = A->xk; ps = A->kpos; ss = A->kseq;
        }
        A->nk = nk;
        if (nk == 0) {                       /* every token dropped: the layer is the identity */
            if (next != A->x_in) memcpy(next, A->x_in, sizeof(float) * (size_t)n * D);
            x = next;
            continue;
        }

        ds4_linear(m, A->q, xs, W->q_proj, nk, D, Q, 0);
        ds4_linear(m, A->kn, xs, W->k_proj, nk, D, KD, 0);
        ds4_linear(m, A->vn, xs, W->v_proj, nk, D, KD, 0);
        ds4_rope(A->q, ps, nk, H, Dh, c->rope_theta);
        ds4_rope(A->kn, ps, nk, K, Dh, c->rope_theta);
        const int indexed = c->index_topk > 0;
        if (indexed) ds4_indexer_project(c, W, xs, ps, nk, A->iq, A->ik, A->ikraw, A->ikrstd, A->iw);
        /* append K/V (and indexer keys) to the cache, then attend per sequence segment */
        for (int i = 0; i < nk; i++) {
            const int s = ss[i];
            const size_t row = (size_t)s * kv->capacity + kv->len[l][s]++;
            memcpy(kv->k[l] + row * KD, A->kn + (size_t)i * KD, sizeof(float) * KD);
            memcpy(kv->v[l] + row * KD, A->vn + (size_t)i * KD, sizeof(float) * KD);
            if (indexed)
                ds4_indexer_key_put(kv->ki[l] + (size_t)s * kv->ki_stride, kv->len[l][s] - 1, A->ik + (size_t)i * Di, Di);
            kv->pos[l][row] = ps[i];
        }
        for (int i0 = 0; i0 < nk && rc == 0;) {
            const int s = ss[i0];
            int i1 = i0;
            while (i1 < nk && ss[i1] == s) i1++;
            const size_t base = (size_t)s * kv->capacity;
            const int sparse = indexed && !warmup;
            ds4_attn a = {
                .n_q = i1 - i0, .q = A->q + (size_t)i0 * Q, .qpos = ps + i0,
                .n_kv = kv->len[l][s], .k = kv->k[l] + base * KD, .v = kv->v[l] + base * KD,
                .kpos = kv->pos[l] + base, .n_heads = H, .n_kv_heads = K, .head_dim = Dh,
                .window = indexed ? 0 : c->sliding_window, .sinks = W->sinks, .sel = NULL, .sel_k = 0,
            };
            if (sparse) {   /* the window is part of each query's key list */
                int *sel = A->sel + (size_t)i0 * sk;
                if (ds4_indexer_select(c, A->iq + (size_t)i0 * Hi * Di, A->iw + (size_t)i0 * Hi, i1 - i0, ps + i0,
                                       kv->ki[l] + (size_t)s * kv->ki_stride, kv->pos[l] + base, kv->len[l][s],
                                       sel) != 0) {
                    rc = -1;
                    break;
                }
                a.sel = sel;
                a.sel_k = sk;
            }
            ds4_attention_forward(&a, A->att + (size_t)i0 * Q, A->lse + (size_t)i0 * H);
            i0 = i1;
        }
        if (rc != 0) break;
        if (pruned) {
            /* x_mid = x_in + g * o_proj(att) on kept rows */
            ds4_linear(m, A->ao, A->att, W->o_proj, nk, Q, D, 0);
            for (int j = 0; j < nk; j++) {
                const float g = A->gate[j], *xi = A->x_in + (size_t)A->kidx[j] * D, *ao = A->ao + (size_t)j * D;
                float *xm = A->x_mid + (size_t)j * D;
                for (int d = 0; d < D; d++) xm[d] = xi[d] + g * ao[d];
            }
        } else {
            memcpy(A->x_mid, A->x_in, sizeof(float) * (size_t)n * D);
            ds4_linear(m, A->x_mid, A->att, W->o_proj, n, Q, D, 1);
        }
        ds4_rmsnorm(A->xn2, A->rstd2, A->x_mid, W->post_attention_layernorm, nk, D, c->rms_norm_eps);
        if (!ds4_layer_is_moe(c, l)) {
            ds4_swiglu_ffn(A->ffn, A->xn2, W->gate_proj, W->up_proj, W->down_proj, A->g, A->u, A->h, nk, D,
                           c->intermediate_size, 0);
        } else {
            const int *seq_saved = A->seq;   /* MoE hooks see the compact rows' sequences */
            if (pruned && A->seq) A->seq = A->kseq;
            ds4_moe_forward(c, W, A, A->xn2, nk);
            A->seq = seq_saved;
        }
        if (pruned) {
            /* dropped rows pass through; kept rows get x_mid + g * ffn */
            if (next != A->x_in) memcpy(next, A->x_in, sizeof(float) * (size_t)n * D);
            for (int j = 0; j < nk; j++) {
                const float g = A->gate[j], *xm = A->x_mid + (size_t)j * D, *f = A->ffn + (size_t)j * D;
                float *y = next + (size_t)A->kidx[j] * D;
                for (int d = 0; d < D; d++) y[d] = xm[d] + g * f[d];
            }
        } else {
            for (size_t i = 0; i < (size_t)n * D; i++) next[i] = A->x_mid[i] + A->ffn[i];
        }
        x = next;
    }
    if (rc != 0) ds4_error_prefix("forward, layer key selection: ");
    for (int i = 0; i < n && rc == 0; i++) kv->next_pos[b->seq[i]] = pos[i] + 1;

    if (rc == 0 && acts) {
        ds4_rmsnorm(acts->xnf, acts->rstdf, acts->x_out, m->w.norm, n, D, c->rms_norm_eps);
        if (acts->logits) lm_head(m, acts->logits, acts->xnf, n);
    } else if (rc == 0) {
        if (!out_rows) n_out = n;
        float *xs = scratch->l[0].xn1;       /* reuse: [n_out, D] selected rows, normed */
        for (int j = 0; j < n_out; j++) {
            const int r = out_rows ? out_rows[j] : j;
            ds4_rmsnorm(xs + (size_t)j * D, NULL, x + (size_t)r * D, m->w.norm, 1, D, c->rms_norm_eps);
        }
        lm_head(m, logits, xs, n_out);
    }
    free(pos);
    free(mark);
    ds4_acts_free(scratch);
    return rc;
}

int ds4_forward(const ds4_model *m, const ds4_batch *b, ds4_kv_cache *kv,
                const int *out_rows, int n_out, float *logits) {
    if (out_rows)
        for (int j = 0; j < n_out; j++)
            if (out_rows[j] < 0 || out_rows[j] >= b->n) {
                ds4_set_error("forward: output row %d outside the batch of %d", out_rows[j], b->n);
                return -1;
            }
    return ds4_forward_impl(m, b, kv, NULL, out_rows, n_out, logits);
}

int ds4_forward_logits(const ds4_model *m, const int *ids, int T, float *logits) {
    if (T <= 0) { ds4_set_error("forward: no tokens"); return -1; }
    ds4_kv_cache *kv = ds4_kv_cache_create(&m->cfg, 1, T);
    if (!kv) return -1;
    int *seq = ds4_calloc((size_t)T, sizeof(int));
    if (!seq) { ds4_kv_cache_free(kv); return -1; }
    ds4_batch b = {.n = T, .tokens = ids, .seq = seq};
    int rc = ds4_forward(m, &b, kv, NULL, T, logits);
    free(seq);
    ds4_kv_cache_free(kv);
    return rc;
}
