/* generate.c — generation sessions. An engine owns a KV cache with several
 * slots; each sequence (ds4_seq) keeps its own tokens, sampler and stop
 * state, and ds4_engine_step runs all of them through one ds4_forward call
 * (continuous batching). ds4_generate is the one-prompt case on top. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include "infer/infer.h"

const char *ds4_finish_name(int finish) {
    switch (finish) {
    case DS4_FINISH_NONE:    return "none";
    case DS4_FINISH_EOS:     return "eos";
    case DS4_FINISH_LENGTH:  return "length";
    case DS4_FINISH_STOP:    return "stop";
    case DS4_FINISH_CONTEXT: return "context";
    case DS4_FINISH_ABORT:   return "abort";
    case DS4_FINISH_ERROR:   return "error";
    }
    return "unknown";
}

void ds4_gen_params_default(ds4_gen_params *p) {
    memset(p, 0, sizeof *p);
    ds4_sampler_params_default(&p->sampler);
    p->max_tokens = 128;
    p->ctx = 0;
    p->add_bos = 1;
}

/* A special id from the config, else from the tokenizer; -1 when neither has
 * it. An id outside the model's vocabulary is an error. */
static int resolve_special(const ds4_model *m, const ds4_tokenizer *tok, int cfg_id,
                           const char *name, int *out) {
    int id = cfg_id;
    const char *from = "config.json";
    if (id < 0 && tok) {
        id = ds4_tokenizer_special(tok, name);
        from = "tokenizer";
    }
    if (id >= m->cfg.vocab_size) {
        ds4_set_error("%s: %s id %d is outside the model vocabulary (vocab_size %d)",
                      from, name, id, m->cfg.vocab_size);
        return -1;
    }
    *out = id < 0 ? -1 : id;
    return 0;
}

ds4_engine *ds4_engine_create(const ds4_model *m, const ds4_tokenizer *tok,
                              int n_slots, int capacity) {
    if (!m) { ds4_set_error("engine: no model"); return NULL; }
    if (n_slots <= 0) { ds4_set_error("engine: n_slots must be > 0, got %d", n_slots); return NULL; }
    if (capacity < 0) { ds4_set_error("engine: context must be >= 0, got %d", capacity); return NULL; }
    int maxpos = m->cfg.max_position_embeddings;
    int cap = capacity == 0 ? maxpos : DS4_MIN(capacity, maxpos);
    if (cap <= 0) { ds4_set_error("engine: context size %d is not positive", cap); return NULL; }
    ds4_engine *e = ds4_calloc(1, sizeof *e);
    if (!e) return NULL;
    e->m = m;
    e->tok = tok;
    e->n_slots = n_slots;
    e->capacity = cap;
    if (resolve_special(m, tok, m->cfg.bos_token_id, "<|bos|>", &e->bos_id) ||
        resolve_special(m, tok, m->cfg.eos_token_id, "<|eos|>", &e->eos_id))
        goto fail;
    e->slot_used = ds4_calloc((size_t)n_slots, sizeof *e->slot_used);
    if (!e->slot_used) goto fail;
    e->kv = ds4_kv_cache_create(&m->cfg, n_slots, cap);
    if (!e->kv) { ds4_error_prefix("engine: KV cache for %d x %d tokens: ", n_slots, cap); goto fail; }
    return e;
fail:
    ds4_engine_free(e);
    return NULL;
}

void ds4_engine_free(ds4_engine *e) {
    if (!e) return;
    if (e->kv) ds4_kv_cache_free(e->kv);
    free(e->slot_used);
    free(e->b_tokens); free(e->b_seq); free(e->b_rows);
    free(e->logits);
    free(e);
}

