/* attention.c — causal attention with online softmax (flash-attention style):
 * dense tiled, sliding window, indexed sparse (sel lists), GQA, per-head sinks.
 * Memory O(n_q + n_kv): scores exist only as [rows, 64] tiles per thread. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "kernels/tile.h"
#include "util/util.h"

/* How it is organised.
 * - A "row" is one (query i, head h) pair. A row tile holds bq queries times
 *   all G = H/K heads that share one kv head g, so every key row loaded for
 *   the tile serves all of them (GQA), R = bq*G <= ~64 rows.
 * - Scores are kept in base 2: q is pre-scaled by log2(e)/sqrt(Dh) so the
 *   softmax uses exp2; lse is returned in natural log.
 * - Keys visible to query i form one index range [lo[i], hi[i]) because kpos
 *   is increasing; tiles inside every row's range skip masking entirely.
 * - Forward jobs are (row tile, kv head, key split). Decode (few row tiles)
 *   splits the keys across threads; partial (max, sum, acc) are merged, and
 *   a job takes all kv heads so that each K/V row is streamed once.
 * - Backward (flash-attention-2) recomputes P from lse and runs two passes so
 *   that every output has one owner: pass 1 over key tiles writes dk, dv;
 *   pass 2 over row tiles writes dq. No atomics, results independent of the
 *   thread count and of scheduling. */

#define BK 64            /* keys per tile */
#define RMAX 64          /* target rows (query x head) per tile */
#define SPLIT_MIN 256    /* fewest keys worth a separate decode split */
#define ATTN_PAR_MIN (1u << 18)   /* forward work (pairs x H x Dh) below which one thread runs it */
#ifndef SCORE_DIRECT_MAX_ROWS
#define SCORE_DIRECT_MAX_ROWS 8  /* up to this many rows: dot products, no transpose */
#endif
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

typedef struct geom {
    const ds4_attn *a;
    int H, K, G, Dh;
    size_t qs, ks;        /* row strides of q/out and k/v: H*Dh, K*Dh */
    size_t dqs, dks;      /* backward: row strides of dq and of dk/dv (qs, ks by default) */
    float c;              /* log2(e) / sqrt(Dh) */
    int bq, nqt;          /* queries per row tile, number of row tiles */
    int hj;               /* kv heads per forward job: K for few-row tiles (decode) so
                           * each K/V row is streamed once for all heads, else 1 */
    int *lo, *hi;         /* [n_q] visible key index range of each query */
    int *tlo, *thi;       /* [nqt] union of the ranges of a tile's queries */
    int *tlo_max, *thi_min; /* [nqt] intersection: keys visible to all of them */
    int fused_rows;       /* backward in one pass per kv head: its n_q*G rows, else 0 */
} geom;

/* Per-thread scratch, sized for R rows of the largest tile. */
typedef struct scratch {
    float *Qt;            /* [R, Dh] scaled query rows */
    float *dOt;           /* [R, Dh] dout rows (backward) */
    float *O;             /* [R, Dh] forward accumulator / backward dq */
    float *KT, *VT;       /* [Dh, BK] transposed key / value tiles */
    float *S, *dP;        /* [R, BK] scores, probabilities, dS */
    float *X, *Y;         /* [BK, Dh] gathered V rows / backward dK, dV */
    float *m, *l;         /* [R] running max (log2 units), running sum */
    float *lse2, *D;      /* [R] backward: lse in log2 units, rowsum(dout*out) */
    int *rlo, *rhi;       /* [R] visible range of the row's query */
    int *list;            /* [sel_k] cleaned sel list */
    uint64_t *bits;       /* [n_kv/64 + 1] zeroed bitmap for clean_sel */
    const float **rows;   /* [BK] key/value row pointers of a tile */
    /* one-pass backward (fused_rows = NR > 0): every row of one kv head */
    float *aQ, *adO, *adQ; /* [NR, Dh] scaled queries, dout rows, dq accumulator */
    float *alse2, *aD;    /* [NR] */
    int *arlo, *arhi;     /* [NR] */
    void *mem;
} scratch;

/* The backward row state of a row tile: pointers into scratch. */
typedef struct bwd_rows {
    float *Qt, *dOt, *lse2, *D;   /* [R, Dh], [R, Dh], [R], [R] */
    int *rlo, *rhi;               /* [R] */
} bwd_rows;

/* Number of keys with kpos <= p (kpos strictly increasing). */
static int upper_bound(const int *kpos, int n, long p) {
    int a = 0, b = n;
    while (a < b) {
        int mid = a + (b - a) / 2;
        if ((long)kpos[mid] <= p) a = mid + 1; else b = mid;
    }
    return a;
}

static void geom_free(geom *g) {
    free(g->lo);
    free(g->tlo);
}

