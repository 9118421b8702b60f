/* sampler.c — next-token sampling: temperature → top-k → top-p → min-p, then
 * one draw from a per-request RNG. Only what is needed gets sorted: weights
 * exp(z - z_max) are computed in one vectorised pass, a 1024-bucket histogram
 * of their float bit patterns (monotone in the weight) bounds where the top-k
 * / nucleus / min-p cuts can fall, and only the tokens above that bound are
 * gathered, selected and (for top-p) sorted. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "infer/infer.h"
#include "kernels/tile.h"

void ds4_sampler_params_default(ds4_sampler_params *p) {
    p->temperature = 0.8f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->min_p = 0.0f;
    p->seed = 42;
}

int ds4_sampler_params_validate(const ds4_sampler_params *p) {
    if (!isfinite(p->temperature) || p->temperature < 0) {
        ds4_set_error("sampler: temperature must be a finite number >= 0, got %g", p->temperature);
        return -1;
    }
    if (p->top_k < 0) {
        ds4_set_error("sampler: top_k must be >= 0 (0 = off), got %d", p->top_k);
        return -1;
    }
    if (!(p->top_p > 0 && p->top_p <= 1)) {
        ds4_set_error("sampler: top_p must be in (0, 1] (1 = off), got %g", p->top_p);
        return -1;
    }
    if (!(p->min_p >= 0 && p->min_p <= 1)) {
        ds4_set_error("sampler: min_p must be in [0, 1] (0 = off), got %g", p->min_p);
        return -1;
    }
    return 0;
}

int ds4_sampler_init(ds4_sampler *s, const ds4_sampler_params *p, int vocab) {
    memset(s, 0, sizeof *s);
    if (ds4_sampler_params_validate(p)) return -1;
    if (vocab <= 0) {
        ds4_set_error("sampler: vocab size must be > 0, got %d", vocab);
        return -1;
    }
    s->p = *p;
    ds4_rng_seed(&s->rng, p->seed);
    s->cand = ds4_malloc((size_t)vocab * sizeof *s->cand);
    s->w = ds4_malloc((size_t)((vocab + 7) & ~7) * sizeof *s->w);
    if (!s->cand || !s->w) { ds4_sampler_free(s); return -1; }
    s->cap = vocab;
    return 0;
}

void ds4_sampler_free(ds4_sampler *s) {
    free(s->cand);
    free(s->w);
    s->cand = NULL;
    s->w = NULL;
    s->cap = 0;
}

/* Strict total order: larger value first, then lower id. */
static inline int cand_before(const ds4_cand *a, const ds4_cand *b) {
    return a->v > b->v || (a->v == b->v && a->id < b->id);
}

static int cand_cmp(const void *pa, const void *pb) {
    const ds4_cand *a = pa, *b = pb;
    return cand_before(a, b) ? -1 : cand_before(b, a) ? 1 : 0;
}

static inline void cand_swap(ds4_cand *c, int i, int j) {
    ds4_cand t = c[i]; c[i] = c[j]; c[j] = t;
}

/* Rearrange c[0, n) so its k best (cand_before order) come first, unordered.
 * Quickselect with a median-of-three pivot; the order is strict (ids are
 * unique), so runs of equal values do not degrade it. */
static void select_top(ds4_cand *c, int n, int k) {
    int lo = 0, hi = n;
    if (k <= 0 || k >= n) return;
    while (hi - lo > 1) {
        int mid = lo + (hi - lo) / 2, last = hi - 1;
        /* median of c[lo], c[mid], c[last] moved to c[last] */
        if (cand_before(&c[mid], &c[lo])) cand_swap(c, mid, lo);
        if (cand_before(&c[last], &c[lo])) cand_swap(c, last, lo);
        if (cand_before(&c[mid], &c[last])) cand_swap(c, mid, last);
        int store = lo;
        for (int i = lo; i < last; i++)
            if (cand_before(&c[i], &c[last])) cand_swap(c, i, store++);
        cand_swap(c, store, last);
        if (store == k) return;
        if (store < k) lo = store + 1; else hi = store;
    }
}

