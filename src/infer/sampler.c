/* sampler.c — next-token sampling: temperature → top-k → top-p → min-p, then
 * one draw from a per-request RNG. Only what is needed gets sorted: top-k is a
 * selection (expected O(V)), top-p sorts growing chunks of the best tokens
 * until the nucleus mass is reached, min-p is a threshold on exp(z - z_max). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "infer/infer.h"

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
    if (!s->cand) return -1;
    s->cap = vocab;
    return 0;
}

void ds4_sampler_free(ds4_sampler *s) {
    free(s->cand);
    s->cand = NULL;
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

static int argmax(const float *x, int V) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Fill s->cand[0, n) with the surviving tokens and their unnormalised
 * weights exp(z - z_max); returns n (>= 1) or -1. *total = sum of weights. */
static int sampler_filter(ds4_sampler *s, const float *logits, int V, double *total) {
    if (V <= 0 || V > s->cap) {
        ds4_set_error("sampler: logits have %d entries, sampler was made for %d", V, s->cap);
        return -1;
    }
    ds4_cand *c = s->cand;
    for (int i = 0; i < V; i++)
        if (isnan(logits[i]) || logits[i] == INFINITY) {
            ds4_set_error("sampler: logit %d is %s", i, isnan(logits[i]) ? "NaN" : "+inf");
            return -1;
        }
    int best = argmax(logits, V);
    if (logits[best] == -INFINITY) {
        ds4_set_error("sampler: every logit is -inf");
        return -1;
    }
    const ds4_sampler_params *p = &s->p;
    if (p->temperature <= 0 || p->top_k == 1) {          /* greedy */
        c[0].id = best;
        c[0].v = 1.0f;
        *total = 1.0;
        return 1;
    }
    /* 1. temperature */
    float inv_t = 1.0f / p->temperature;
    float zmax = logits[best] * inv_t;
    if (!isfinite(zmax)) {                                /* tiny temperature: greedy */
        c[0].id = best;
        c[0].v = 1.0f;
        *total = 1.0;
        return 1;
    }
    for (int i = 0; i < V; i++) {
        c[i].id = i;
        c[i].v = logits[i] * inv_t;
    }
    /* 2. top-k */
    int n = V;
    if (p->top_k > 0 && p->top_k < V) {
        select_top(c, V, p->top_k);
        n = p->top_k;
    }
    /* weights relative to the max (which always survives top-k) */
    double w_all = 0;
    for (int i = 0; i < n; i++) {
        c[i].v = expf(c[i].v - zmax);
        w_all += c[i].v;
    }
    /* 4. min-p (threshold relative to p_max, i.e. weight 1). It keeps a prefix
     * of the sorted order, as top-p does, so applying it first as a filter and
     * then cutting the top-p prefix with the mass of the top-k distribution
     * gives exactly top-p followed by min-p. */
    if (p->min_p > 0) {
        int j = 0;
        for (int i = 0; i < n; i++)
            if (c[i].v >= p->min_p) c[j++] = c[i];
        n = j;                                            /* the max has weight 1: j >= 1 */
    }
    /* 3. top-p: sort growing chunks of the best survivors until the mass
     * reaches top_p of the top-k distribution. */
    if (p->top_p < 1) {
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
    double w = 0;
    for (int i = 0; i < n; i++) w += c[i].v;
    *total = w;
    return n;
}

int ds4_sampler_sample(ds4_sampler *s, const float *logits, int V) {
    double total;
    int n = sampler_filter(s, logits, V, &total);
    if (n < 0) return -1;
    if (n == 1) return s->cand[0].id;
    double u = (double)(ds4_rng_u64(&s->rng) >> 11) * (1.0 / 9007199254740992.0);  /* [0, 1) */
    double r = u * total, cum = 0;
    int last = 0;
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
    for (int i = 0; i < n; i++) {
        ids[i] = s->cand[i].id;
        probs[i] = (float)(s->cand[i].v / total);
    }
    return n;
}
