/* infer.h — text inference on top of ds4_forward: token sampling, streaming
 * text with stop strings, generation sessions (one sequence or many in one
 * batch, for the server), and validation loss / perplexity. */
#ifndef DS4_INFER_H
#define DS4_INFER_H

#include <stddef.h>
#include <stdint.h>
#include "ds4.h"
#include "util/util.h"
#include "model/forward.h"

/* ---- sampler (sampler.c) ------------------------------------------------
 * Filters are applied in this fixed order, each on the distribution the
 * previous one left (renormalised):
 *   1. temperature: z = logits / temperature (temperature <= 0: greedy argmax,
 *      the other fields are then ignored and no random number is drawn);
 *   2. top-k:  keep the k largest z (k <= 0 or k >= V: off);
 *   3. top-p:  keep the smallest prefix of the sorted survivors whose
 *      probability mass reaches top_p (top_p >= 1: off);
 *   4. min-p:  keep tokens with p >= min_p * p_max (min_p <= 0: off).
 * Then one token is drawn from what is left, renormalised. Ties in greedy
 * pick the lowest id. Each sampler has its own RNG, so a request is
 * reproducible from its seed whatever else runs in the same batch. */
typedef struct ds4_sampler_params {
    float    temperature;   /* 0 = greedy (default 0.8) */
    int      top_k;         /* 0 = off (default 0) */
    float    top_p;         /* 1 = off (default 1) */
    float    min_p;         /* 0 = off (default 0) */
    uint64_t seed;          /* default 42 */
} ds4_sampler_params;

typedef struct ds4_cand { float v; int id; } ds4_cand;   /* value, token id */

typedef struct ds4_sampler {
    ds4_sampler_params p;
    ds4_rng   rng;
    int       cap;          /* vocab size the scratch was made for */
    ds4_cand *cand;         /* [cap] surviving candidates: weight, id */
    float    *w;            /* [cap rounded up to 8] weights exp((z - z_max)) */
    int       dense;        /* last filter kept every token: draw from w */
} ds4_sampler;

void ds4_sampler_params_default(ds4_sampler_params *p);
/* Checks ranges (top_p in (0,1], min_p in [0,1], finite temperature >= 0). */
int  ds4_sampler_params_validate(const ds4_sampler_params *p);
int  ds4_sampler_init(ds4_sampler *s, const ds4_sampler_params *p, int vocab);
void ds4_sampler_free(ds4_sampler *s);
/* Draw one token id from logits [V]. Returns the id or -1 (NaN logits, all
 * -inf, V larger than the scratch). */
int  ds4_sampler_sample(ds4_sampler *s, const float *logits, int V);
/* The distribution the sampler would draw from: writes n (returned) token ids
 * and their probabilities (summing to 1) into ids[V], probs[V]. Greedy gives
 * n = 1. Draws no random number. -1 on error. */
int  ds4_sampler_dist(ds4_sampler *s, const float *logits, int V, int *ids, float *probs);

/* ---- streaming text with stop strings (stream.c) -------------------------
 * Bytes of generated tokens go in; text safe to show comes out. Never emits
 * a piece of a stop string (a pending suffix that is a prefix of any stop
 * string is held back), nor (where avoidable) half a UTF-8 character: an
 * incomplete sequence at the end is held until it completes. When a stop
 * string appears, the text before it is emitted and the stream stops; the
 * stop string itself is never emitted. With several stop strings, the one
 * that completes first wins (as if bytes came one at a time), so the output
 * does not depend on how the text was split into tokens. */
#define DS4_MAX_STOP 8

typedef struct ds4_stream {
    int     n_stop;
    char   *stop[DS4_MAX_STOP];      /* owned copies */
    size_t  stop_len[DS4_MAX_STOP];
    char   *buf;                     /* [cap] pending bytes, not yet emitted */
    size_t  len, cap;
    size_t  consumed;                /* bytes emitted by the last call, dropped on the next */
    int     stopped;                 /* 1 once a stop string was seen */
    int     stop_index;              /* which one, or -1 */
} ds4_stream;