/* Histogram bucket of a weight in [0, 2): sign-free float bits are monotone
 * in the value; 8 buckets per octave. */
#define N_BUCKETS 1024
static inline int weight_bucket(float w) {
    uint32_t u;
    memcpy(&u, &w, 4);
    return (int)(u >> 20);
}

static void set_greedy(ds4_sampler *s, int best, double *total) {
    s->cand[0].id = best;
    s->cand[0].v = 1.0f;
    s->dense = 0;
    *total = 1.0;
}

/* Either s->dense = 1 (every token survives; weights in s->w[0, V)) and
 * returns V, or fills s->cand[0, n) with the survivors and returns n >= 1.
 * *total = sum of the surviving weights. -1 on error. */
static int sampler_filter(ds4_sampler *s, const float *logits, int V, double *total) {
    if (V <= 0 || V > s->cap) {
        ds4_set_error("sampler: logits have %d entries, sampler was made for %d", V, s->cap);
        return -1;
    }
    int best = 0;
    float mx = -INFINITY;
    for (int i = 0; i < V; i++) {
        float x = logits[i];
        if (!(x < INFINITY)) {
            ds4_set_error("sampler: logit %d is %s", i, isnan(x) ? "NaN" : "+inf");
            return -1;
        }
        if (x > mx) { mx = x; best = i; }
    }
    if (mx == -INFINITY) {
        ds4_set_error("sampler: every logit is -inf");
        return -1;
    }
    const ds4_sampler_params *p = &s->p;
    /* 1. temperature: w = exp((x - max) / T) = exp2((x - max) * log2(e) / T) */
    float scale = 1.4426950408889634f / p->temperature;
    if (p->temperature <= 0 || p->top_k == 1 || !isfinite(scale)) {   /* greedy */
        set_greedy(s, best, total);
        return 1;
    }
    float *w = s->w;                                  /* [V rounded up to 8] */
    int Vp = (V + 7) & ~7;
    for (int i = 0; i < V; i++) w[i] = (logits[i] - mx) * scale;
    for (int i = V; i < Vp; i++) w[i] = -INFINITY;    /* padding: same code path for every token */
    ds4_tile_exp2_sum(w, Vp, 0.0f);
    const float wmax = w[best];
    int use_k = p->top_k > 0 && p->top_k < V, use_p = p->top_p < 1, use_m = p->min_p > 0;
    if (!use_k && !use_p && !use_m) {
        double t = 0;
        for (int i = 0; i < V; i++) t += w[i];
        s->dense = 1;
        *total = t;
        return V;
    }
    s->dense = 0;
    /* histogram of the weights: counts and masses per bucket */
    int cnt[N_BUCKETS];
    double mass[N_BUCKETS];
    memset(cnt, 0, sizeof cnt);
    memset(mass, 0, sizeof mass);
    for (int i = 0; i < V; i++) {
        int b = weight_bucket(w[i]);
        cnt[b]++;
        mass[b] += w[i];
    }
    double w_all = 0;
    for (int b = 0; b < N_BUCKETS; b++) w_all += mass[b];
    /* Lower bound L on the bucket of any survivor. */
    int L = 0, Bk = 0;
    if (use_k) {                                      /* the k-th largest lies in bucket Bk */
        int c = 0;
        for (Bk = N_BUCKETS - 1; Bk > 0; Bk--)
            if ((c += cnt[Bk]) >= p->top_k) break;
        L = Bk;
    }
    if (use_m && !(use_k && use_p)) L = DS4_MAX(L, weight_bucket(p->min_p * wmax));
    if (use_p && !use_k) {                            /* the nucleus ends in bucket Bp */
        double target = (double)p->top_p * w_all, c = 0;
        int Bp;
        for (Bp = N_BUCKETS - 1; Bp > 0; Bp--)
            if ((c += mass[Bp]) >= target) break;
        L = DS4_MAX(L, Bp);
    }
    /* With top-k and top-p both on, the top-k mass must be exact: gather from
     * Bk (the min-p and nucleus cuts then run on the gathered set). */
    ds4_cand *c = s->cand;
    int n = 0;
    for (int i = 0; i < V; i++)
        if (weight_bucket(w[i]) >= L) { c[n].v = w[i]; c[n].id = i; n++; }
    /* 2. top-k */
    if (use_k && n > p->top_k) {
        select_top(c, n, p->top_k);
        n = p->top_k;
    }
    if (use_k) {                                      /* mass of the top-k distribution */
        w_all = 0;
        for (int i = 0; i < n; i++) w_all += c[i].v;
    }
    /* 4. min-p (p >= min_p * p_max). It keeps a prefix of the sorted order,
     * as top-p does, so filtering first and then cutting the top-p prefix
     * with the mass of the top-k distribution is exactly top-p then min-p. */
    if (use_m) {
        float thr = p->min_p * wmax;
        int j = 0;
        for (int i = 0; i < n; i++)
            if (c[i].v >= thr) c[j++] = c[i];
        n = j;                                        /* the max passes: j >= 1 */
    }
    /* 3. top-p: sort growing chunks of the best survivors until the mass
     * reaches top_p of the top-k distribution. */
    if (use_p) {
        double target = (double)p->top_p * w_all, cum = 0;
        int sorted = 0, chunk = 32, cut = n;
        while (sorted < n && cut == n) {
            int end = DS4_MIN(n, sorted + chunk);
            select_top(c + sorted, n - sorted, end - sorted);
            qsort(c + sorted, (size_t)(end - sorted), sizeof *c, cand_cmp);
            for (int i = sorted; i < end; i++) {
                cum += c[i].v;
                if (cum >= target) { cut = i + 1; break; }
            }
            sorted = end;
            chunk *= 4;
        }
        n = cut;
    }
    double t = 0;                                     /* drop weights that underflowed */
    int j = 0;
    for (int i = 0; i < n; i++)
        if (c[i].v > 0) { t += c[i].v; c[j++] = c[i]; }
    *total = t;
    return j;                                         /* the max has weight 1: j >= 1 */
}