static int geom_init(geom *g, const ds4_attn *a) {
    memset(g, 0, sizeof(*g));
    if (a->n_kv_heads <= 0 || a->n_heads % a->n_kv_heads != 0 || a->head_dim <= 0 || a->n_kv < 0 ||
        (a->sel && a->sel_k < 0)) {
        ds4_set_error("attention: bad shape H=%d K=%d Dh=%d n_kv=%d sel_k=%d (need H %% K == 0)",
                      a->n_heads, a->n_kv_heads, a->head_dim, a->n_kv, a->sel_k);
        return -1;
    }
    g->a = a;
    g->H = a->n_heads; g->K = a->n_kv_heads; g->Dh = a->head_dim;
    g->G = g->H / g->K;
    g->qs = (size_t)g->H * g->Dh;
    g->ks = (size_t)g->K * g->Dh;
    g->dqs = g->qs;
    g->dks = g->ks;
    g->c = LOG2E / sqrtf((float)g->Dh);
    g->bq = a->sel ? 1 : DS4_MAX(1, RMAX / g->G);
    g->nqt = (a->n_q + g->bq - 1) / g->bq;
    g->hj = DS4_MIN(g->bq, a->n_q) * g->G <= SCORE_DIRECT_MAX_ROWS ? g->K : 1;
    g->lo = ds4_malloc(2 * (size_t)DS4_MAX(a->n_q, 1) * sizeof(int));
    g->tlo = ds4_malloc(4 * (size_t)DS4_MAX(g->nqt, 1) * sizeof(int));
    if (!g->lo || !g->tlo) {
        geom_free(g);
        ds4_set_error("attention: out of memory for %d query ranges", a->n_q);
        return -1;
    }
    g->hi = g->lo + a->n_q;
    g->thi = g->tlo + g->nqt;
    g->tlo_max = g->thi + g->nqt;
    g->thi_min = g->tlo_max + g->nqt;
    for (int i = 0; i < a->n_q; i++) {
        long p = a->qpos[i];
        g->hi[i] = upper_bound(a->kpos, a->n_kv, p);
        g->lo[i] = a->window > 0 ? upper_bound(a->kpos, a->n_kv, p - a->window) : 0;
        if (g->lo[i] > g->hi[i]) g->lo[i] = g->hi[i];
    }
    for (int t = 0; t < g->nqt; t++) {
        int i0 = t * g->bq, i1 = DS4_MIN(a->n_q, i0 + g->bq);
        g->tlo[t] = g->tlo_max[t] = g->lo[i0];
        g->thi[t] = g->thi_min[t] = g->hi[i0];
        for (int i = i0 + 1; i < i1; i++) {
            g->tlo[t] = DS4_MIN(g->tlo[t], g->lo[i]);
            g->tlo_max[t] = DS4_MAX(g->tlo_max[t], g->lo[i]);
            g->thi[t] = DS4_MAX(g->thi[t], g->hi[i]);
            g->thi_min[t] = DS4_MIN(g->thi_min[t], g->hi[i]);
        }
        if (g->tlo[t] >= g->thi[t]) g->tlo[t] = g->thi[t] = 0;  /* nothing visible */
    }
    return 0;
}

/* Words of the clean_sel bitmap for n_kv keys. */
static size_t sel_words(int n_kv) { return (size_t)n_kv / 64 + 1; }

/* Allocates one thread's scratch for tiles of up to bq*G rows. Called by
 * each thread inside the parallel region: per-thread arenas make this nearly
 * free, whereas big buffers allocated by the master and freed after every
 * call cost mmap/munmap and cross-CPU TLB shootdowns (~0.1 ms per decode
 * call measured on 2 vCPUs). */
static int scratch_init(scratch *s, const geom *g) {
    int R = DS4_MIN(g->bq, g->a->n_q) * g->G * g->hj, Dh = g->Dh;
    size_t NR = (size_t)g->fused_rows;
    int selk = g->a->sel ? DS4_MAX(g->a->sel_k, 1) : 1;
    size_t nf = 3 * (size_t)R * Dh + 2 * (size_t)Dh * BK + 2 * (size_t)R * BK +
                2 * (size_t)BK * Dh + 4 * (size_t)R + 3 * NR * Dh + 2 * NR;
    nf = (nf + 15) & ~(size_t)15;   /* keep the pointer array below 64-byte aligned */
    size_t nbits = g->a->sel ? sel_words(g->a->n_kv) : 0;
    size_t nint = (2 * (size_t)R + selk + 1 + 2 * NR) & ~(size_t)1;   /* even: keeps bits 8-byte aligned */
    size_t bytes = nf * sizeof(float) + BK * sizeof(float *) + nint * sizeof(int) + nbits * sizeof(uint64_t);
    memset(s, 0, sizeof(*s));
    float *f = ds4_alloc_aligned(bytes);
    if (!f) return -1;
    s->mem = f;
    s->Qt = f; f += (size_t)R * Dh;
    s->dOt = f; f += (size_t)R * Dh;
    s->O = f; f += (size_t)R * Dh;
    s->KT = f; f += (size_t)Dh * BK;
    s->VT = f; f += (size_t)Dh * BK;
    s->S = f; f += (size_t)R * BK;
    s->dP = f; f += (size_t)R * BK;
    s->X = f; f += (size_t)BK * Dh;
    s->Y = f; f += (size_t)BK * Dh;
    s->m = f; f += R;
    s->l = f; f += R;
    s->lse2 = f; f += R;
    s->D = f; f += R;
    s->aQ = f; f += NR * Dh;
    s->adO = f; f += NR * Dh;
    s->adQ = f; f += NR * Dh;
    s->alse2 = f; f += NR;
    s->aD = f;
    s->rows = (const float **)(void *)((float *)s->mem + nf);
    int *ip = (int *)(void *)(s->rows + BK);
    s->rlo = ip; ip += R;
    s->rhi = ip; ip += R;
    s->list = ip; ip += selk;
    s->arlo = ip; ip += NR;
    s->arhi = ip;
    s->bits = (uint64_t *)(void *)(s->rlo + nint);
    return 0;
}

/* Starts a parallel region's work: every thread allocates its scratch, and
 * if any failed all of them skip the work (the error is already set).
 * Must be called by all threads of the team. */
static int scratch_team_init(scratch *s, const geom *g, int *failed) {
    if (scratch_init(s, g) != 0) {
        #pragma omp atomic write
        *failed = 1;
    }
    #pragma omp barrier
    int bad;
    #pragma omp atomic read
    bad = *failed;
    return bad ? -1 : 0;
}

/* Row tile (t, kv head g): number of rows and, per row, its query and head. */
static int tile_rows(const geom *g, int t) {
    int i0 = t * g->bq;
    return (DS4_MIN(g->a->n_q, i0 + g->bq) - i0) * g->G;
}
static int row_query(const geom *g, int t, int r) { return t * g->bq + r / g->G; }
static int row_head(const geom *g, int kvh, int r) { return kvh * g->G + r % g->G; }

/* Copies the query rows of tile t, kv head kvh, scaled by g->c, into
 * Qd [R,Dh], and their visible ranges into rlo/rhi [R]. */
static void gather_q(const geom *g, int t, int kvh, int R, float *Qd, int *rlo, int *rhi) {
    for (int r = 0; r < R; r++) {
        int i = row_query(g, t, r), h = row_head(g, kvh, r);
        const float *q = g->a->q + (size_t)i * g->qs + (size_t)h * g->Dh;
        float *d = Qd + (size_t)r * g->Dh;
        for (int e = 0; e < g->Dh; e++) d[e] = q[e] * g->c;
        rlo[r] = g->lo[i];
        rhi[r] = g->hi[i];
    }
}

