/* backward.c — gradients of the forward pass (forward.c) for training: the
 * layers in reverse, attention by recomputation from the saved log-sum-exp,
 * MoE through the experts and the routing weights, pruned layers through the
 * gate and the router (plus its BCE), and the indexer's KL loss. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/kernels.h"
#include "model/acts.h"
#include "model/forward.h"
#include "model/indexer.h"
#include "model/moe.h"
#include "model/prune.h"
#include "util/util.h"



/* s->dq owns one [n, Q + 2 KD] buffer: rows [dq | dk | dv], dk and dv are
 * views into it (the q/k/v gradients then meet the adjacent q/k/v weights as
 * one matrix). s->dg is [n, 2F]: rows [dg | du] for the dense FFN. */
static void bw_free(ds4_bw_scratch *s) {
    float *ps[] = {s->dx, s->dxn, s->dq, s->datt, s->dh, s->dg, s->du, s->dey,
                   s->deh, s->deg, s->deu, s->dex, s->dweights, s->drlogits,
                   s->cdx, s->cdy, s->dxf, s->dgate, s->dr, s->diq, s->diw, s->dik, s->dikraw};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) free(ps[i]);
}

static int bw_alloc(ds4_bw_scratch *s, const ds4_config *c, int n) {
    memset(s, 0, sizeof *s);
    const size_t D = c->hidden_size, Q = (size_t)c->num_attention_heads * c->head_dim;
    const size_t KD = (size_t)c->num_key_value_heads * c->head_dim, k = ds4_moe_k(c);
    const size_t Fm = c->moe_intermediate_size, E = c->n_routed_experts;
    size_t F = c->intermediate_size;
    if ((size_t)c->n_shared_experts * Fm > F) F = (size_t)c->n_shared_experts * Fm;
    const size_t P = ds4_prune_any(c) ? (size_t)n : 0, Hi = c->index_n_heads;
    const size_t Di = c->index_topk > 0 ? (size_t)c->index_head_dim : 0;
    size_t sz[] = {n * D, n * D, n * (Q + 2 * KD), n * Q, n * F, 2 * n * F, n * F,
                   n * k * D, n * k * Fm, n * k * Fm, n * k * Fm, n * k * D, n * k, n * E,
                   P * D, P * D, P * D, P, P, n * Hi * Di, Di ? n * Hi : 0, n * Di, n * Di};
    float **ps[] = {&s->dx, &s->dxn, &s->dq, &s->datt, &s->dh, &s->dg, &s->du, &s->dey,
                    &s->deh, &s->deg, &s->deu, &s->dex, &s->dweights, &s->drlogits,
                    &s->cdx, &s->cdy, &s->dxf, &s->dgate, &s->dr, &s->diq, &s->diw, &s->dik, &s->dikraw};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++)
        if (!(*ps[i] = ds4_alloc_aligned((sz[i] ? sz[i] : 1) * sizeof(float)))) { bw_free(s); return -1; }
    s->dk = s->dq + Q;
    s->dv = s->dq + Q + KD;
    return 0;
}

/* SwiGLU FFN backward; dx ACCUMULATES, dh/dg/du are scratch [n,F]. */
void ds4_swiglu_ffn_backward(float *dx, float *dwg, float *dwu, float *dwd, const float *dy,
                                const float *x, const float *wg, const float *wu, const float *wd,
                                const float *g, const float *u, const float *h,
                                float *dh, float *dg, float *du, int n, int D, int F) {
    ds4_matmul_backward_ex(dh, dwd, dy, (size_t)D, h, wd, n, F, D, 0);
    ds4_swiglu_backward(dg, du, dh, g, u, (size_t)n * F);
    ds4_matmul_backward(dx, dwg, dg, x, wg, n, D, F);
    ds4_matmul_backward(dx, dwu, du, x, wu, n, D, F);
}

/* The dense FFN's backward with gate and up side by side: dgu [n, 2F] holds
 * [dg | du] per row, so when gate_proj and up_proj (and their gradients) are
 * adjacent in the parameter buffer, one [2F, D] matrix, dx and their weight
 * gradients take one GEMM each. dx is WRITTEN; dh [n,F], dgu [n,2F] scratch. */
