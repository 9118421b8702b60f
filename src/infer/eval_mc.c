/* eval_mc.c — multiple-choice evaluation (MMLU layout) by log-likelihood:
 * each choice is scored by the summed (and per-token mean) log-probability of
 * its tokens after a fixed prompt; the context is prefilled once per question
 * and its cache slot copied to every choice. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "infer/evalh.h"

/* ---- data ----------------------------------------------------------------- */

void ds4_mc_free(ds4_mc_item *items, int n) {
    if (!items) return;
    for (int i = 0; i < n; i++) {
        free(items[i].question);
        for (int c = 0; c < items[i].n_choices; c++) free(items[i].choices[c]);
        free(items[i].choices);
        free(items[i].subject);
    }
    free(items);
}

/* One JSON object into *it; errors name path and line. */
static int parse_item(const cJSON *o, void *rec, const char *path, int line) {
    ds4_mc_item *it = rec;
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(o, "question");
    const cJSON *ch = cJSON_GetObjectItemCaseSensitive(o, "choices");
    const cJSON *an = cJSON_GetObjectItemCaseSensitive(o, "answer");
    const cJSON *su = cJSON_GetObjectItemCaseSensitive(o, "subject");
    if (!cJSON_IsString(q)) {
        ds4_set_error("%s line %d: \"question\" must be a string", path, line);
        return -1;
    }
    if (!cJSON_IsArray(ch) || cJSON_GetArraySize(ch) < 2 ||
        cJSON_GetArraySize(ch) > DS4_MC_MAX_CHOICES) {
        ds4_set_error("%s line %d: \"choices\" must be an array of 2 to %d strings", path, line,
                      DS4_MC_MAX_CHOICES);
        return -1;
    }
    int nc = cJSON_GetArraySize(ch), ans = -1;
    if (cJSON_IsNumber(an) && an->valuedouble == floor(an->valuedouble)) ans = (int)an->valuedouble;
    else if (cJSON_IsString(an) && strlen(an->valuestring) == 1 &&
             an->valuestring[0] >= 'A' && an->valuestring[0] <= 'Z') ans = an->valuestring[0] - 'A';
    else {
        ds4_set_error("%s line %d: \"answer\" must be a choice index or a letter A-Z", path, line);
        return -1;
    }
    if (ans < 0 || ans >= nc) {
        ds4_set_error("%s line %d: \"answer\" %d is outside the %d choices", path, line, ans, nc);
        return -1;
    }
    if (su && !cJSON_IsString(su) && !cJSON_IsNull(su)) {
        ds4_set_error("%s line %d: \"subject\" must be a string", path, line);
        return -1;
    }
    it->question = strdup(q->valuestring);
    it->choices = ds4_calloc((size_t)nc, sizeof *it->choices);
    it->subject = cJSON_IsString(su) ? strdup(su->valuestring) : NULL;
    it->answer = ans;
    if (!it->question || !it->choices || (cJSON_IsString(su) && !it->subject)) {
        ds4_set_error("%s line %d: out of memory", path, line);
        return -1;
    }
    for (int c = 0; c < nc; c++) {
        const cJSON *v = cJSON_GetArrayItem(ch, c);
        if (!cJSON_IsString(v)) {
            ds4_set_error("%s line %d: choice %d is not a string", path, line, c);
            return -1;
        }
        if (!(it->choices[c] = strdup(v->valuestring))) {
            ds4_set_error("%s line %d: out of memory", path, line);
            return -1;
        }
        it->n_choices = c + 1;
    }
    return 0;
}

int ds4_mc_load(const char *path, ds4_mc_item **out, int *n_out) {
    void *items;
    int cap;
    if (ds4_jsonl_load(path, sizeof **out, "questions", &items, n_out, &cap, parse_item)) {
        ds4_mc_free(items, cap);
        *out = NULL;
        *n_out = 0;
        return -1;
    }
    *out = items;
    return 0;
}