int ds4_seq_init(ds4_engine *e, ds4_seq *s, const int *prompt, int n_prompt,
                 const ds4_gen_params *p, ds4_text_fn on_text, void *user) {
    memset(s, 0, sizeof *s);
    s->slot = -1;
    s->finish = DS4_FINISH_ERROR;
    int V = e->m->cfg.vocab_size;
    if (n_prompt <= 0) { ds4_set_error("generate: the prompt is empty (no tokens)"); return -1; }
    if (n_prompt > e->capacity) {
        ds4_set_error("generate: the prompt has %d tokens but the context holds %d "
                      "(min of --ctx and max_position_embeddings %d)",
                      n_prompt, e->capacity, e->m->cfg.max_position_embeddings);
        return -1;
    }
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= V) {
            ds4_set_error("generate: prompt token %d has id %d, outside [0, %d)", i, prompt[i], V);
            return -1;
        }
    if (p->max_tokens < 0) { ds4_set_error("generate: max_tokens must be >= 0, got %d", p->max_tokens); return -1; }
    int slot = -1;
    for (int i = 0; i < e->n_slots && slot < 0; i++)
        if (!e->slot_used[i]) slot = i;
    if (slot < 0) { ds4_set_error("generate: all %d cache slots are busy", e->n_slots); return -1; }

    /* prompt + generated; the last sampled token never needs a cache row */
    long cap = (long)n_prompt + p->max_tokens;
    if (cap > (long)e->capacity + 1) cap = (long)e->capacity + 1;
    s->tokens = ds4_malloc((size_t)cap * sizeof *s->tokens);
    if (!s->tokens) return -1;
    if (ds4_sampler_init(&s->sampler, &p->sampler, V)) goto fail;
    if (ds4_stream_init(&s->stream, p->stop, p->n_stop)) goto fail;
    memcpy(s->tokens, prompt, (size_t)n_prompt * sizeof *prompt);
    s->n_tokens = s->n_prompt = n_prompt;
    s->cap_tokens = (int)cap;
    s->max_tokens = p->max_tokens;
    s->eos_id = p->ignore_eos ? -1 : e->eos_id;
    s->on_text = on_text;
    s->user = user;
    s->slot = slot;
    e->slot_used[slot] = 1;
    ds4_kv_cache_reset_seq(e->kv, slot);
    s->finish = p->max_tokens == 0 ? DS4_FINISH_LENGTH : DS4_FINISH_NONE;
    s->t_start = s->t_prefill_done = s->t_end = ds4_time_s();
    return 0;
fail:
    free(s->tokens);
    s->tokens = NULL;
    ds4_sampler_free(&s->sampler);
    return -1;
}

int ds4_seq_init_text(ds4_engine *e, ds4_seq *s, const char *prompt,
                      const ds4_gen_params *p, ds4_text_fn on_text, void *user) {
    if (!e->tok) {
        memset(s, 0, sizeof *s);
        s->slot = -1;
        ds4_set_error("generate: a text prompt needs a tokenizer");
        return -1;
    }
    int *ids = NULL;
    size_t n = 0;
    if (ds4_tokenizer_encode(e->tok, prompt, strlen(prompt), &ids, &n)) {
        memset(s, 0, sizeof *s);
        s->slot = -1;
        ds4_error_prefix("generate: tokenizing the prompt: ");
        return -1;
    }
    int bos = p->add_bos && e->bos_id >= 0;
    int *all = ds4_malloc((n + (size_t)bos + 1) * sizeof *all);
    if (!all) { free(ids); return -1; }
    if (bos) all[0] = e->bos_id;
    if (n) memcpy(all + bos, ids, n * sizeof *ids);
    free(ids);
    if (n + (size_t)bos > (size_t)INT_MAX) {
        free(all);
        ds4_set_error("generate: the prompt is too long (%zu tokens)", n);
        return -1;
    }
    int r = ds4_seq_init(e, s, all, (int)(n + (size_t)bos), p, on_text, user);
    free(all);
    return r;
}

void ds4_seq_release(ds4_engine *e, ds4_seq *s) {
    if (s->slot >= 0 && s->slot < e->n_slots) e->slot_used[s->slot] = 0;
    s->slot = -1;
    free(s->tokens);
    s->tokens = NULL;
    ds4_sampler_free(&s->sampler);
    ds4_stream_free(&s->stream);
}