/* Sorted, deduplicated, visible entries of query i's sel list; returns count. */
/* A bitmap over the visible range [lo, hi) sorts and deduplicates in
 * O(sel_k + (hi - lo)/64); bits [sel_words(n_kv)] is zero on entry and is
 * left zero. */
static int clean_sel(const geom *g, int i, int *list, uint64_t *bits) {
    const int *sel = g->a->sel + (size_t)i * g->a->sel_k;
    int lo = g->lo[i], hi = g->hi[i], n = 0;
    if (hi <= lo) return 0;
    for (int e = 0; e < g->a->sel_k; e++) {
        int j = sel[e];
        if (j >= lo && j < hi) bits[(j - lo) >> 6] |= 1ull << ((j - lo) & 63);
    }
    int nw = (hi - lo + 63) / 64;
    for (int w = 0; w < nw; w++) {
        uint64_t b = bits[w];
        bits[w] = 0;
        while (b) {
            list[n++] = lo + 64 * w + __builtin_ctzll(b);
            b &= b - 1;
        }
    }
    return n;
}

/* Sets masked scores of a [R, BK] tile to -inf: columns >= nk (padding up to
 * nkp) and, if rlo != NULL, keys j0+jj outside the row's visible range. */
static void mask_tile(float *S, int R, int nk, int nkp, const int *rlo, const int *rhi, int j0) {
    for (int r = 0; r < R; r++) {
        float *row = S + (size_t)r * BK;
        for (int jj = nk; jj < nkp; jj++) row[jj] = -INFINITY;
        if (!rlo) continue;
        int a = DS4_MIN(DS4_MAX(rlo[r] - j0, 0), nk), b = DS4_MIN(DS4_MAX(rhi[r] - j0, 0), nk);
        if (b < a) b = a;
        for (int jj = 0; jj < a; jj++) row[jj] = -INFINITY;
        for (int jj = b; jj < nk; jj++) row[jj] = -INFINITY;
    }
}

/* Online-softmax update with one score tile S [R, BK] (log2 units, masked):
 * S becomes P = exp2(S - m_new), rows of O [R, Dh] are rescaled, m and l
 * [R] updated. */
static void online_softmax(float *S, int R, int nkp, int Dh, float *m, float *l, float *O) {
    for (int r = 0; r < R; r++) {
        float *row = S + (size_t)r * BK;
        float mx = -INFINITY;
        #pragma omp simd reduction(max : mx)
        for (int jj = 0; jj < nkp; jj++) mx = row[jj] > mx ? row[jj] : mx;
        float mold = m[r], mnew = mx > mold ? mx : mold;
        if (mnew == -INFINITY) {           /* nothing visible yet */
            memset(row, 0, (size_t)nkp * sizeof(float));
            continue;
        }
        float sum = ds4_tile_exp2_sum(row, nkp, mnew);
        if (mnew != mold) {
            float alpha = mold == -INFINITY ? 0.0f : exp2f(mold - mnew);
            float *o = O + (size_t)r * Dh;
            for (int e = 0; e < Dh; e++) o[e] *= alpha;
            l[r] *= alpha;
            m[r] = mnew;
        }
        l[r] += sum;
    }
}

/* Scores of a key tile, S [R, nk] = Qt @ K^T: with many rows, transpose the
 * nk key rows into KT once and run the register-blocked GEMM; with a few
 * rows (decode) the transpose would dominate, so take dot products. */
static void score_tile(const geom *g, scratch *s, const float *Q, int R, int nk, int nkp) {
    if (R <= SCORE_DIRECT_MAX_ROWS) {
        ds4_tile_scores_rows(s->S, BK, Q, g->Dh, R, s->rows, nk, g->Dh);
        return;
    }
    ds4_tile_transpose(s->KT, BK, s->rows, nk, g->Dh);
    ds4_tile_gemm(s->S, BK, Q, g->Dh, 1, s->KT, BK, R, nkp, g->Dh, 0);
}

/* Final normalisation of one row with its sink: out = O / L, lse natural. */
static void finish_row(const geom *g, float m, float l, const float *O, int h, float *out, float *lse) {
    float sk = g->a->sinks ? g->a->sinks[h] * LOG2E : -INFINITY;
    float M = m > sk ? m : sk;
    if (M == -INFINITY) {
        memset(out, 0, (size_t)g->Dh * sizeof(float));
        if (lse) *lse = -INFINITY;
        return;
    }
    float wm = m == -INFINITY ? 0.0f : exp2f(m - M);
    float L = l * wm + (g->a->sinks ? exp2f(sk - M) : 0.0f);
    float w = wm / L;
    for (int e = 0; e < g->Dh; e++) out[e] = O[e] * w;
    if (lse) *lse = (M + log2f(L)) * LN2;
}

/* ---- forward ---------------------------------------------------------------- */

/* One forward job: row tile t, kv heads kv0 .. kv0+hj-1, key split sp of
 * nsp. Writes out/lse directly (nsp == 1) or the partial (O, m, l) into
 * part. Head block c keeps its rows at offset c*R in Qt, O, m, l. */