char *ds4_mc_context(const ds4_mc_item *it) {
    size_t n = strlen(it->question) + 32;
    char *s = ds4_malloc(n);
    if (s) snprintf(s, n, "Question: %s\nAnswer:", it->question);
    return s;
}

/* ---- scoring --------------------------------------------------------------- */

ds4_mc_scorer *ds4_mc_scorer_create(const ds4_model *m, int max_choices, int capacity) {
    if (max_choices < 1 || capacity < 1) {
        ds4_set_error("mc scorer: max_choices (%d) and capacity (%d) must be positive",
                      max_choices, capacity);
        return NULL;
    }
    if (capacity > m->cfg.max_position_embeddings) {
        ds4_set_error("mc scorer: capacity %d exceeds max_position_embeddings %d", capacity,
                      m->cfg.max_position_embeddings);
        return NULL;
    }
    ds4_mc_scorer *s = ds4_calloc(1, sizeof *s);
    if (!s) return NULL;
    s->m = m;
    s->max_choices = max_choices;
    s->capacity = capacity;
    if (!(s->kv = ds4_kv_cache_create(&m->cfg, max_choices, capacity))) {
        free(s);
        return NULL;
    }
    return s;
}

void ds4_mc_scorer_free(ds4_mc_scorer *s) {
    if (!s) return;
    ds4_kv_cache_free(s->kv);
    free(s->tok); free(s->seq); free(s->rows); free(s->logits);
    free(s);
}

/* Copy cache slot src (every layer's rows, positions and indexer keys) into
 * slot dst, so dst continues from the same prefix. */
static void kv_copy_seq(ds4_kv_cache *kv, int src, int dst) {
    size_t cap = (size_t)kv->capacity, kd = (size_t)kv->kv_dim;
    for (int l = 0; l < kv->n_layers; l++) {
        size_t rows = (size_t)kv->len[l][src];
        memcpy(kv->k[l] + dst * cap * kd, kv->k[l] + src * cap * kd, rows * kd * sizeof(float));
        memcpy(kv->v[l] + dst * cap * kd, kv->v[l] + src * cap * kd, rows * kd * sizeof(float));
        memcpy(kv->pos[l] + dst * cap, kv->pos[l] + src * cap, rows * sizeof(int));
        if (kv->ki_dim)
            memcpy(kv->ki[l] + dst * kv->ki_stride, kv->ki[l] + src * kv->ki_stride,
                   kv->ki_stride * sizeof(float));
        kv->len[l][dst] = (int)rows;
    }
    kv->next_pos[dst] = kv->next_pos[src];
}

/* log softmax(row)[t], row [V], in double. */
static double log_prob(const float *row, int V, int t) {
    float mx = row[0];
    for (int i = 1; i < V; i++) mx = row[i] > mx ? row[i] : mx;
    double sum = 0;
    for (int i = 0; i < V; i++) sum += exp((double)row[i] - mx);
    return (double)row[t] - mx - log(sum);
}

static int grow(ds4_mc_scorer *s, int rows) {
    if (rows <= s->cap_rows) return 0;
    int cap = DS4_MAX(rows, 2 * s->cap_rows);
    size_t V = (size_t)s->m->cfg.vocab_size;
    free(s->tok); free(s->seq); free(s->rows); free(s->logits);
    s->tok = ds4_malloc((size_t)cap * sizeof(int));
    s->seq = ds4_malloc((size_t)cap * sizeof(int));
    s->rows = ds4_malloc((size_t)cap * sizeof(int));
    s->logits = ds4_malloc((size_t)cap * V * sizeof(float));
    if (!s->tok || !s->seq || !s->rows || !s->logits) { s->cap_rows = 0; return -1; }
    s->cap_rows = cap;
    return 0;
}