void ds4_seq_stats(const ds4_seq *s, ds4_gen_stats *st) {
    memset(st, 0, sizeof *st);
    st->prompt_tokens = s->n_prompt;
    st->generated_tokens = s->n_generated;
    st->finish = s->finish;
    st->prefill_s = s->t_prefill_done - s->t_start;
    st->decode_s = s->t_end - s->t_prefill_done;
    if (st->prefill_s > 0) st->prefill_tok_s = s->n_prompt / st->prefill_s;
    /* the first generated token comes from the prefill; each later one took
     * one decode step */
    if (st->decode_s > 0 && s->n_generated > 1) st->decode_tok_s = (s->n_generated - 1) / st->decode_s;
}

static int grow_int(int **p, int n) {
    int *q = realloc(*p, (size_t)n * sizeof *q);
    if (!q) { ds4_set_error("engine: out of memory (%d ints)", n); return -1; }
    *p = q;
    return 0;
}

/* Emit text through the callback; nonzero return stops the sequence. */
static int seq_emit(ds4_seq *s, const char *text, size_t len) {
    if (!len || !s->on_text) return 0;
    return s->on_text(text, len, s->user);
}

static void seq_finish(ds4_seq *s, int finish) {
    s->finish = finish;
    s->t_end = ds4_time_s();
    if (finish != DS4_FINISH_STOP && finish != DS4_FINISH_ABORT && finish != DS4_FINISH_ERROR) {
        const char *o;
        size_t ol;
        ds4_stream_flush(&s->stream, &o, &ol);
        seq_emit(s, o, ol);
    }
}

/* A token was sampled for s: record it, stream its text, decide whether s
 * goes on. */
static void seq_accept(ds4_engine *e, ds4_seq *s, int id) {
    double now = ds4_time_s();
    if (s->n_generated == 0) s->t_prefill_done = now;
    s->tokens[s->n_tokens++] = id;
    s->n_generated++;
    if (id == s->eos_id) { seq_finish(s, DS4_FINISH_EOS); return; }
    const char *bytes = NULL;
    size_t nb = 0;
    if (e->tok && ds4_tokenizer_token_bytes(e->tok, id, &bytes, &nb)) nb = 0;  /* padding id: no text */
    const char *o;
    size_t ol;
    int r = ds4_stream_push(&s->stream, bytes ? bytes : "", nb, &o, &ol);
    if (r < 0) { seq_finish(s, DS4_FINISH_ERROR); return; }
    if (seq_emit(s, o, ol)) { seq_finish(s, DS4_FINISH_ABORT); return; }
    if (r == 1) { seq_finish(s, DS4_FINISH_STOP); return; }
    if (s->n_generated >= s->max_tokens) { seq_finish(s, DS4_FINISH_LENGTH); return; }
    /* the new token needs cache row n_tokens - 1 */
    if (s->n_tokens > e->capacity) { seq_finish(s, DS4_FINISH_CONTEXT); return; }
    s->t_end = now;
}

