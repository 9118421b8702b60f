/* prune.c — token pruning decisions (SPEC §1.3): training top-k per sequence,
 * the causal rule's BCE loss and agreement counters, the default ratio
 * schedule, and the indexer-only freeze used by the warm-up. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "model/forward.h"
#include "model/prune.h"
#include "util/util.h"

float ds4_prune_ratio(const ds4_config *c, int l) {
    for (int i = 0; i < c->n_prune_layers; i++)
        if (c->prune_layers[i] == l) return c->prune_ratio[i] > 0 ? c->prune_ratio[i] : 0.0f;
    return 0.0f;
}

int ds4_prune_any(const ds4_config *c) {
    for (int i = 0; i < c->n_prune_layers; i++)
        if (c->prune_ratio[i] > 0) return 1;
    return 0;
}

int ds4_prune_keep_count(float rho, int T) {
    /* ceil in double with a small tolerance so that (1 - 0.3) * 10 keeps 7 */
    int k = (int)ceil((1.0 - (double)rho) * T - 1e-6);
    return k < 1 ? 1 : k > T ? T : k;
}

typedef struct { float r; int i; } rank_item;

static int rank_cmp(const void *pa, const void *pb) {
    const rank_item *a = pa, *b = pb;
    if (a->r != b->r) return a->r > b->r ? -1 : 1;
    return (a->i > b->i) - (a->i < b->i);
}

void ds4_prune_topk(const float *r, const int *pos, int T, float rho, unsigned char *keep) {
    int k = ds4_prune_keep_count(rho, T), m = 0;
    rank_item stack[256], *it = T <= 256 ? stack : malloc(sizeof(rank_item) * (size_t)T);
    memset(keep, 0, (size_t)T);
    for (int i = 0; i < T; i++) {
        if (pos[i] == 0) { keep[i] = 1; k--; continue; }
        if (it) it[m++] = (rank_item){r[i], i};
    }
    if (!it) {   /* out of memory: fall back to an O(T k) selection */
        for (; k > 0; k--) {
            int best = -1;
            for (int i = 0; i < T; i++)
                if (!keep[i] && (best < 0 || r[i] > r[best])) best = i;
            if (best < 0) break;
            keep[best] = 1;
        }
        return;
    }
    qsort(it, (size_t)m, sizeof *it, rank_cmp);
    for (int j = 0; j < k && j < m; j++) keep[it[j].i] = 1;
    if (it != stack) free(it);
}

double ds4_prune_bce(const float *r, const float *y, int n, float *dr, float scale, int *count) {
    double loss = 0;
    int cnt = 0;
    for (int i = 0; i < n; i++) {
        if (y[i] < 0) continue;
        const double x = r[i];
        /* -[y log s + (1-y) log(1-s)] = max(x,0) - x y + log(1 + exp(-|x|)) */
        loss += (x > 0 ? x : 0) - x * y[i] + log1p(exp(-fabs(x)));
        cnt++;
        if (dr) dr[i] += scale * (float)(1.0 / (1.0 + exp(-x)) - y[i]);
    }
    if (count) *count = cnt;
    return loss;
}

void ds4_prune_count(ds4_prune_counts *pc, const float *r, const int *pos, const unsigned char *topk,
                     const unsigned char *kept, int T) {
    for (int i = 0; i < T; i++) {
        pc->tokens++;
        pc->kept += kept[i] != 0;
        if (!topk || pos[i] == 0) continue;
        pc->scored++;
        pc->agree += (r[i] > 0.0f) == (topk[i] != 0);
    }
}

