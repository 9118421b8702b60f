/* eval.c — validation loss and perplexity of a model on a token stream:
 * non-overlapping windows, each fed from position 0 through ds4_forward into
 * a fresh cache slot, cross-entropy of every next token accumulated in double. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "infer/infer.h"
#include "kernels/tile.h"

/* -log softmax(row)[target]; row [V] is overwritten. The exponentials are
 * float (the vectorised exp2 of the attention kernels, relative error ~1e-7,
 * arguments <= 0 so nothing overflows); partial sums of 1024 terms are added
 * in double, and so is everything after. V double exps per token would
 * otherwise dominate eval on small models. */
static double xent_row(float *row, int V, int target) {
    const float log2e = 1.44269504088896341f;
    double tl = row[target];
    float mx = row[0];
    for (int i = 1; i < V; i++) mx = row[i] > mx ? row[i] : mx;
    for (int i = 0; i < V; i++) row[i] *= log2e;
    double sum = 0;
    for (int i0 = 0; i0 < V; i0 += 1024)
        sum += ds4_tile_exp2_sum(row + i0, DS4_MIN(1024, V - i0), mx * log2e);
    return (double)mx + log(sum) - tl;
}

int ds4_eval_tokens(const ds4_model *m, const int *ids, size_t n, int T, int batch,
                    ds4_eval_result *r) {
    memset(r, 0, sizeof *r);
    const ds4_config *c = &m->cfg;
    int V = c->vocab_size, maxpos = c->max_position_embeddings;
    if (T <= 0) T = DS4_MIN(512, maxpos);
    if (T > maxpos) {
        ds4_set_error("eval: window %d is longer than max_position_embeddings %d", T, maxpos);
        return -1;
    }
    if (n < 2) {
        ds4_set_error("eval: need at least 2 tokens to predict one, got %zu", n);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V) {
            ds4_set_error("eval: token %zu has id %d, outside the model vocabulary [0, %d)", i, ids[i], V);
            return -1;
        }
    if (batch <= 0) batch = 1;
    size_t n_windows = (n - 2) / (size_t)T + 1;        /* starts 0, T, ... while start + 1 < n */
    if ((size_t)batch > n_windows) batch = (int)n_windows;

    ds4_kv_cache *kv = ds4_kv_cache_create(c, batch, T);
    int *tok = ds4_malloc((size_t)batch * T * sizeof *tok);      /* [batch*T] */
    int *seq = ds4_malloc((size_t)batch * T * sizeof *seq);      /* [batch*T] */
    float *logits = ds4_malloc((size_t)batch * T * V * sizeof *logits);  /* [batch*T, V] */
    int *tgt = ds4_malloc((size_t)batch * T * sizeof *tgt);      /* [batch*T] */
    int rc = -1;
    if (!kv || !tok || !seq || !logits || !tgt) goto done;

    double t0 = ds4_time_s(), total = 0;
    long counted = 0;
    for (size_t w0 = 0; w0 < n_windows; w0 += (size_t)batch) {
        int nb = 0;
        for (int b = 0; b < batch && w0 + (size_t)b < n_windows; b++) {
            size_t s = (w0 + (size_t)b) * (size_t)T;
            int len = (int)DS4_MIN((size_t)T, n - 1 - s);
            ds4_kv_cache_reset_seq(kv, b);
            for (int j = 0; j < len; j++) {
                tok[nb] = ids[s + (size_t)j];
                tgt[nb] = ids[s + (size_t)j + 1];
                seq[nb] = b;
                nb++;
            }
        }
        ds4_batch bt = {.n = nb, .tokens = tok, .seq = seq};
        if (ds4_forward(m, &bt, kv, NULL, 0, logits)) {
            ds4_error_prefix("eval: forward over windows from %zu: ", w0);
            goto done;
        }
        double part = 0;
        #pragma omp parallel for reduction(+:part) schedule(static)
        for (int i = 0; i < nb; i++) part += xent_row(logits + (size_t)i * V, V, tgt[i]);
        total += part;
        counted += nb;
    }
    r->seconds = ds4_time_s() - t0;
    r->tokens = counted;
    r->windows = (int)n_windows;
    r->loss = total / (double)counted;
    r->ppl = exp(r->loss);
    r->tok_s = r->seconds > 0 ? counted / r->seconds : 0;
    rc = 0;
done:
    if (kv) ds4_kv_cache_free(kv);
    free(tok); free(seq); free(logits); free(tgt);
    return rc;
}