/* Empty stop strings are ignored; more than DS4_MAX_STOP is an error. */
int  ds4_stream_init(ds4_stream *s, const char *const *stops, int n_stop);
void ds4_stream_free(ds4_stream *s);
/* Append bytes; *out and *out_len receive the text that may be shown now (valid
 * until the next call). Returns 1 when a stop string completed (the text
 * before it is in *out; later pushes emit nothing), 0 otherwise, -1 on OOM. */
int  ds4_stream_push(ds4_stream *s, const char *bytes, size_t n,
                     const char **out, size_t *out_len);
/* End of generation: everything still held back (unless stopped). */
int  ds4_stream_flush(ds4_stream *s, const char **out, size_t *out_len);
/* Length of the incomplete UTF-8 sequence at the end of [p, p+n), 0 if none. */
size_t ds4_utf8_incomplete_tail(const char *p, size_t n);

/* ---- generation (generate.c) -------------------------------------------- */
enum {
    DS4_FINISH_NONE = 0,     /* still running */
    DS4_FINISH_EOS,          /* end-of-sequence token sampled */
    DS4_FINISH_LENGTH,       /* max_tokens generated */
    DS4_FINISH_STOP,         /* a stop string appeared */
    DS4_FINISH_CONTEXT,      /* the cache (context) is full */
    DS4_FINISH_ABORT,        /* the text callback asked to stop */
    DS4_FINISH_ERROR,
};
const char *ds4_finish_name(int finish);   /* "eos", "length", "stop", ... */

typedef struct ds4_gen_params {
    ds4_sampler_params sampler;
    int max_tokens;                  /* tokens to generate at most (default 128) */
    int ctx;                         /* requested context; the cache holds
                                      * min(ctx, max_position_embeddings) tokens
                                      * (0 = max_position_embeddings) */
    int add_bos;                     /* 1 (default): prepend <|bos|> when the
                                      * config or tokenizer defines one */
    int ignore_eos;                  /* 1: do not stop on the eos token */
    int n_stop;
    const char *stop[DS4_MAX_STOP];  /* stop strings (not copied: keep alive
                                      * until the sequence is initialised) */
} ds4_gen_params;

void ds4_gen_params_default(ds4_gen_params *p);

/* Called with each piece of text as soon as it is safe to show. Return
 * nonzero to stop the sequence (finish = DS4_FINISH_ABORT). */
typedef int (*ds4_text_fn)(const char *text, size_t len, void *user);

typedef struct ds4_gen_stats {
    int    prompt_tokens;            /* incl. <|bos|> */
    int    generated_tokens;         /* sampled tokens, incl. a final eos */
    int    finish;                   /* DS4_FINISH_* */
    double prefill_s, decode_s;
    double prefill_tok_s, decode_tok_s;
} ds4_gen_stats;

/* One sequence: its cache slot, tokens, sampler and stop state. */
typedef struct ds4_seq {
    int   slot;                      /* cache slot, -1 when not attached */
    int  *tokens;                    /* [cap_tokens] prompt then generated ids */
    int   n_tokens, cap_tokens;
    int   n_prompt;
    int   n_fed;                     /* tokens already in the cache */
    int   n_generated, max_tokens;
    int   eos_id;                    /* -1: none */
    int   finish;                    /* DS4_FINISH_* */
    ds4_sampler sampler;
    ds4_stream  stream;
    ds4_text_fn on_text;
    void *user;
    double t_start, t_prefill_done, t_end;
} ds4_seq;