static void fwd_job(const geom *g, scratch *s, int t, int kv0, int sp, int nsp,
                    float *out, float *lse, float *part) {
    const ds4_attn *a = g->a;
    int Dh = g->Dh, R = tile_rows(g, t), nh = g->hj;
    for (int c = 0; c < nh; c++) gather_q(g, t, kv0 + c, R, s->Qt + (size_t)c * R * Dh, s->rlo, s->rhi);
    for (int r = 0; r < nh * R; r++) { s->m[r] = -INFINITY; s->l[r] = 0.0f; }
    memset(s->O, 0, (size_t)nh * R * Dh * sizeof(float));

    /* The keys this job covers: a range of indices (dense) or of list slots. */
    int kl, kh;
    if (a->sel) {
        kl = 0;
        kh = clean_sel(g, row_query(g, t, 0), s->list, s->bits);
    } else {
        kl = g->tlo[t]; kh = g->thi[t];
    }
    int ntile = (kh - kl + BK - 1) / BK, per = (ntile + nsp - 1) / nsp;
    int a0 = DS4_MIN(kh, kl + sp * per * BK), a1 = DS4_MIN(kh, a0 + per * BK);
    const float *kb0 = a->k + (size_t)kv0 * Dh, *vb0 = a->v + (size_t)kv0 * Dh;
    int full_lo = g->tlo_max[t], full_hi = g->thi_min[t];

    for (int j0 = a0; j0 < a1; j0 += BK) {
        int nk = DS4_MIN(BK, a1 - j0), nkp = (nk + 7) & ~7;
        int full = a->sel || (j0 >= full_lo && j0 + nk <= full_hi);
        for (int c = 0; c < nh; c++) {
            const float *kb = kb0 + (size_t)c * Dh, *vb = vb0 + (size_t)c * Dh, *vrows;
            size_t vstride;
            if (a->sel) {
                for (int jj = 0; jj < nk; jj++) {
                    int j = s->list[j0 + jj];
                    s->rows[jj] = kb + (size_t)j * g->ks;
                    memcpy(s->X + (size_t)jj * Dh, vb + (size_t)j * g->ks, (size_t)Dh * sizeof(float));
                }
                vrows = s->X; vstride = (size_t)Dh;
            } else {
                for (int jj = 0; jj < nk; jj++) s->rows[jj] = kb + (size_t)(j0 + jj) * g->ks;
                vrows = vb + (size_t)j0 * g->ks; vstride = g->ks;
            }
            float *O = s->O + (size_t)c * R * Dh;
            score_tile(g, s, s->Qt + (size_t)c * R * Dh, R, nk, nkp);
            mask_tile(s->S, R, nk, nkp, full ? NULL : s->rlo, s->rhi, j0);
            online_softmax(s->S, R, nkp, Dh, s->m + (size_t)c * R, s->l + (size_t)c * R, O);
            ds4_tile_gemm(O, Dh, s->S, BK, 1, vrows, vstride, R, Dh, nk, 1);
        }
    }

    for (int c = 0; c < nh; c++)
        for (int r = 0; r < R; r++) {
            int i = row_query(g, t, r), h = row_head(g, kv0 + c, r), cr = c * R + r;
            size_t row = (size_t)i * g->H + h;
            const float *O = s->O + (size_t)cr * Dh;
            if (nsp == 1) {
                finish_row(g, s->m[cr], s->l[cr], O, h, out + (size_t)i * g->qs + (size_t)h * Dh,
                           lse ? lse + row : NULL);
            } else {
                float *p = part + ((size_t)sp * a->n_q * g->H + row) * (size_t)(Dh + 2);
                memcpy(p, O, (size_t)Dh * sizeof(float));
                p[Dh] = s->m[cr];
                p[Dh + 1] = s->l[cr];
            }
        }
}

static void merge_splits(const geom *g, scratch *s, int nsp, const float *part, float *out, float *lse);

void ds4_attention_forward(const ds4_attn *a, float *out, float *lse) {
    if (a->n_q <= 0) return;
    geom g;
    if (geom_init(&g, a) != 0) return;
    int nth = omp_get_max_threads();
    /* A small problem (decode at short context) runs on the calling thread: a
     * team costs more than it saves there, and on a busy machine a preempted
     * member stalls the region for a whole time slice. */
    if (nth > 1 && a->n_q <= 16) {
        size_t work = 0;                         /* query-key pairs x heads x Dh */
        for (int i = 0; i < a->n_q; i++) work += (size_t)(a->sel ? a->sel_k : g.hi[i] - g.lo[i]);
        if (work * (size_t)g.H * (size_t)g.Dh < ATTN_PAR_MIN) nth = 1;
    }

    /* Key splits: only when there are too few (row tile, kv head) jobs to keep
     * every thread busy, as in decode; each split gets >= SPLIT_MIN keys. */
    int nkvj = g.K / g.hj, base = g.nqt * nkvj, nsp = 1;
    if (nth > 1 && base < 4 * nth) {
        int maxkeys = a->sel ? a->sel_k : 0;
        for (int t = 0; t < g.nqt && !a->sel; t++) maxkeys = DS4_MAX(maxkeys, g.thi[t] - g.tlo[t]);
        nsp = DS4_MIN((4 * nth + base - 1) / base, DS4_MAX(1, maxkeys / SPLIT_MIN));
    }
    float *part = NULL;
    if (nsp > 1) {
        part = ds4_malloc((size_t)nsp * a->n_q * g.H * (size_t)(g.Dh + 2) * sizeof(float));
        if (!part) nsp = 1;   /* fall back to the unsplit schedule */
    }
    int njobs = base * nsp, failed = 0;
    #pragma omp parallel num_threads(nth)
    {
        scratch sc;
        if (scratch_team_init(&sc, &g, &failed) == 0) {
            #pragma omp for schedule(dynamic, 1)
            for (int jb = 0; jb < njobs; jb++) {
                /* Last row tiles first: under a causal mask they see the most keys. */
                int t = g.nqt - 1 - jb / (nkvj * nsp), rem = jb % (nkvj * nsp);
                fwd_job(&g, &sc, t, (rem / nsp) * g.hj, rem % nsp, nsp, out, lse, part);
            }
            if (nsp > 1) merge_splits(&g, &sc, nsp, part, out, lse);
        }
        free(sc.mem);
    }
    free(part);
    geom_free(&g);
}

/* Merges the nsp partial (O, m, l) of every row, in split order, and
 * finishes the rows. A worksharing loop: called by the whole team. */
static void merge_splits(const geom *g, scratch *s, int nsp, const float *part, float *out, float *lse) {
    size_t nrow = (size_t)g->a->n_q * g->H, stride = (size_t)g->Dh + 2;
    int Dh = g->Dh;
    #pragma omp for schedule(static)
    for (size_t row = 0; row < nrow; row++) {
        float *acc = s->O;   /* [Dh] */
        float M = -INFINITY, L = 0.0f;
        for (int sp = 0; sp < nsp; sp++) {
            float m = part[(sp * nrow + row) * stride + Dh];
            M = m > M ? m : M;
        }
        memset(acc, 0, (size_t)Dh * sizeof(float));
        if (M != -INFINITY) {
            for (int sp = 0; sp < nsp; sp++) {
                const float *p = part + (sp * nrow + row) * stride;
                if (p[Dh] == -INFINITY) continue;
                float w = exp2f(p[Dh] - M);
                L += p[Dh + 1] * w;
                for (int e = 0; e < Dh; e++) acc[e] += p[e] * w;
            }
        }
        int i = (int)(row / g->H), h = (int)(row % g->H);
        finish_row(g, M, L, acc, h, out + (size_t)i * g->qs + (size_t)h * Dh, lse ? lse + row : NULL);
    }
}

