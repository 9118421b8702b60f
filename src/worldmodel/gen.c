/* gen.c — constrained video generation with a rolling context. Requests run
 * in one batch (one ds4_forward per step for all of them); only code ids are
 * sampled at code positions and <|frame|> is forced after each latent frame's
 * codes. The context holds <|bos|> caption <|video|> plus at most `window`
 * latent frames (the training row length); when the next frame would not fit,
 * the sequence's cache slot is cleared and re-prefilled with the prefix and
 * the last `keep` frames, so positions stay inside what training saw.
 * Classifier-free guidance (cfg_scale != 1, captioned requests): a twin
 * sequence without the caption runs beside each one in its own cache slot and
 * is fed the same codes; codes are sampled from u + s·(c − u) of the two
 * sequences' code logits (training drops captions, so the model has both). */
#include <stdlib.h>
#include <string.h>
#include "model/forward.h"
#include "util/util.h"
#include "worldmodel/worldmodel.h"

void ds4_wm_gen_params_default(ds4_wm_gen_params *p) {
    memset(p, 0, sizeof *p);
    ds4_sampler_params_default(&p->sampler);
    /* continuation: chosen on 128 validation clips of the shipped model (temperature 0.2 / 0.3 /
     * 0.4 / 0.5 / 0.6 / 0.7: position median 11.3 / 11.2 / 11.4 / 12.7 / 12.5 / 12.7 px, balls
     * missed 23.5 / 24.1 / 25.4 / 28.9 / 27.0 / 28.5%); text-to-video: DS4_WM_T2V_TEMP_DEFAULT */
    p->sampler.temperature = DS4_WM_TEMP_DEFAULT;
    p->sampler.seed = 1;
    p->cfg_scale = DS4_WM_CFG_DEFAULT;
}

typedef struct gseq {
    ds4_wm_request *rq;
    int  slot, uslot;             /* cache slots: the sequence, its caption-free twin (-1: none) */
    int  row, urow;               /* their logits rows in the last forward */
    int *prefix, n_prefix;        /* <|bos|> caption <|video|> */
    int  target;                  /* n_given + n_new latent frames */
    int  n_done;                  /* complete latent frames in rq->out */
    int  in_frame;                /* codes of the current frame sampled so far */
    int  ctx_frames;              /* complete latent frames in the context */
    int  pending;                 /* sampled code not yet fed (-1: none) */
    int  n_tok;                   /* tokens recorded into rq->tokens */
    int  rebuild;                 /* the context must be rebuilt before the next step */
    int  done;
    ds4_sampler smp;
} gseq;

typedef struct gctx {
    const ds4_wm *w;
    const ds4_wm_layout *L;
    ds4_kv_cache *kv;
    int window, keep, V;
    float cfg;                    /* guidance scale */
    int uprefix[2];               /* the twin's prefix: <|bos|> <|video|> */
    int *tok, *seq, *rows;        /* [cap] batch scratch */
    int cap;
    float *logits;                /* [2 * batch][V] */
    float *mix;                   /* [n_codes] guided code logits */
    ds4_wm_gen_stats *st;
} gctx;

/* Sample the next code of s from its logits row (guided by the twin's row). */
static int sample_code(gctx *g, gseq *s) {
    const int nc = g->L->n_codes;
    const float *z = g->logits + (size_t)s->row * g->V + g->L->code_offset;
    if (s->uslot >= 0) {
        const float *u = g->logits + (size_t)s->urow * g->V + g->L->code_offset;
        for (int c = 0; c < nc; c++) g->mix[c] = u[c] + g->cfg * (z[c] - u[c]);
        z = g->mix;
    }
    int c = ds4_sampler_sample(&s->smp, z, nc);
    if (c < 0) { ds4_set_error("video generation: the sampler failed (NaN logits?)"); return -1; }
    s->pending = c;
    g->st->sampled++;
    return 0;
}

/* Append prefix + the last k complete frames of s to t (slot `slot` in q). */
static int put_context(const gctx *g, const gseq *s, const int *prefix, int np, int k, int slot, int *t, int *q) {
    const ds4_wm_layout *L = g->L;
    int j = 0;
    for (int i = 0; i < np; i++) t[j++] = prefix[i];
    for (int f = s->n_done - k; f < s->n_done; f++) {
        for (int c = 0; c < L->cpf; c++) t[j++] = L->code_offset + s->rq->out[(size_t)f * L->cpf + c];
        t[j++] = L->frame;
    }
    for (int i = 0; i < j; i++) q[i] = slot;
    return j;
}