int ds4_mc_score_tokens(ds4_mc_scorer *s, const int *ctx, int n_ctx,
                        const int *const *choice, const int *choice_len,
                        int n_choices, double *ll_sum) {
    int V = s->m->cfg.vocab_size;
    if (n_choices < 1 || n_choices > s->max_choices) {
        ds4_set_error("mc: %d choices for a scorer of %d", n_choices, s->max_choices);
        return -1;
    }
    if (n_ctx < 1) { ds4_set_error("mc: empty context"); return -1; }
    int extra = 0;                                    /* continuation tokens fed: len - 1 each */
    for (int c = 0; c < n_choices; c++) {
        if (choice_len[c] < 1) { ds4_set_error("mc: choice %d has no tokens", c); return -1; }
        if (n_ctx + choice_len[c] - 1 > s->capacity) {
            ds4_set_error("mc: context %d + choice %d tokens exceed the capacity %d", n_ctx,
                          choice_len[c], s->capacity);
            return -1;
        }
        for (int j = 0; j < choice_len[c]; j++)
            if (choice[c][j] < 0 || choice[c][j] >= V) {
                ds4_set_error("mc: choice %d token %d is outside the vocabulary", c, choice[c][j]);
                return -1;
            }
        extra += choice_len[c] - 1;
    }
    for (int i = 0; i < n_ctx; i++)
        if (ctx[i] < 0 || ctx[i] >= V) {
            ds4_set_error("mc: context token %d is outside the vocabulary", ctx[i]);
            return -1;
        }
    if (grow(s, DS4_MAX(n_ctx, extra))) return -1;

    /* 1. the context once, into slot 0: logits of its last row predict every
     *    choice's first token */
    ds4_kv_cache_reset_seq(s->kv, 0);
    for (int i = 0; i < n_ctx; i++) s->seq[i] = 0;
    ds4_batch b = {.n = n_ctx, .tokens = ctx, .seq = s->seq};
    int last = n_ctx - 1;
    if (ds4_forward(s->m, &b, s->kv, &last, 1, s->logits)) {
        ds4_error_prefix("mc: context: ");
        return -1;
    }
    for (int c = 0; c < n_choices; c++) ll_sum[c] = log_prob(s->logits, V, choice[c][0]);
    if (extra == 0) return 0;

    /* 2. every choice's tokens but the last, each in its own copy of the
     *    context's slot, in one forward call */
    int n = 0;
    for (int c = 0; c < n_choices; c++) {
        if (choice_len[c] < 2) continue;
        if (c > 0) kv_copy_seq(s->kv, 0, c);
        for (int j = 0; j + 1 < choice_len[c]; j++) {
            s->tok[n] = choice[c][j];
            s->seq[n] = c;
            n++;
        }
    }
    b = (ds4_batch){.n = n, .tokens = s->tok, .seq = s->seq};
    if (ds4_forward(s->m, &b, s->kv, NULL, 0, s->logits)) {
        ds4_error_prefix("mc: choices: ");
        return -1;
    }
    int r = 0;
    for (int c = 0; c < n_choices; c++)
        for (int j = 1; j < choice_len[c]; j++, r++)
            ll_sum[c] += log_prob(s->logits + (size_t)r * V, V, choice[c][j]);
    return 0;
}

/* ---- a whole set -------------------------------------------------------------- */

static int argmax(const double *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[b]) b = i;
    return b;
}