/* A model, its tokenizer and a KV cache with n_slots sequence slots. */
typedef struct ds4_engine {
    const ds4_model *m;
    const ds4_tokenizer *tok;        /* may be NULL (token-level use only) */
    ds4_kv_cache *kv;
    int    n_slots, capacity;        /* slots and tokens per slot */
    int   *slot_used;                /* [n_slots] */
    int    max_batch_tokens;         /* tokens per step, 0 = no bound: decode
                                      * tokens always go in, prompt chunks fill
                                      * what is left */
    int    bos_id, eos_id;           /* resolved from config, then tokenizer */
    /* per-step scratch, grown as needed */
    int   *b_tokens, *b_seq, *b_rows;
    int    b_cap;
    float *logits;                   /* [rows_cap, V] */
    int    rows_cap;
} ds4_engine;

/* capacity: requested context per slot (0 = max_position_embeddings); the
 * engine uses min(capacity, max_position_embeddings). */
ds4_engine *ds4_engine_create(const ds4_model *m, const ds4_tokenizer *tok,
                              int n_slots, int capacity);
void ds4_engine_free(ds4_engine *e);

/* Initialise a sequence from prompt ids (copied) and attach it to a free
 * cache slot. The prompt must be non-empty and fit the capacity. */
int  ds4_seq_init(ds4_engine *e, ds4_seq *s, const int *prompt, int n_prompt,
                  const ds4_gen_params *p, ds4_text_fn on_text, void *user);
/* Same from text: tokenizes, prepends <|bos|> when p->add_bos. */
int  ds4_seq_init_text(ds4_engine *e, ds4_seq *s, const char *prompt,
                       const ds4_gen_params *p, ds4_text_fn on_text, void *user);
/* Free the sequence's memory and release its slot. */
void ds4_seq_release(ds4_engine *e, ds4_seq *s);
void ds4_seq_stats(const ds4_seq *s, ds4_gen_stats *st);

/* One forward step over every unfinished sequence in seqs: the remaining
 * prompt of prefilling sequences (bounded by max_batch_tokens) and the last
 * sampled token of decoding ones go into one ds4_batch; a token is then
 * sampled for every sequence whose prompt is fully in the cache, and its
 * text is streamed. Returns the number of sequences still running, or -1
 * (the failing sequences get DS4_FINISH_ERROR). */
int  ds4_engine_step(ds4_engine *e, ds4_seq **seqs, int n);

/* Whole generation for one prompt: prefill in one batched forward call, then
 * decode token by token until eos, max_tokens, a stop string, the context
 * limit, or the callback says stop. The <|bos|> token is prepended when
 * p->add_bos and the config (bos_token_id) or the tokenizer ("<|bos|>")
 * defines one. stats may be NULL. */
int  ds4_generate(const ds4_model *m, const ds4_tokenizer *tok, const char *prompt,
                  const ds4_gen_params *p, ds4_text_fn on_text, void *user,
                  ds4_gen_stats *stats);

/* ---- evaluation (eval.c) -------------------------------------------------- */
typedef struct ds4_eval_result {
    double loss;           /* mean cross-entropy, nats per predicted token */
    double ppl;            /* exp(loss) */
    long   tokens;         /* predicted tokens counted */
    int    windows;
    double seconds, tok_s;
} ds4_eval_result;

/* Validation loss of a token stream ids[n]: windows start every T tokens;
 * a window feeds ids[s .. s+T) from position 0 (fresh cache slot) and
 * predicts ids[s+1 .. s+T+1), so every token except the first is predicted
 * exactly once (the last window may be shorter). T <= 0: default
 * min(512, max_position_embeddings); T larger than that is an error.
 * batch > 1 runs that many windows per ds4_forward call. Cross-entropy:
 * exponentials in float (vectorised), sums and logs in double. */
int ds4_eval_tokens(const ds4_model *m, const int *ids, size_t n, int T, int batch,
                    ds4_eval_result *r);

/* ---- model directories (load.c) ------------------------------------------
 * Open DIR/config.json + DIR/model.safetensors, and DIR/tokenizer.json when
 * tok != NULL, with an error naming the missing file. */
int ds4_open_model_dir(const char *dir, ds4_model **m, ds4_tokenizer **tok);

#endif