/* Clear the slot (and the twin's), feed prefix + the last k complete frames, sample the next code. */
static int rebuild(gctx *g, gseq *s, int k) {
    const ds4_wm_layout *L = g->L;
    if (k > s->n_done) k = s->n_done;
    const int n = s->n_prefix + k * (L->cpf + 1), nu = s->uslot >= 0 ? 2 + k * (L->cpf + 1) : 0;
    int *t = ds4_malloc((size_t)(n + nu) * sizeof *t), *q = ds4_malloc((size_t)(n + nu) * sizeof *q);
    if (!t || !q) { free(t); free(q); return -1; }
    put_context(g, s, s->prefix, s->n_prefix, k, s->slot, t, q);
    ds4_kv_cache_reset_seq(g->kv, s->slot);
    int last[2] = {n - 1, n + nu - 1};
    if (nu) {
        put_context(g, s, g->uprefix, 2, k, s->uslot, t + n, q + n);
        ds4_kv_cache_reset_seq(g->kv, s->uslot);
    }
    ds4_batch b = {.n = n + nu, .tokens = t, .seq = q};
    int rc = ds4_forward(g->w->m, &b, g->kv, last, nu ? 2 : 1, g->logits);
    free(t);
    free(q);
    if (rc != 0) return -1;
    g->st->prefill_tokens += n + nu;
    s->row = 0;
    s->urow = 1;
    s->ctx_frames = k;
    s->in_frame = 0;
    s->rebuild = 0;
    return sample_code(g, s);
}

/* Queue tokens t[0..k) for s and its twin; each one's last token gets a logits row. */
static void feed(gctx *g, gseq *s, const int *t, int k, int *nb, int *nr) {
    for (int twin = 0; twin < (s->uslot >= 0 ? 2 : 1); twin++) {
        for (int i = 0; i < k; i++) {
            g->tok[*nb] = t[i];
            g->seq[*nb] = twin ? s->uslot : s->slot;
            (*nb)++;
        }
        g->rows[*nr] = *nb - 1;
        *(twin ? &s->urow : &s->row) = *nr;
        (*nr)++;
    }
}

static void record(gseq *s, int token) {
    if (s->rq->tokens) s->rq->tokens[s->n_tok] = token;
    s->n_tok++;
}

/* Run a group of sequences that share the cache (one slot each). */
static int run_group(gctx *g, gseq *S, int n) {
    const ds4_wm_layout *L = g->L;
    for (int i = 0; i < n; i++) {
        gseq *s = &S[i];
        if (s->done) continue;
        if (rebuild(g, s, s->n_done < g->window ? s->n_done : g->window - 1) != 0) return -1;
    }
    for (;;) {
        int nb = 0, nr = 0, active = 0;
        for (int i = 0; i < n; i++) {
            gseq *s = &S[i];
            if (s->done || s->rebuild) continue;
            const int c = s->pending;
            s->rq->out[(size_t)s->n_done * L->cpf + s->in_frame] = c;
            record(s, L->code_offset + c);
            s->pending = -1;
            const int fed[2] = {L->code_offset + c, L->frame};
            if (++s->in_frame < L->cpf) {               /* mid-frame: feed the code, sample the next */
                feed(g, s, fed, 1, &nb, &nr);
                active++;
                continue;
            }
            record(s, L->frame);                        /* frame complete: <|frame|> is forced */
            g->st->forced++;
            s->n_done++;
            s->in_frame = 0;
            if (s->n_done == s->target) { s->done = 1; continue; }
            if (s->ctx_frames + 1 >= g->window) { s->rebuild = 1; continue; }
            feed(g, s, fed, 2, &nb, &nr);
            s->ctx_frames++;
            active++;
        }
        if (nb > 0) {
            ds4_batch b = {.n = nb, .tokens = g->tok, .seq = g->seq};
            if (ds4_forward(g->w->m, &b, g->kv, g->rows, nr, g->logits) != 0) return -1;
            g->st->decode_tokens += nb;
            for (int i = 0; i < n; i++) {
                gseq *s = &S[i];
                if (s->done || s->rebuild || s->pending >= 0) continue;
                if (sample_code(g, s) != 0) return -1;
            }
        }
        int waiting = 0;
        for (int i = 0; i < n; i++) {
            gseq *s = &S[i];
            if (!s->done && s->rebuild) {
                g->st->rebuilds++;
                if (rebuild(g, s, g->keep) != 0) return -1;
                waiting++;
            }
        }
        if (active == 0 && waiting == 0) break;
    }
    return 0;
}