int ds4_engine_step(ds4_engine *e, ds4_seq **seqs, int n) {
    int V = e->m->cfg.vocab_size;
    /* Text is sampled only among ids the tokenizer has: a world model's video
     * codes (ids at and above the tokenizer's vocabulary) are never text. */
    int Vtext = e->tok ? DS4_MIN(V, ds4_tokenizer_vocab_size(e->tok)) : V;
    /* size the scratch: at most every pending token of every sequence */
    long need = 0;
    for (int i = 0; i < n; i++)
        if (seqs[i]->finish == DS4_FINISH_NONE) need += seqs[i]->n_tokens - seqs[i]->n_fed;
    if (need == 0) return 0;
    if (need > e->b_cap) {
        if (grow_int(&e->b_tokens, (int)need) || grow_int(&e->b_seq, (int)need)) return -1;
        e->b_cap = (int)need;
    }
    if (n > e->rows_cap) {
        float *l = realloc(e->logits, (size_t)n * V * sizeof *l);
        if (!l || grow_int(&e->b_rows, n)) {
            if (l) e->logits = l;
            ds4_set_error("engine: out of memory for logits [%d, %d]", n, V);
            return -1;
        }
        e->logits = l;
        e->rows_cap = n;
    }
    /* Build the batch: decoding sequences first (one token each), then
     * prompt chunks within max_batch_tokens. */
    int *chunk = ds4_calloc((size_t)n, sizeof *chunk);   /* [n] tokens fed per sequence */
    int *orow = ds4_malloc((size_t)n * sizeof *orow);     /* [n] logits row or -1 */
    if (!chunk || !orow) { free(chunk); free(orow); return -1; }
    long budget = e->max_batch_tokens > 0 ? e->max_batch_tokens : need;
    int nb = 0, n_out = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n; i++) {
            ds4_seq *s = seqs[i];
            if (s->finish != DS4_FINISH_NONE) continue;
            int pending = s->n_tokens - s->n_fed;
            int decoding = s->n_generated > 0;
            if (pass == 0 && decoding) chunk[i] = pending;
            if (pass == 1 && !decoding) chunk[i] = (int)DS4_MIN((long)pending, DS4_MAX(budget, 0));
            if ((pass == 0) != decoding || chunk[i] == 0) continue;
            budget -= chunk[i];
        }
    /* Lay out rows in sequence order (tokens of one sequence contiguous). */
    for (int i = 0; i < n; i++) {
        orow[i] = -1;
        ds4_seq *s = seqs[i];
        if (!chunk[i]) continue;
        for (int j = 0; j < chunk[i]; j++) {
            e->b_tokens[nb] = s->tokens[s->n_fed + j];
            e->b_seq[nb] = s->slot;
            nb++;
        }
        if (s->n_fed + chunk[i] == s->n_tokens) {         /* all known tokens in: sample */
            orow[i] = n_out;
            e->b_rows[n_out++] = nb - 1;
        }
    }
    int running = 0;
    if (nb > 0) {
        ds4_batch b = {.n = nb, .tokens = e->b_tokens, .seq = e->b_seq};
        if (ds4_forward(e->m, &b, e->kv, e->b_rows, n_out, e->logits)) {
            for (int i = 0; i < n; i++)
                if (chunk[i]) seq_finish(seqs[i], DS4_FINISH_ERROR);
            free(chunk); free(orow);
            ds4_error_prefix("generate: forward: ");
            return -1;
        }
    }
    int failed = 0;
    for (int i = 0; i < n; i++) {
        ds4_seq *s = seqs[i];
        if (chunk[i]) s->n_fed += chunk[i];
        if (orow[i] >= 0) {
            int id = ds4_sampler_sample(&s->sampler, e->logits + (size_t)orow[i] * V, Vtext);
            if (id < 0) { seq_finish(s, DS4_FINISH_ERROR); failed = 1; }
            else seq_accept(e, s, id);
        }
        if (s->finish == DS4_FINISH_NONE) running++;
    }
    free(chunk); free(orow);
    if (failed) { ds4_error_prefix("generate: sampling: "); return -1; }
    return running;
}

int ds4_generate(const ds4_model *m, const ds4_tokenizer *tok, const char *prompt,
                 const ds4_gen_params *p, ds4_text_fn on_text, void *user,
                 ds4_gen_stats *stats) {
    if (stats) memset(stats, 0, sizeof *stats);
    ds4_engine *e = ds4_engine_create(m, tok, 1, p->ctx);
    if (!e) return -1;
    e->max_batch_tokens = 0;                     /* the prompt in one forward call */
    ds4_seq s;
    if (ds4_seq_init_text(e, &s, prompt, p, on_text, user)) {
        ds4_engine_free(e);
        return -1;
    }
    ds4_seq *one = &s;
    int r = 0;
    while (s.finish == DS4_FINISH_NONE) {
        r = ds4_engine_step(e, &one, 1);
        if (r < 0) break;
    }
    if (stats) ds4_seq_stats(&s, stats);
    ds4_seq_release(e, &s);
    ds4_engine_free(e);
    return r < 0 ? -1 : 0;
}