/* ---- backward ------------------------------------------------------------------ */

/* Gathers the backward row state of tile t, kv head kvh into w: Qt, dOt,
 * ranges, lse2 and D. Returns the row count. */
static int bwd_gather(const geom *g, int t, int kvh, const float *lse, const float *dout,
                      const float *D, const bwd_rows *w) {
    int R = tile_rows(g, t), Dh = g->Dh;
    gather_q(g, t, kvh, R, w->Qt, w->rlo, w->rhi);
    for (int r = 0; r < R; r++) {
        int i = row_query(g, t, r), h = row_head(g, kvh, r);
        size_t row = (size_t)i * g->H + h;
        memcpy(w->dOt + (size_t)r * Dh, dout + (size_t)i * g->qs + (size_t)h * Dh, (size_t)Dh * sizeof(float));
        w->lse2[r] = lse[row] * LOG2E;
        w->D[r] = D[row];
    }
    return R;
}

/* The row state of tile t in the scratch's single-tile buffers. */
static bwd_rows tile_state(scratch *s) {
    return (bwd_rows){.Qt = s->Qt, .dOt = s->dOt, .lse2 = s->lse2, .D = s->D, .rlo = s->rlo, .rhi = s->rhi};
}

/* For the key tile whose rows are in s->rows (nk keys, first index j0) and
 * rows w: S, then P = exp2(S - lse2) in s->S and dS = P * (dO.V - D) in
 * s->dP. Needs the value rows transposed in s->VT already, and the key rows
 * in s->KT when kt_ready (else score_tile transposes them). */
static void bwd_probs(const geom *g, scratch *s, const bwd_rows *w, int R, int nk, int j0, int full,
                      int kt_ready) {
    int nkp = (nk + 7) & ~7, Dh = g->Dh;
    if (kt_ready && R > SCORE_DIRECT_MAX_ROWS) ds4_tile_gemm(s->S, BK, w->Qt, Dh, 1, s->KT, BK, R, nkp, Dh, 0);
    else score_tile(g, s, w->Qt, R, nk, nkp);
    mask_tile(s->S, R, nk, nkp, full ? NULL : w->rlo, w->rhi, j0);
    for (int r = 0; r < R; r++) {
        float *row = s->S + (size_t)r * BK;
        if (w->lse2[r] == -INFINITY) memset(row, 0, (size_t)nkp * sizeof(float));
        else ds4_tile_exp2_sum(row, nkp, w->lse2[r]);
    }
    ds4_tile_gemm(s->dP, BK, w->dOt, Dh, 1, s->VT, BK, R, nkp, Dh, 0);
    for (int r = 0; r < R; r++) {
        float *p = s->S + (size_t)r * BK, *dp = s->dP + (size_t)r * BK, Dr = w->D[r];
        for (int jj = 0; jj < nkp; jj++) dp[jj] = p[jj] * (dp[jj] - Dr);
    }
}

/* Points s->rows at the nk value rows from key j0 of kv head kvh and
 * transposes them into s->VT, then points s->rows at the key rows. */
static void load_kv_tile(const geom *g, scratch *s, int kvh, int j0, int nk) {
    const float *kb = g->a->k + (size_t)kvh * g->Dh, *vb = g->a->v + (size_t)kvh * g->Dh;
    for (int jj = 0; jj < nk; jj++) s->rows[jj] = vb + (size_t)(j0 + jj) * g->ks;
    ds4_tile_transpose(s->VT, BK, s->rows, nk, g->Dh);
    for (int jj = 0; jj < nk; jj++) s->rows[jj] = kb + (size_t)(j0 + jj) * g->ks;
}

/* dk, dv of key tile j0 (nk keys) += the accumulated X (dK, log2 units), Y (dV). */
static void store_dkv(const geom *g, const scratch *s, int kvh, int j0, int nk, float *dk, float *dv) {
    int Dh = g->Dh;
    for (int jj = 0; jj < nk; jj++) {
        float *dkr = dk + (size_t)(j0 + jj) * g->dks + (size_t)kvh * Dh;
        float *dvr = dv + (size_t)(j0 + jj) * g->dks + (size_t)kvh * Dh;
        const float *x = s->X + (size_t)jj * Dh, *y = s->Y + (size_t)jj * Dh;
        for (int e = 0; e < Dh; e++) { dkr[e] += LN2 * x[e]; dvr[e] += y[e]; }
    }
}

/* dq rows of tile t += dQ [R, Dh] / sqrt(Dh). */
static void store_dq(const geom *g, int t, int kvh, int R, const float *dQ, float *dq) {
    int Dh = g->Dh;
    float sc = 1.0f / sqrtf((float)Dh);
    for (int r = 0; r < R; r++) {
        int i = row_query(g, t, r), h = row_head(g, kvh, r);
        float *d = dq + (size_t)i * g->dqs + (size_t)h * Dh;
        const float *o = dQ + (size_t)r * Dh;
        for (int e = 0; e < Dh; e++) d[e] += sc * o[e];
    }
}

/* Dense pass 1: key tile kt of kv head kvh owns dk, dv of its keys. */
static void bwd_dense_kv(const geom *g, scratch *s, int kvh, int kt, const float *lse,
                         const float *dout, const float *D, float *dk, float *dv) {
    int Dh = g->Dh, j0 = kt * BK, nk = DS4_MIN(BK, g->a->n_kv - j0);
    bwd_rows w = tile_state(s);
    load_kv_tile(g, s, kvh, j0, nk);
    memset(s->X, 0, (size_t)BK * Dh * sizeof(float));   /* dK [nk, Dh] */
    memset(s->Y, 0, (size_t)BK * Dh * sizeof(float));   /* dV [nk, Dh] */
    int any = 0;
    for (int t = 0; t < g->nqt; t++) {
        if (!(g->tlo[t] < j0 + nk && g->thi[t] > j0)) continue;
        int R = bwd_gather(g, t, kvh, lse, dout, D, &w);
        int full = j0 >= g->tlo_max[t] && j0 + nk <= g->thi_min[t];
        bwd_probs(g, s, &w, R, nk, j0, full, 0);
        /* dV += P^T dO ; dK += dS^T Qt (Qt carries log2e/sqrt(Dh), fixed below) */
        ds4_tile_gemm(s->Y, Dh, s->S, 1, BK, s->dOt, Dh, nk, Dh, R, 1);
        ds4_tile_gemm(s->X, Dh, s->dP, 1, BK, s->Qt, Dh, nk, Dh, R, 1);
        any = 1;
    }
    if (any) store_dkv(g, s, kvh, j0, nk, dk, dv);
}