int ds4_wm_generate(const ds4_wm *w, ds4_wm_request *req, int n, const ds4_wm_gen_params *p,
                    ds4_wm_gen_stats *stats) {
    ds4_wm_gen_stats local;
    ds4_wm_gen_stats *st = stats ? stats : &local;
    memset(st, 0, sizeof *st);
    const ds4_wm_layout *L = &w->L;
    const double t0 = ds4_time_s();
    gctx g = {.w = w, .L = L, .st = st, .V = w->m->cfg.vocab_size};
    g.window = p->window > 0 ? p->window : w->s.window;
    g.keep = p->keep > 0 ? p->keep : w->s.keep;
    g.cfg = p->cfg_scale;
    g.uprefix[0] = L->bos;
    g.uprefix[1] = L->video;
    if (!(g.cfg >= 0 && g.cfg <= 100)) {
        ds4_set_error("video generation: guidance scale %g outside [0, 100]", (double)g.cfg);
        return -1;
    }
    if (g.window < 2 || g.keep < 1 || g.keep >= g.window) {
        ds4_set_error("video generation: need window >= 2 and 1 <= keep < window (got %d, %d)", g.window, g.keep);
        return -1;
    }
    if (n <= 0) return 0;
    const int batch = p->batch > 0 && p->batch < n ? p->batch : n;
    gseq *S = ds4_calloc((size_t)n, sizeof *S);
    if (!S) return -1;
    int rc = -1, max_prefix = 0;
    for (int i = 0; i < n; i++) {
        gseq *s = &S[i];
        ds4_wm_request *r = &req[i];
        s->rq = r;
        s->pending = -1;
        if (r->n_given < 0 || r->n_new < 0 || (r->n_given > 0 && !r->given) || !r->out) {
            ds4_set_error("video generation: request %d: bad given/new counts or buffers", i);
            goto out;
        }
        int *cap = NULL;
        size_t nc = 0;
        if (r->caption && r->caption[0] &&
            ds4_tokenizer_encode(w->tok, r->caption, strlen(r->caption), &cap, &nc) != 0)
            goto out;
        if ((int)nc > w->s.caption_max) nc = (size_t)w->s.caption_max;
        s->prefix = ds4_malloc((nc + 2) * sizeof *s->prefix);
        if (!s->prefix) { free(cap); goto out; }
        s->prefix[0] = L->bos;
        if (nc) memcpy(s->prefix + 1, cap, nc * sizeof *cap);
        s->prefix[nc + 1] = L->video;
        s->n_prefix = (int)nc + 2;
        s->uslot = nc > 0 && g.cfg != 1.0f ? 1 : -1;   /* marks a guided request; slot set per group */
        free(cap);
        if (s->n_prefix > max_prefix) max_prefix = s->n_prefix;
        if (r->n_given && r->out != r->given) memmove(r->out, r->given, (size_t)r->n_given * L->cpf * sizeof *r->out);
        for (size_t k = 0; k < (size_t)r->n_given * L->cpf; k++)
            if (r->out[k] < 0 || r->out[k] >= L->n_codes) {
                ds4_set_error("video generation: request %d: given code %d out of range", i, (int)r->out[k]);
                goto out;
            }
        s->n_done = r->n_given;
        s->target = r->n_given + r->n_new;
        s->done = r->n_new == 0;
        ds4_sampler_params sp = p->sampler;
        sp.seed = r->seed;
        if (ds4_sampler_init(&s->smp, &sp, L->n_codes) != 0) goto out;
    }
    const int capacity = max_prefix + g.window * (L->cpf + 1);
    if (capacity > w->m->cfg.max_position_embeddings) {
        ds4_set_error("video generation: prefix %d + %d latent frames x %d tokens exceed "
                      "max_position_embeddings %d (lower --window)", max_prefix, g.window, L->cpf + 1,
                      w->m->cfg.max_position_embeddings);
        goto out;
    }
    int guided = 0;
    for (int i = 0; i < n; i++) guided |= S[i].uslot >= 0;
    g.cap = 4 * batch + 4;
    g.tok = ds4_malloc((size_t)g.cap * sizeof *g.tok);
    g.seq = ds4_malloc((size_t)g.cap * sizeof *g.seq);
    g.rows = ds4_malloc((size_t)g.cap * sizeof *g.rows);
    g.logits = ds4_malloc((size_t)2 * batch * g.V * sizeof *g.logits);
    g.mix = ds4_malloc((size_t)L->n_codes * sizeof *g.mix);
    g.kv = ds4_kv_cache_create(&w->m->cfg, guided ? 2 * batch : batch, capacity);
    if (!g.tok || !g.seq || !g.rows || !g.logits || !g.mix || !g.kv) goto out;
    for (int i0 = 0; i0 < n; i0 += batch) {
        const int nb = DS4_MIN(batch, n - i0);
        for (int i = 0; i < nb; i++) {
            S[i0 + i].slot = i;
            if (S[i0 + i].uslot >= 0) S[i0 + i].uslot = batch + i;
        }
        if (run_group(&g, S + i0, nb) != 0) goto out;
    }
    rc = 0;
out:
    for (int i = 0; i < n; i++) {
        free(S[i].prefix);
        ds4_sampler_free(&S[i].smp);
    }
    free(S);
    free(g.tok); free(g.seq); free(g.rows); free(g.logits); free(g.mix);
    if (g.kv) ds4_kv_cache_free(g.kv);
    st->seconds = ds4_time_s() - t0;
    return rc;
}