static void dense_ffn_backward(float *dx, float *dwg, float *dwu, float *dwd, const float *dy,
                               const float *x, const float *wg, const float *wu, const float *wd,
                               const float *g, const float *u, const float *h,
                               float *dh, float *dgu, int n, int D, int F) {
    const size_t FD = (size_t)F * D;
    ds4_matmul_backward_ex(dh, dwd, dy, (size_t)D, h, wd, n, F, D, 0);
    ds4_swiglu_backward_rows(dgu, dh, g, u, n, F);
    if (wu == wg + FD && dwg && dwu == dwg + FD) {
        ds4_matmul_backward_ex(dx, dwg, dgu, 2 * (size_t)F, x, wg, n, D, 2 * F, 0);
    } else {
        ds4_matmul_backward_ex(dx, dwg, dgu, 2 * (size_t)F, x, wg, n, D, F, 0);
        ds4_matmul_backward_ex(dx, dwu, dgu + F, 2 * (size_t)F, x, wu, n, D, F, 1);
    }
}

void ds4_backward_scratch_free(void *bw) {
    if (!bw) return;
    bw_free(bw);
    free(bw);
}

/* Indexer loss of layer l (SPEC §1.4): KL(p || softmax(I)) per query over the
 * keys it attended (every causal key during the warm-up), mean over queries;
 * gradients reach only the indexer tensors (its input is detached). */
static int indexer_backward(const ds4_model *m, const ds4_batch *b, const ds4_kv_cache *kv, ds4_layer_acts *A,
                            ds4_layer *G, int l, const int *pos, int warmup, ds4_bw_scratch *s) {
    const ds4_config *c = &m->cfg;
    const ds4_layer *W = &m->w.layers[l];
    const int D = c->hidden_size, H = c->num_attention_heads, K = c->num_key_value_heads, Dh = c->head_dim;
    const int Q = H * Dh, KD = K * Dh, Hi = c->index_n_heads, Di = c->index_head_dim, sk = ds4_indexer_sel_k(c);
    const int nk = A->nk, pruned = ds4_prune_ratio(c, l) > 0;
    const int *ps = pruned ? A->kpos : pos, *ss = pruned ? A->kseq : b->seq;
    const float *xs = pruned ? A->xk : A->xn1;
    int *seg = ds4_malloc(sizeof(int) * (size_t)(nk + 1));    /* segment starts, then nk */
    if (!seg) return -1;
    int nseg = 0;
    for (int i = 0; i < nk; i++)
        if (i == 0 || ss[i] != ss[i - 1]) seg[nseg++] = i;
    seg[nseg] = nk;
    memset(s->diq, 0, sizeof(float) * (size_t)nk * Hi * Di);
    memset(s->diw, 0, sizeof(float) * (size_t)nk * Hi);
    memset(s->dik, 0, sizeof(float) * (size_t)nk * Di);
    const float scale = A->aux_scale / (float)nk;
    double kl = 0;
    int failed = 0;
    #pragma omp parallel for schedule(dynamic, 1) reduction(+ : kl)
    for (int g = 0; g < nseg; g++) {
        const int i0 = seg[g], i1 = seg[g + 1], sq = ss[i0];
        const size_t base = (size_t)sq * kv->capacity;
        ds4_indexer_seg sg = {
            .nq = i1 - i0, .qpos = ps + i0, .q = A->q + (size_t)i0 * Q, .lse = A->lse + (size_t)i0 * H,
            .n_kv = kv->len[l][sq], .kpos = kv->pos[l] + base, .k = kv->k[l] + base * KD,
            .iq = A->iq + (size_t)i0 * Hi * Di, .iw = A->iw + (size_t)i0 * Hi, .ik = A->ik + (size_t)i0 * Di,
            .sel = warmup ? NULL : A->sel + (size_t)i0 * sk, .sel_k = sk,
            .H = H, .K = K, .Dh = Dh, .Hi = Hi, .Di = Di,
        };
        /* keys of the sequence are its rows i0.. (the cache started empty): A->ik rows */
        double v = ds4_indexer_kl(&sg, scale, s->diq + (size_t)i0 * Hi * Di, s->diw + (size_t)i0 * Hi,
                                  s->dik + (size_t)i0 * Di);
        if (isnan(v)) failed = 1; else kl += v;
    }
    free(seg);
    if (failed) { ds4_set_error("backward: out of memory in the indexer loss of layer %d", l); return -1; }
    A->idx_kl = kl;
    A->idx_kl_n = nk;
    /* w = weights_proj x / sqrt(Hi) */
    const float ws = 1.0f / sqrtf((float)Hi);
    for (size_t i = 0; i < (size_t)nk * Hi; i++) s->diw[i] *= ws;
    ds4_matmul_backward(NULL, G->idx_weights_proj, s->diw, xs, W->idx_weights_proj, nk, D, Hi);
    ds4_rope_backward(s->diq, ps, nk, Hi, Di, c->rope_theta);
    ds4_matmul_backward(NULL, G->idx_wq, s->diq, xs, W->idx_wq, nk, D, Hi * Di);
    ds4_rope_backward(s->dik, ps, nk, 1, Di, c->rope_theta);
    memset(s->dikraw, 0, sizeof(float) * (size_t)nk * Di);
    ds4_rmsnorm_backward(s->dikraw, G->idx_k_norm, s->dik, A->ikraw, W->idx_k_norm, A->ikrstd, nk, Di);
    ds4_matmul_backward(NULL, G->idx_wk, s->dikraw, xs, W->idx_wk, nk, D, Di);
    return 0;
}

