/* backward.c — gradients of the forward pass (forward.c) for training: the
 * layers in reverse, attention by recomputation from the saved log-sum-exp,
 * MoE through the experts and the routing weights. */
#include <stdlib.h>
#include <string.h>
#include "kernels/kernels.h"
#include "model/acts.h"
#include "model/forward.h"
#include "model/moe.h"
#include "util/util.h"



static void bw_free(ds4_bw_scratch *s) {
    float *ps[] = {s->dx, s->dxn, s->dq, s->dk, s->dv, s->datt, s->dh, s->dg, s->du, s->dey,
                   s->deh, s->deg, s->deu, s->dex, s->dweights, s->drlogits};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) free(ps[i]);
}

static int bw_alloc(ds4_bw_scratch *s, const ds4_config *c, int n) {
    memset(s, 0, sizeof *s);
    const size_t D = c->hidden_size, Q = (size_t)c->num_attention_heads * c->head_dim;
    const size_t KD = (size_t)c->num_key_value_heads * c->head_dim, k = ds4_moe_k(c);
    const size_t Fm = c->moe_intermediate_size, E = c->n_routed_experts;
    size_t F = c->intermediate_size;
    if ((size_t)c->n_shared_experts * Fm > F) F = (size_t)c->n_shared_experts * Fm;
    size_t sz[] = {n * D, n * D, n * Q, n * KD, n * KD, n * Q, n * F, n * F, n * F,
                   n * k * D, n * k * Fm, n * k * Fm, n * k * Fm, n * k * D, n * k, n * E};
    float **ps[] = {&s->dx, &s->dxn, &s->dq, &s->dk, &s->dv, &s->datt, &s->dh, &s->dg, &s->du, &s->dey,
                    &s->deh, &s->deg, &s->deu, &s->dex, &s->dweights, &s->drlogits};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++)
        if (!(*ps[i] = ds4_alloc_aligned((sz[i] ? sz[i] : 1) * sizeof(float)))) { bw_free(s); return -1; }
    return 0;
}

/* SwiGLU FFN backward; dx ACCUMULATES, dh/dg/du are scratch [n,F]. */
void ds4_swiglu_ffn_backward(float *dx, float *dwg, float *dwu, float *dwd, const float *dy,
                                const float *x, const float *wg, const float *wu, const float *wd,
                                const float *g, const float *u, const float *h,
                                float *dh, float *dg, float *du, int n, int D, int F) {
    memset(dh, 0, sizeof(float) * (size_t)n * F);
    ds4_matmul_backward(dh, dwd, dy, h, wd, n, F, D);
    ds4_swiglu_backward(dg, du, dh, g, u, (size_t)n * F);
    ds4_matmul_backward(dx, dwg, dg, x, wg, n, D, F);
    ds4_matmul_backward(dx, dwu, du, x, wu, n, D, F);
}

void ds4_backward_scratch_free(void *bw) {
    if (!bw) return;
    bw_free(bw);
    free(bw);
}

int ds4_backward(const ds4_model *m, const ds4_batch *b, const ds4_kv_cache *kv,
                 ds4_acts *acts, const float *dlogits, float *grads) {
    const ds4_config *c = &m->cfg;
    const int n = b->n, D = c->hidden_size, H = c->num_attention_heads, K = c->num_key_value_heads;
    const int Dh = c->head_dim, Q = H * Dh, KD = K * Dh, V = c->vocab_size;
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

    /* lm_head and final norm */
    memset(s.dxn, 0, sizeof(float) * (size_t)n * D);
    ds4_matmul_backward(s.dxn, gw.lm_head, dlogits, acts->xnf, m->w.lm_head, n, D, V);
    memset(s.dx, 0, sizeof(float) * (size_t)n * D);
    ds4_rmsnorm_backward(s.dx, gw.norm, s.dxn, acts->x_out, m->w.norm, acts->rstdf, n, D);

    for (int l = c->num_hidden_layers - 1; l >= 0; l--) {
        const ds4_layer *W = &m->w.layers[l];
        ds4_layer *G = &gw.layers[l];
        const ds4_layer_acts *A = &acts->l[l];
        /* FFN: x_out = x_mid + ffn(norm2(x_mid)); s.dx holds d x_out */
        memset(s.dxn, 0, sizeof(float) * (size_t)n * D);
        if (!ds4_layer_is_moe(c, l))
            ds4_swiglu_ffn_backward(s.dxn, G->gate_proj, G->up_proj, G->down_proj, s.dx, A->xn2, W->gate_proj,
                                W->up_proj, W->down_proj, A->g, A->u, A->h, s.dh, s.dg, s.du, n, D,
                                c->intermediate_size);
        else
            ds4_moe_backward(c, W, G, A, A->xn2, s.dx, s.dxn, &s, n);
        ds4_rmsnorm_backward(s.dx, G->post_attention_layernorm, s.dxn, A->x_mid, W->post_attention_layernorm,
                             A->rstd2, n, D);
        /* attention: x_mid = x_in + o_proj(att); s.dx holds d x_mid */
        memset(s.datt, 0, sizeof(float) * (size_t)n * Q);
        ds4_matmul_backward(s.datt, G->o_proj, s.dx, A->att, W->o_proj, n, Q, D);
        memset(s.dq, 0, sizeof(float) * (size_t)n * Q);
        memset(s.dk, 0, sizeof(float) * (size_t)n * KD);
        memset(s.dv, 0, sizeof(float) * (size_t)n * KD);
        for (int i0 = 0; i0 < n;) {
            const int sq = b->seq[i0];
            int i1 = i0;
            while (i1 < n && b->seq[i1] == sq) i1++;
            if (kv->len[l][sq] != i1 - i0) {
                ds4_set_error("backward: sequence %d did not start from an empty cache", sq);
                free(pos);
                return -1;
            }
            const size_t base = (size_t)sq * kv->capacity;
            ds4_attn a = {
                .n_q = i1 - i0, .q = A->q + (size_t)i0 * Q, .qpos = pos + i0,
                .n_kv = i1 - i0, .k = kv->k[l] + base * KD, .v = kv->v[l] + base * KD,
                .kpos = kv->pos[l] + base, .n_heads = H, .n_kv_heads = K, .head_dim = Dh,
                .window = c->sliding_window, .sinks = W->sinks, .sel = NULL, .sel_k = 0,
            };
            ds4_attention_backward(&a, A->att + (size_t)i0 * Q, A->lse + (size_t)i0 * H,
                                   s.datt + (size_t)i0 * Q, s.dq + (size_t)i0 * Q,
                                   s.dk + (size_t)i0 * KD, s.dv + (size_t)i0 * KD, G->sinks);
            i0 = i1;
        }
        ds4_rope_backward(s.dq, pos, n, H, Dh, c->rope_theta);
        ds4_rope_backward(s.dk, pos, n, K, Dh, c->rope_theta);
        memset(s.dxn, 0, sizeof(float) * (size_t)n * D);
        ds4_matmul_backward(s.dxn, G->q_proj, s.dq, A->xn1, W->q_proj, n, D, Q);
        ds4_matmul_backward(s.dxn, G->k_proj, s.dk, A->xn1, W->k_proj, n, D, KD);
        ds4_matmul_backward(s.dxn, G->v_proj, s.dv, A->xn1, W->v_proj, n, D, KD);
        ds4_rmsnorm_backward(s.dx, G->input_layernorm, s.dxn, A->x_in, W->input_layernorm, A->rstd1, n, D);
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