int ds4_prune_eval(const ds4_model *m, const int *ids, size_t n, int T, ds4_prune_counts *counts) {
    const ds4_config *c = &m->cfg;
    memset(counts, 0, sizeof *counts * (size_t)c->num_hidden_layers);
    if (T <= 1 || n < 2) { ds4_set_error("prune eval: need a window of at least 2 tokens and 2 tokens"); return -1; }
    ds4_kv_cache *kv = ds4_kv_cache_create(c, 1, T);
    int *seq = ds4_calloc((size_t)T, sizeof(int));
    float *lg = ds4_malloc(sizeof(float) * (size_t)c->vocab_size);
    int rc = kv && seq && lg ? 0 : -1;
    for (size_t s = 0; s + 1 < n && rc == 0; s += (size_t)T) {
        const int len = (int)DS4_MIN((size_t)T, n - s), last = len - 1;
        ds4_kv_cache_reset_seq(kv, 0);
        ds4_batch b = {.n = len, .tokens = ids + s, .seq = seq};
        rc = ds4_forward(m, &b, kv, &last, 1, lg);
    }
    if (rc == 0)
        for (int l = 0; l < c->num_hidden_layers; l++) counts[l] = kv->prune[l];
    ds4_kv_cache_free(kv);
    free(seq);
    free(lg);
    return rc;
}

int ds4_prune_eval_loss(const ds4_model *m, const int *ids, size_t n, int T, ds4_prune_counts *counts,
                        double *loss, long *predicted) {
    const ds4_config *c = &m->cfg;
    const int V = c->vocab_size;
    if (counts) memset(counts, 0, sizeof *counts * (size_t)c->num_hidden_layers);
    if (T <= 0 || n < 2) { ds4_set_error("prune eval: need a window of at least 1 token and 2 tokens"); return -1; }
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V) { ds4_set_error("prune eval: token %zu has id %d, outside [0, %d)", i, ids[i], V); return -1; }
    ds4_kv_cache *kv = ds4_kv_cache_create(c, 1, T);
    int *seq = ds4_calloc((size_t)T, sizeof(int));
    float *lg = ds4_malloc(sizeof(float) * (size_t)T * V);       /* [T, V] */
    int rc = kv && seq && lg ? 0 : -1;
    double total = 0;
    long count = 0;
    for (size_t s = 0; s + 1 < n && rc == 0; s += (size_t)T) {
        const int len = (int)DS4_MIN((size_t)T, n - 1 - s);
        ds4_kv_cache_reset_seq(kv, 0);
        ds4_batch b = {.n = len, .tokens = ids + s, .seq = seq};
        if ((rc = ds4_forward(m, &b, kv, NULL, 0, lg)) != 0) break;
        double part = 0;
        #pragma omp parallel for reduction(+:part) schedule(static)
        for (int i = 0; i < len; i++) {
            const float *row = lg + (size_t)i * V;
            float mx = row[0];
            for (int v = 1; v < V; v++) mx = row[v] > mx ? row[v] : mx;
            double sum = 0;
            for (int v = 0; v < V; v++) sum += expf(row[v] - mx);
            part += (double)mx + log(sum) - row[ids[s + (size_t)i + 1]];
        }
        total += part;
        count += len;
    }
    if (rc == 0 && counts)
        for (int l = 0; l < c->num_hidden_layers; l++) counts[l] = kv->prune[l];
    if (rc == 0) {
        *loss = total / (double)count;
        if (predicted) *predicted = count;
    }
    ds4_kv_cache_free(kv);
    free(seq);
    free(lg);
    return rc;
}

void ds4_prune_default_schedule(ds4_config *c, float max_ratio) {
    const int L = c->num_hidden_layers, first = L / 2, span = L - first;
    c->n_prune_layers = 0;
    if (max_ratio <= 0) return;
    for (int l = first; l < L; l++) {
        c->prune_layers[c->n_prune_layers] = l;
        c->prune_ratio[c->n_prune_layers] = max_ratio * (float)(l - first + 1) / (float)span;
        c->n_prune_layers++;
    }
}

void ds4_layout_indexer_only(ds4_layout *lay, unsigned char *saved, int on) {
    for (int i = 0; i < lay->n_tensors; i++) {
        ds4_tensor_info *t = &lay->tensors[i];
        if (on) {
            saved[i] = (unsigned char)t->trainable;
            if (!strstr(t->name, ".self_attn.indexer.")) t->trainable = 0;
        } else {
            t->trainable = saved[i];
        }
    }
}