/* Dense pass 2: row tile t of kv head kvh owns dq of its rows. */
static void bwd_dense_q(const geom *g, scratch *s, int t, int kvh, const float *lse,
                        const float *dout, const float *D, float *dq) {
    int Dh = g->Dh;
    const float *kb = g->a->k + (size_t)kvh * Dh;
    bwd_rows w = tile_state(s);
    int R = bwd_gather(g, t, kvh, lse, dout, D, &w);
    memset(s->O, 0, (size_t)R * Dh * sizeof(float));    /* dQ [R, Dh] */
    for (int j0 = g->tlo[t]; j0 < g->thi[t]; j0 += BK) {
        int nk = DS4_MIN(BK, g->thi[t] - j0);
        load_kv_tile(g, s, kvh, j0, nk);
        int full = j0 >= g->tlo_max[t] && j0 + nk <= g->thi_min[t];
        bwd_probs(g, s, &w, R, nk, j0, full, 0);
        ds4_tile_gemm(s->O, Dh, s->dP, BK, 1, kb + (size_t)j0 * g->ks, g->ks, R, Dh, nk, 1);
    }
    store_dq(g, t, kvh, R, s->O, dq);
}

/* Dense, one pass: kv head kvh owns dk, dv of its keys and dq of its rows.
 * Every row's state is gathered once into the scratch's all-row buffers;
 * P and dS of each (row tile, key tile) pair are computed once instead of
 * once per pass. The sums run in the same order as in the two passes (dq of
 * a row over its keys in increasing order, dk/dv of a key over row tiles in
 * increasing order; keys of a tile outside a row's range add exact zeros),
 * so the results are the same bit for bit. */
static void bwd_dense_fused(const geom *g, scratch *s, int kvh, const float *lse, const float *dout,
                            const float *D, float *dq, float *dk, float *dv) {
    const ds4_attn *a = g->a;
    int Dh = g->Dh, tr = g->bq * g->G;   /* rows of a full row tile */
    const float *kb = a->k + (size_t)kvh * Dh;
    for (int t = 0; t < g->nqt; t++) {
        size_t o = (size_t)t * tr;
        bwd_rows w = {.Qt = s->aQ + o * Dh, .dOt = s->adO + o * Dh, .lse2 = s->alse2 + o, .D = s->aD + o,
                      .rlo = s->arlo + o, .rhi = s->arhi + o};
        bwd_gather(g, t, kvh, lse, dout, D, &w);
    }
    memset(s->adQ, 0, (size_t)g->fused_rows * Dh * sizeof(float));
    int nkt = (a->n_kv + BK - 1) / BK;
    for (int kt = 0; kt < nkt; kt++) {
        int j0 = kt * BK, nk = DS4_MIN(BK, a->n_kv - j0), kt_ready = 0;
        load_kv_tile(g, s, kvh, j0, nk);
        memset(s->X, 0, (size_t)BK * Dh * sizeof(float));   /* dK [nk, Dh] */
        memset(s->Y, 0, (size_t)BK * Dh * sizeof(float));   /* dV [nk, Dh] */
        int any = 0;
        for (int t = 0; t < g->nqt; t++) {
            if (!(g->tlo[t] < j0 + nk && g->thi[t] > j0)) continue;
            int R = tile_rows(g, t);
            size_t o = (size_t)t * tr;
            bwd_rows w = {.Qt = s->aQ + o * Dh, .dOt = s->adO + o * Dh, .lse2 = s->alse2 + o, .D = s->aD + o,
                          .rlo = s->arlo + o, .rhi = s->arhi + o};
            if (!kt_ready && R > SCORE_DIRECT_MAX_ROWS) {
                ds4_tile_transpose(s->KT, BK, s->rows, nk, Dh);
                kt_ready = 1;
            }
            int full = j0 >= g->tlo_max[t] && j0 + nk <= g->thi_min[t];
            bwd_probs(g, s, &w, R, nk, j0, full, kt_ready);
            ds4_tile_gemm(s->Y, Dh, s->S, 1, BK, w.dOt, Dh, nk, Dh, R, 1);
            ds4_tile_gemm(s->X, Dh, s->dP, 1, BK, w.Qt, Dh, nk, Dh, R, 1);
            ds4_tile_gemm(s->adQ + o * Dh, Dh, s->dP, BK, 1, kb + (size_t)j0 * g->ks, g->ks, R, Dh, nk, 1);
            any = 1;
        }
        if (any) store_dkv(g, s, kvh, j0, nk, dk, dv);
    }
    for (int t = 0; t < g->nqt; t++)
        store_dq(g, t, kvh, tile_rows(g, t), s->adQ + (size_t)t * tr * Dh, dq);
}

/* Sparse: gradient terms of one (row, key) pair, p = softmax weight, with
 * the dot products done directly (sel lists share no tiles). */
static inline float pair_ds(const float *q, const float *k, const float *v, const float *dO,
                            float c, float lse2, float Dr, int Dh, float *p_out) {
    float p = exp2f(c * ds4_tile_dot(q, k, Dh) - lse2);
    *p_out = p;
    return p * (ds4_tile_dot(dO, v, Dh) - Dr);
}