int ds4_sampler_sample(ds4_sampler *s, const float *logits, int V) {
    double total;
    int n = sampler_filter(s, logits, V, &total);
    if (n < 0) return -1;
    if (!s->dense && n == 1) return s->cand[0].id;
    double u = (double)(ds4_rng_u64(&s->rng) >> 11) * (1.0 / 9007199254740992.0);  /* [0, 1) */
    double r = u * total, cum = 0;
    int last = 0;
    if (s->dense) {
        for (int i = 0; i < n; i++) {
            if (s->w[i] <= 0) continue;
            cum += s->w[i];
            last = i;
            if (r < cum) return i;
        }
        return last;
    }
    for (int i = 0; i < n; i++) {
        if (s->cand[i].v <= 0) continue;
        cum += s->cand[i].v;
        last = i;
        if (r < cum) return s->cand[i].id;
    }
    return s->cand[last].id;                              /* rounding at the very top */
}

int ds4_sampler_dist(ds4_sampler *s, const float *logits, int V, int *ids, float *probs) {
    double total;
    int n = sampler_filter(s, logits, V, &total);
    if (n < 0) return -1;
    if (s->dense) {                                   /* keep the tokens of nonzero weight */
        int j = 0;
        for (int i = 0; i < n; i++)
            if (s->w[i] > 0) { ids[j] = i; probs[j] = (float)(s->w[i] / total); j++; }
        return j;
    }
    for (int i = 0; i < n; i++) {
        ids[i] = s->cand[i].id;
        probs[i] = (float)(s->cand[i].v / total);
    }
    return n;
}
