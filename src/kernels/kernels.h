/* kernels.h — the math of ds4 as free functions, forward and backward, on
 * plain fp32 arrays (row-major). No I/O, no global state, no config structs:
 * a CUDA backend reimplements exactly this list. Backward functions ACCUMULATE
 * (+=) into gradient outputs unless stated otherwise. */
#ifndef DS4_KERNELS_H
#define DS4_KERNELS_H

#include <stddef.h>

/* ---- linear layers (OpenBLAS sgemm) --------------------------------------
 * y[n,out] = x[n,in] @ w[out,in]^T ; if acc, y += instead of y =. */
void ds4_matmul(float *y, const float *x, const float *w, int n, int in, int out, int acc);
/* Same product for n <= 4 rows without packing w (gemv.c); ds4_matmul uses it. */
void ds4_matmul_small(float *y, const float *x, const float *w, int n, int in, int out, int acc);
/* dx[n,in] += dy[n,out] @ w[out,in]   (skipped if dx == NULL)
 * dw[out,in] += dy[n,out]^T @ x[n,in] (skipped if dw == NULL) */
void ds4_matmul_backward(float *dx, float *dw, const float *dy, const float *x,
                         const float *w, int n, int in, int out);
/* The same with dy rows ldy >= out floats apart (a column block of a wider
 * matrix), and dx WRITTEN (dx_acc = 0) or accumulated (dx_acc = 1). */
void ds4_matmul_backward_ex(float *dx, float *dw, const float *dy, size_t ldy, const float *x,
                            const float *w, int n, int in, int out, int dx_acc);

/* ---- RMSNorm: y = x / sqrt(mean(x^2) + eps) * w ----------------------------
 * x,y [n,d]; w [d]; rstd [n] saved for backward (may be NULL in inference). */
void ds4_rmsnorm(float *y, float *rstd, const float *x, const float *w, int n, int d, float eps);
void ds4_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x,
                          const float *w, const float *rstd, int n, int d);

/* ---- RoPE, rotate-half layout (HF Llama/DeepSeek): for each head, pairs
 * (i, i + Dh/2), i < Dh/2, rotated by angle pos * theta^(-2i/Dh).
 * x [n, nh*hd] in place; pos [n]. Backward rotates by -angle (in place). */
void ds4_rope(float *x, const int *pos, int n, int nh, int hd, float theta);
void ds4_rope_backward(float *dx, const int *pos, int n, int nh, int hd, float theta);
/* The same on rows ld >= nh*hd floats apart. */
void ds4_rope_backward_ld(float *dx, size_t ld, const int *pos, int n, int nh, int hd, float theta);

/* ---- SwiGLU: h = silu(g) * u, all [n] (flattened) ------------------------ */
void ds4_swiglu(float *h, const float *g, const float *u, size_t n);
/* dg, du are WRITTEN (not accumulated). */
void ds4_swiglu_backward(float *dg, float *du, const float *dh, const float *g,
                         const float *u, size_t n);
/* The same on n rows of F, written side by side: dgu [n, 2F] holds
 * [dg_r | du_r] in row r (dh, g, u [n, F]). */
void ds4_swiglu_backward_rows(float *dgu, const float *dh, const float *g, const float *u, int n, int F);

/* ---- softmax cross-entropy over rows --------------------------------------
 * logits [n, V], targets [n] (target < 0: ignored). Returns the summed loss
 * over counted rows; if dlogits != NULL it is WRITTEN with
 * (softmax - onehot) * scale for counted rows and 0 for ignored ones.
 * dlogits may alias logits. */
double ds4_softmax_xent(float *dlogits, const float *logits, const int *targets,
                        int n, int V, float scale);

/* ---- attention ------------------------------------------------------------
 * Tiled causal attention with online softmax: memory O(n_q + n_kv), never an
 * n_q x n_kv matrix. Grouped-query: query head h uses kv head h / (H / K).
 * Key j is visible to query i iff kpos[j] <= qpos[i] and, when window > 0,
 * qpos[i] - kpos[j] < window. With sel != NULL only the keys listed in
 * sel[i*sel_k .. +sel_k) (indices into k/v, -1 = unused slot) are candidates
 * (indexed sparse attention, SPEC §1.4), still subject to the visibility rule.
 * sinks [H]: an extra softmax entry per head with logit sinks[h] and a zero
 * value vector. Scale 1/sqrt(Dh). A query with no visible key outputs 0. */
typedef struct ds4_attn {
    int n_q;               /* number of queries */
    const float *q;        /* [n_q, H*Dh], already roped */
    const int *qpos;       /* [n_q] positions */
    int n_kv;              /* number of keys */
    const float *k;        /* [n_kv, K*Dh], already roped */
    const float *v;        /* [n_kv, K*Dh] */
    const int *kpos;       /* [n_kv] positions, strictly increasing */
    int n_heads, n_kv_heads, head_dim;
    int window;            /* 0 = unlimited */
    const float *sinks;    /* [H] or NULL */
    const int *sel;        /* [n_q, sel_k] or NULL (dense) */
    int sel_k;
} ds4_attn;

/* out [n_q, H*Dh]; lse [n_q, H] log-sum-exp per row incl. sink (NULL: not saved). */
void ds4_attention_forward(const ds4_attn *a, float *out, float *lse);
/* Recomputes scores from q, k, lse (flash-attention style). dq [n_q,H*Dh],
 * dk, dv [n_kv, K*Dh], dsinks [H] (may be NULL) accumulate. */
void ds4_attention_backward(const ds4_attn *a, const float *out, const float *lse,
                            const float *dout, float *dq, float *dk, float *dv,
                            float *dsinks);
/* The same with output row strides: dq rows ldq >= H*Dh floats apart, dk/dv
 * rows ldkv >= K*Dh apart (e.g. views into one [n, Q + 2 KD] buffer). */
void ds4_attention_backward_ld(const ds4_attn *a, const float *out, const float *lse,
                               const float *dout, float *dq, size_t ldq, float *dk, float *dv,
                               size_t ldkv, float *dsinks);
/* Naive reference (materialises scores row by row), used by tests only. */
void ds4_attention_reference(const ds4_attn *a, float *out);

#endif