/* Sparse pass 2: query i owns dq of its H rows. */
static void bwd_sparse_q(const geom *g, scratch *s, int i, const float *lse, const float *dout,
                         const float *D, float *dq) {
    const ds4_attn *a = g->a;
    int Dh = g->Dh, n = clean_sel(g, i, s->list, s->bits);
    float sc = 1.0f / sqrtf((float)Dh);
    for (int h = 0; h < g->H; h++) {
        size_t row = (size_t)i * g->H + h;
        if (lse[row] == -INFINITY) continue;
        int kvh = h / g->G;
        const float *q = a->q + (size_t)i * g->qs + (size_t)h * Dh;
        const float *dO = dout + (size_t)i * g->qs + (size_t)h * Dh;
        float *acc = s->O;   /* [Dh] */
        memset(acc, 0, (size_t)Dh * sizeof(float));
        for (int e = 0; e < n; e++) {
            size_t off = (size_t)s->list[e] * g->ks + (size_t)kvh * Dh;
            float p, ds = pair_ds(q, a->k + off, a->v + off, dO, g->c, lse[row] * LOG2E, D[row], Dh, &p);
            for (int d = 0; d < Dh; d++) acc[d] += ds * a->k[off + d];
        }
        float *dqr = dq + (size_t)i * g->dqs + (size_t)h * Dh;
        for (int d = 0; d < Dh; d++) dqr[d] += sc * acc[d];
    }
}

/* Sparse pass 1: key j (kv head kvh) owns dk, dv; qidx[off..off+cnt) lists
 * the queries that selected it, in increasing order. */
static void bwd_sparse_kv(const geom *g, scratch *s, int j, int kvh, const int *qidx, int cnt,
                          const float *lse, const float *dout, const float *D, float *dk, float *dv) {
    const ds4_attn *a = g->a;
    int Dh = g->Dh;
    size_t off = (size_t)j * g->ks + (size_t)kvh * Dh;
    const float *k = a->k + off, *v = a->v + off;
    float *xk = s->X, *xv = s->Y;   /* [Dh] each */
    memset(xk, 0, (size_t)Dh * sizeof(float));
    memset(xv, 0, (size_t)Dh * sizeof(float));
    for (int e = 0; e < cnt; e++) {
        int i = qidx[e];
        for (int h = kvh * g->G; h < (kvh + 1) * g->G; h++) {
            size_t row = (size_t)i * g->H + h;
            if (lse[row] == -INFINITY) continue;
            const float *q = a->q + (size_t)i * g->qs + (size_t)h * Dh;
            const float *dO = dout + (size_t)i * g->qs + (size_t)h * Dh;
            float p, ds = pair_ds(q, k, v, dO, g->c, lse[row] * LOG2E, D[row], Dh, &p);
            for (int d = 0; d < Dh; d++) { xk[d] += ds * q[d]; xv[d] += p * dO[d]; }
        }
    }
    float sc = 1.0f / sqrtf((float)Dh);
    size_t doff = (size_t)j * g->dks + (size_t)kvh * Dh;
    for (int d = 0; d < Dh; d++) { dk[doff + d] += sc * xk[d]; dv[doff + d] += xv[d]; }
}

void ds4_attention_backward(const ds4_attn *a, const float *out, const float *lse,
                            const float *dout, float *dq, float *dk, float *dv,
                            float *dsinks) {
    const size_t Q = (size_t)a->n_heads * a->head_dim, KD = (size_t)a->n_kv_heads * a->head_dim;
    ds4_attention_backward_ld(a, out, lse, dout, dq, Q, dk, dv, KD, dsinks);
}