int ds4_mc_eval(const ds4_model *m, const ds4_tokenizer *tok, const ds4_mc_item *items,
                int n, int add_bos, ds4_mc_item_fn fn, void *user, ds4_mc_result *r) {
    memset(r, 0, sizeof *r);
    int maxpos = m->cfg.max_position_embeddings;
    int bos = -1;
    if (add_bos) {
        bos = m->cfg.bos_token_id >= 0 ? m->cfg.bos_token_id : ds4_tokenizer_special(tok, "<|bos|>");
        if (bos >= m->cfg.vocab_size) bos = -1;
    }
    int nb = bos >= 0;
    ds4_mc_scorer *s = NULL;
    int *ctx = NULL, *cids[DS4_MC_MAX_CHOICES] = {0}, clen[DS4_MC_MAX_CHOICES];
    double ll[DS4_MC_MAX_CHOICES], mean[DS4_MC_MAX_CHOICES];
    int rc = -1;
    double t0 = ds4_time_s();
    for (int i = 0; i < n; i++) {
        const ds4_mc_item *it = &items[i];
        char *text = ds4_mc_context(it);
        int *ids = NULL;
        size_t n_ids = 0;
        if (!text) goto done;
        int bad = ds4_tokenizer_encode(tok, text, strlen(text), &ids, &n_ids);
        free(text);
        if (bad) { ds4_error_prefix("mc item %d: ", i); goto done; }
        int maxlen = 0;
        for (int c = 0; c < it->n_choices; c++) {
            size_t cl = strlen(it->choices[c]) + 2;
            char *ct = ds4_malloc(cl);
            if (!ct) { free(ids); goto done; }
            snprintf(ct, cl, " %s", it->choices[c]);
            size_t nc = 0;
            bad = ds4_tokenizer_encode(tok, ct, cl - 1, &cids[c], &nc);
            free(ct);
            if (bad) { free(ids); ds4_error_prefix("mc item %d choice %d: ", i, c); goto done; }
            clen[c] = (int)nc;
            maxlen = DS4_MAX(maxlen, clen[c]);
        }
        if (maxlen + nb > maxpos) {
            free(ids);
            ds4_set_error("mc item %d: a choice of %d tokens does not fit max_position_embeddings %d",
                          i, maxlen, maxpos);
            goto done;
        }
        /* context = [bos] + the last tokens of the text that fit */
        size_t keep = n_ids;
        int truncated = 0;
        if ((long)nb + (long)keep + maxlen - 1 > maxpos) {
            keep = (size_t)(maxpos - maxlen + 1 - nb);
            truncated = 1;
            r->truncated++;
        }
        int n_ctx = nb + (int)keep;
        free(ctx);
        ctx = ds4_malloc(((size_t)n_ctx + 1) * sizeof *ctx);
        if (!ctx) { free(ids); goto done; }
        if (nb) ctx[0] = bos;
        if (keep) memcpy(ctx + nb, ids + (n_ids - keep), keep * sizeof *ctx);
        free(ids);
        if (n_ctx == 0) { ds4_set_error("mc item %d: empty context and no <|bos|>", i); goto done; }
        int need = n_ctx + maxlen - 1;
        if (!s || need > s->capacity || it->n_choices > s->max_choices) {
            int cap = s ? DS4_MIN(maxpos, DS4_MAX(need, 2 * s->capacity)) : DS4_MIN(maxpos, DS4_MAX(need, 128));
            int mc = DS4_MAX(it->n_choices, s ? s->max_choices : 4);
            ds4_mc_scorer_free(s);
            if (!(s = ds4_mc_scorer_create(m, mc, cap))) goto done;
        }
        if (ds4_mc_score_tokens(s, ctx, n_ctx, (const int *const *)cids, clen, it->n_choices, ll)) {
            ds4_error_prefix("mc item %d: ", i);
            goto done;
        }
        r->tokens += n_ctx;
        for (int c = 0; c < it->n_choices; c++) {
            mean[c] = ll[c] / clen[c];
            r->tokens += clen[c] - 1;
            free(cids[c]);
            cids[c] = NULL;
        }
        ds4_mc_item_result ir = {.ll_sum = ll, .ll_mean = mean, .n_tokens = clen,
                                 .pred_sum = argmax(ll, it->n_choices),
                                 .pred_mean = argmax(mean, it->n_choices), .truncated = truncated};
        r->correct_sum += ir.pred_sum == it->answer;
        r->correct_mean += ir.pred_mean == it->answer;
        r->n_items++;
        if (fn) fn(i, it, &ir, user);
    }
    r->acc = r->n_items ? (double)r->correct_sum / r->n_items : 0;
    r->acc_norm = r->n_items ? (double)r->correct_mean / r->n_items : 0;
    rc = 0;
done:
    r->seconds = ds4_time_s() - t0;
    for (int c = 0; c < DS4_MC_MAX_CHOICES; c++) free(cids[c]);
    free(ctx);
    ds4_mc_scorer_free(s);
    return rc;
}