int ds4_backward(const ds4_model *m, const ds4_batch *b, const ds4_kv_cache *kv,
                 ds4_acts *acts, const float *dlogits, float *grads) {
    const ds4_config *c = &m->cfg;
    const int n = b->n, D = c->hidden_size, H = c->num_attention_heads, K = c->num_key_value_heads;
    const int Dh = c->head_dim, Q = H * Dh, KD = K * Dh, V = c->vocab_size, sk = ds4_indexer_sel_k(c);
    const int indexed = c->index_topk > 0, warmup = acts->indexer_warmup;
    ds4_weights gw;
    ds4_weights_bind(&gw, c, &m->layout, grads);
    if (!acts->bw) {
        ds4_bw_scratch *sc = ds4_malloc(sizeof *sc);
        if (!sc) return -1;
        if (bw_alloc(sc, c, acts->n_cap) != 0) { free(sc); return -1; }
        acts->bw = sc;
    }
    ds4_bw_scratch s = *(ds4_bw_scratch *)acts->bw;
    int *pos = ds4_malloc(sizeof(int) * (size_t)n);
    if (!pos) return -1;
    for (int i = 0; i < n; i++) pos[i] = (i > 0 && b->seq[i] == b->seq[i - 1]) ? pos[i - 1] + 1 : 0;
    /* every sequence must have started from an empty cache: its cached rows
     * in each layer are exactly the rows that layer processed */
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const ds4_layer_acts *A = &acts->l[l];
        const int *ss = ds4_prune_ratio(c, l) > 0 ? A->kseq : b->seq;
        for (int i0 = 0; i0 < A->nk;) {
            int i1 = i0;
            while (i1 < A->nk && ss[i1] == ss[i0]) i1++;
            if (kv->len[l][ss[i0]] != i1 - i0) {
                ds4_set_error("backward: sequence %d did not start from an empty cache (layer %d)", ss[i0], l);
                free(pos);
                return -1;
            }
            i0 = i1;
        }
    }

    /* indexer warm-up: only the indexer learns, from its KL loss */
    if (warmup) {
        int rc = 0;
        for (int l = 0; l < c->num_hidden_layers && rc == 0 && indexed; l++)
            rc = indexer_backward(m, b, kv, &acts->l[l], &gw.layers[l], l, pos, 1, &s);
        free(pos);
        return rc;
    }

    /* lm_head and final norm */
    ds4_matmul_backward_ex(s.dxn, gw.lm_head, dlogits, (size_t)V, acts->xnf, m->w.lm_head, n, D, V, 0);
    memset(s.dx, 0, sizeof(float) * (size_t)n * D);
    ds4_rmsnorm_backward(s.dx, gw.norm, s.dxn, acts->x_out, m->w.norm, acts->rstdf, n, D);

    for (int l = c->num_hidden_layers - 1; l >= 0; l--) {
        const ds4_layer *W = &m->w.layers[l];
        ds4_layer *G = &gw.layers[l];
        ds4_layer_acts *A = &acts->l[l];
        const float rho = ds4_prune_ratio(c, l);
        const int pruned = rho > 0, nk = A->nk;
        const int *ps = pruned ? A->kpos : pos, *ss = pruned ? A->kseq : b->seq;
        /* dxo: d(layer output) on the nk processed rows */
        float *dxo = s.dx;
        if (pruned) {
            dxo = s.cdx;
            for (int j = 0; j < nk; j++) {
                const float *d = s.dx + (size_t)A->kidx[j] * D, *f = A->ffn + (size_t)j * D;
                float *cd = s.cdx + (size_t)j * D, *cy = s.cdy + (size_t)j * D;
                const float g = A->gate[j];
                float dg = 0;
                for (int e = 0; e < D; e++) { cd[e] = d[e]; cy[e] = g * d[e]; dg += d[e] * f[e]; }
                s.dgate[j] = dg;
            }
        }
        /* FFN: out = x_mid + g * ffn(norm2(x_mid)) */
        const float *dffn = pruned ? s.cdy : s.dx;
        if (!ds4_layer_is_moe(c, l)) {
            dense_ffn_backward(s.dxn, G->gate_proj, G->up_proj, G->down_proj, dffn, A->xn2, W->gate_proj,
                               W->up_proj, W->down_proj, A->g, A->u, A->h, s.dh, s.dg, nk, D,
                               c->intermediate_size);
        } else {
            memset(s.dxn, 0, sizeof(float) * (size_t)nk * D);
            ds4_layer_acts Ac = *A;        /* MoE hooks see the compact rows' sequences */
            if (pruned && A->seq) Ac.seq = A->kseq;
            ds4_moe_backward(c, W, G, &Ac, A->xn2, dffn, s.dxn, &s, nk);
        }
        ds4_rmsnorm_backward(dxo, G->post_attention_layernorm, s.dxn, A->x_mid, W->post_attention_layernorm,
                             A->rstd2, nk, D);
        /* attention: x_mid = x_in + g * o_proj(att); dxo holds d x_mid */
        const float *dao = dxo;
        if (pruned) {
            for (int j = 0; j < nk; j++) {
                const float *d = dxo + (size_t)j * D, *ao = A->ao + (size_t)j * D;
                float *cy = s.cdy + (size_t)j * D;
                const float g = A->gate[j];
                float dg = 0;
                for (int e = 0; e < D; e++) { cy[e] = g * d[e]; dg += d[e] * ao[e]; }
                s.dgate[j] += dg;
            }
            dao = s.cdy;
        }
        ds4_matmul_backward_ex(s.datt, G->o_proj, dao, (size_t)D, A->att, W->o_proj, nk, Q, D, 0);
        /* dq, dk, dv side by side: rows of dqkv [nk, Q + 2 KD] */
        const size_t QKV = (size_t)Q + 2 * (size_t)KD;
        memset(s.dq, 0, sizeof(float) * (size_t)nk * QKV);
        for (int i0 = 0; i0 < nk;) {
            const int sq = ss[i0];
            int i1 = i0;
            while (i1 < nk && ss[i1] == sq) i1++;
            const size_t base = (size_t)sq * kv->capacity;
            ds4_attn a = {
                .n_q = i1 - i0, .q = A->q + (size_t)i0 * Q, .qpos = ps + i0,
                .n_kv = i1 - i0, .k = kv->k[l] + base * KD, .v = kv->v[l] + base * KD,
                .kpos = kv->pos[l] + base, .n_heads = H, .n_kv_heads = K, .head_dim = Dh,
                .window = indexed ? 0 : c->sliding_window, .sinks = W->sinks, .sel = NULL, .sel_k = 0,
            };
            if (indexed) { a.sel = A->sel + (size_t)i0 * sk; a.sel_k = sk; }
            ds4_attention_backward_ld(&a, A->att + (size_t)i0 * Q, A->lse + (size_t)i0 * H,
                                      s.datt + (size_t)i0 * Q, s.dq + (size_t)i0 * QKV, QKV,
                                      s.dk + (size_t)i0 * QKV, s.dv + (size_t)i0 * QKV, QKV, G->sinks);
            i0 = i1;
        }
        /* dq and dk are H + K adjacent heads of each row: one RoPE pass */
        ds4_rope_backward_ld(s.dq, QKV, ps, nk, H + K, Dh, c->rope_theta);
        const float *xs = pruned ? A->xk : A->xn1;
        const size_t QD = (size_t)Q * D, KDD = (size_t)KD * D;
        if (W->k_proj == W->q_proj + QD && W->v_proj == W->k_proj + KDD && G->q_proj &&
            G->k_proj == G->q_proj + QD && G->v_proj == G->k_proj + KDD) {
            /* q_proj, k_proj, v_proj adjacent: one [Q + 2 KD, D] matrix */
            ds4_matmul_backward_ex(s.dxn, G->q_proj, s.dq, QKV, xs, W->q_proj, nk, D, (int)QKV, 0);
        } else {
            ds4_matmul_backward_ex(s.dxn, G->q_proj, s.dq, QKV, xs, W->q_proj, nk, D, Q, 0);
            ds4_matmul_backward_ex(s.dxn, G->k_proj, s.dk, QKV, xs, W->k_proj, nk, D, KD, 1);
            ds4_matmul_backward_ex(s.dxn, G->v_proj, s.dv, QKV, xs, W->v_proj, nk, D, KD, 1);
        }
        if (pruned) {
            /* kept rows: residual gradient d x_mid; dropped rows keep d(out) (identity) */
            memset(s.dxf, 0, sizeof(float) * (size_t)n * D);
            memset(s.dr, 0, sizeof(float) * (size_t)n);
            for (int j = 0; j < nk; j++) {
                const int i = A->kidx[j];
                memcpy(s.dx + (size_t)i * D, dxo + (size_t)j * D, sizeof(float) * D);
                memcpy(s.dxf + (size_t)i * D, s.dxn + (size_t)j * D, sizeof(float) * D);
                const float g = A->gate[j];
                s.dr[i] = s.dgate[j] * g * (1.0f - g);
            }
            /* router BCE towards top-k membership, mean over counted tokens */
            if (A->prune_bce_n > 0 && c->prune_loss_weight > 0)
                ds4_prune_bce(A->prune_r, A->prune_y, n, s.dr,
                              c->prune_loss_weight * A->aux_scale / (float)A->prune_bce_n, NULL);
            ds4_matmul_backward(s.dxf, G->prune_router, s.dr, A->xn1, W->prune_router, n, D, 1);
            ds4_rmsnorm_backward(s.dx, G->input_layernorm, s.dxf, A->x_in, W->input_layernorm, A->rstd1, n, D);
        } else {
            ds4_rmsnorm_backward(s.dx, G->input_layernorm, s.dxn, A->x_in, W->input_layernorm, A->rstd1, n, D);
        }
        if (indexed && indexer_backward(m, b, kv, A, G, l, pos, 0, &s) != 0) { free(pos); return -1; }
    }
    /* embeddings: scatter-add (serial: tokens may repeat) */
    for (int i = 0; i < n; i++) {
        float *g = gw.embed + (size_t)b->tokens[i] * D;
        const float *d = s.dx + (size_t)i * D;
        for (int j = 0; j < D; j++) g[j] += d[j];
    }
    free(pos);
    return 0;
}