void ds4_attention_backward_ld(const ds4_attn *a, const float *out, const float *lse,
                               const float *dout, float *dq, size_t ldq, float *dk, float *dv,
                               size_t ldkv, float *dsinks) {
    if (a->n_q <= 0) return;
    geom g;
    if (geom_init(&g, a) != 0) return;
    if (ldq < g.qs || ldkv < g.ks) {
        ds4_set_error("attention backward: output row strides %zu, %zu below H*Dh %zu, K*Dh %zu", ldq, ldkv,
                      g.qs, g.ks);
        geom_free(&g);
        return;
    }
    g.dqs = ldq;
    g.dks = ldkv;
    int nth = omp_get_max_threads(), Dh = g.Dh;
    size_t nrow = (size_t)a->n_q * g.H;
    float *tmp = NULL;
    int *cnt = NULL, *lists = NULL, *nl = NULL, *qidx = NULL;

    /* D[row] = rowsum(dout * out) [n_q*H]; dsinks += -p_sink * D. */
    float *D = ds4_malloc(nrow * sizeof(float));
    if (!D) goto done;
    #pragma omp parallel for schedule(static) num_threads(nth)
    for (size_t row = 0; row < nrow; row++) {
        size_t i = row / g.H, h = row % g.H;
        const float *o = out + i * g.qs + h * Dh, *d = dout + i * g.qs + h * Dh;
        float acc = 0.0f;
        for (int e = 0; e < Dh; e++) acc += o[e] * d[e];
        D[row] = acc;
    }
    if (dsinks && a->sinks)
        for (int h = 0; h < g.H; h++) {
            double acc = 0.0;
            for (int i = 0; i < a->n_q; i++) {
                size_t row = (size_t)i * g.H + h;
                if (lse[row] != -INFINITY) acc += exp((double)a->sinks[h] - lse[row]) * D[row];
            }
            dsinks[h] -= (float)acc;
        }

    /* dk and dv are produced together; a NULL one gets a throwaway buffer. */
    if ((dk == NULL) != (dv == NULL)) {
        tmp = ds4_calloc(DS4_MAX((size_t)a->n_kv * g.dks, 1), sizeof(float));
        if (!tmp) goto done;
        if (!dk) dk = tmp; else dv = tmp;
    }

    /* Sparse dk/dv: transpose the cleaned sel lists into, for every key, the
     * queries that attend to it in increasing order (CSR: cnt, qidx). */
    if (a->sel && dk) {
        cnt = ds4_calloc((size_t)a->n_kv + 1, sizeof(int));
        lists = ds4_malloc((size_t)a->n_q * DS4_MAX(a->sel_k, 1) * sizeof(int));
        nl = ds4_malloc((size_t)a->n_q * sizeof(int));
        if (!cnt || !lists || !nl) goto done;
        int nofail = 1;
        #pragma omp parallel num_threads(nth)
        {
            uint64_t *bits = ds4_calloc(sel_words(a->n_kv), sizeof(uint64_t));
            if (!bits) {
                #pragma omp atomic write
                nofail = 0;
            }
            #pragma omp for schedule(dynamic, 16)
            for (int i = 0; i < a->n_q; i++) nl[i] = bits ? clean_sel(&g, i, lists + (size_t)i * a->sel_k, bits) : 0;
            free(bits);
        }
        if (!nofail) goto done;
        size_t total = 0;
        for (int i = 0; i < a->n_q; i++) total += (size_t)nl[i];
        qidx = ds4_malloc(DS4_MAX(total, 1) * sizeof(int));
        if (!qidx) goto done;
        for (int i = 0; i < a->n_q; i++)
            for (int e = 0; e < nl[i]; e++) cnt[lists[(size_t)i * a->sel_k + e] + 1]++;
        for (int j = 0; j < a->n_kv; j++) cnt[j + 1] += cnt[j];
        /* fill with cnt[j] as key j's cursor; it ends at key j+1's start, so shift back */
        for (int i = 0; i < a->n_q; i++)
            for (int e = 0; e < nl[i]; e++) qidx[cnt[lists[(size_t)i * a->sel_k + e]]++] = i;
        for (int j = a->n_kv; j > 0; j--) cnt[j] = cnt[j - 1];   /* undo the cursor shift */
        cnt[0] = 0;
    }

    /* Dense with both outputs: one pass per kv head when the K jobs keep the
     * threads at least 5/7 busy (the two passes do 7 tile products per
     * (row tile, key tile) pair, the one pass 5). Same results either way. */
    int nkt = (a->n_kv + BK - 1) / BK;
    int fused = !a->sel && dq && dk && (size_t)((g.K + nth - 1) / nth) * nth * 5 <= (size_t)g.K * 7;
    if (fused) g.fused_rows = g.nqt * g.bq * g.G;
    int failed = 0;
    #pragma omp parallel num_threads(nth)
    {
        scratch sc;
        if (scratch_team_init(&sc, &g, &failed) == 0) {
            /* The passes write disjoint outputs and only read shared inputs,
             * so no barrier is needed between them. */
            if (fused) {
                #pragma omp for schedule(dynamic, 1) nowait
                for (int kvh = 0; kvh < g.K; kvh++) bwd_dense_fused(&g, &sc, kvh, lse, dout, D, dq, dk, dv);
            } else if (!a->sel) {
                if (dk) {
                    #pragma omp for schedule(dynamic, 1) nowait
                    for (int jb = 0; jb < nkt * g.K; jb++)
                        bwd_dense_kv(&g, &sc, jb % g.K, jb / g.K, lse, dout, D, dk, dv);
                }
                if (dq) {
                    #pragma omp for schedule(dynamic, 1) nowait
                    for (int jb = 0; jb < g.nqt * g.K; jb++)
                        bwd_dense_q(&g, &sc, g.nqt - 1 - jb / g.K, jb % g.K, lse, dout, D, dq);
                }
            } else {
                if (dk) {
                    #pragma omp for schedule(dynamic, 16) nowait
                    for (int jb = 0; jb < a->n_kv * g.K; jb++) {
                        int j = jb / g.K, kvh = jb % g.K;
                        if (cnt[j + 1] > cnt[j])
                            bwd_sparse_kv(&g, &sc, j, kvh, qidx + cnt[j], cnt[j + 1] - cnt[j], lse, dout, D, dk, dv);
                    }
                }
                if (dq) {
                    #pragma omp for schedule(dynamic, 4) nowait
                    for (int i = 0; i < a->n_q; i++) bwd_sparse_q(&g, &sc, i, lse, dout, D, dq);
                }
            }
        }
        free(sc.mem);
    }
done:
    free(D); free(tmp);
    free(cnt); free(lists); free(nl); free(qidx);
    geom_free(&g);
}

/* ---- reference ------------------------------------------------------------------- */

/* Naive attention: for every (query, head) it materialises the scores of all
 * candidate keys in double, checks visibility from positions directly, and
 * normalises with the sink. Slow; for tests. */
void ds4_attention_reference(const ds4_attn *a, float *out) {
    int H = a->n_heads, K = a->n_kv_heads, Dh = a->head_dim, G = H / K;
    double *sc = malloc((size_t)DS4_MAX(a->n_kv, 1) * sizeof(double));
    char *cand = calloc((size_t)DS4_MAX(a->n_kv, 1), 1);
    if (!sc || !cand) {
        free(sc); free(cand);
        ds4_set_error("attention reference: out of memory");
        return;
    }
    double scale = 1.0 / sqrt((double)Dh);
    for (int i = 0; i < a->n_q; i++) {
        /* candidates: all keys, or the distinct valid entries of sel */
        if (a->sel) {
            memset(cand, 0, (size_t)a->n_kv);
            for (int e = 0; e < a->sel_k; e++) {
                int j = a->sel[(size_t)i * a->sel_k + e];
                if (j >= 0 && j < a->n_kv) cand[j] = 1;
            }
        } else {
            memset(cand, 1, (size_t)a->n_kv);
        }
        for (int j = 0; j < a->n_kv; j++) {
            long dpos = (long)a->qpos[i] - a->kpos[j];
            if (dpos < 0 || (a->window > 0 && dpos >= a->window)) cand[j] = 0;
        }
        for (int h = 0; h < H; h++) {
            const float *q = a->q + ((size_t)i * H + h) * Dh;
            int kvh = h / G;
            double mx = a->sinks ? a->sinks[h] : -INFINITY;
            for (int j = 0; j < a->n_kv; j++) {
                if (!cand[j]) continue;
                const float *k = a->k + ((size_t)j * K + kvh) * Dh;
                double d = 0.0;
                for (int e = 0; e < Dh; e++) d += (double)q[e] * k[e];
                sc[j] = d * scale;
                if (sc[j] > mx) mx = sc[j];
            }
            float *o = out + ((size_t)i * H + h) * Dh;
            if (mx == -INFINITY) {
                memset(o, 0, (size_t)Dh * sizeof(float));
                continue;
            }
            double den = a->sinks ? exp(a->sinks[h] - mx) : 0.0;
            for (int j = 0; j < a->n_kv; j++)
                if (cand[j]) den += exp(sc[j] - mx);
            for (int e = 0; e < Dh; e++) {
                double acc = 0.0;
                for (int j = 0; j < a->n_kv; j++)
                    if (cand[j]) acc += exp(sc[j] - mx) * a->v[((size_t)j * K + kvh) * Dh + e];
                o[e] = (float)(acc / den);
            }
        }
    }
    free(sc);
    free(cand);
}
