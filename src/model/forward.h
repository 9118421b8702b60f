/* forward.h — inference forward over a token batch with a KV cache. The same
 * call serves prefill (many tokens of one sequence), decode (one token of many
 * sequences: continuous batching) and anything in between. */
#ifndef DS4_FORWARD_H
#define DS4_FORWARD_H

#include "model/model.h"
#include "model/prune.h"

/* KV cache per layer: rows appended per sequence. With pruning a layer skips
 * dropped tokens, so lengths differ per layer and each row records its
 * original position. Kd = num_key_value_heads * head_dim. */
typedef struct ds4_decode_scratch ds4_decode_scratch;
typedef struct ds4_kv_cache {
    int n_layers, n_seq, capacity, kv_dim;
    float *k[DS4_MAX_LAYERS];    /* [n_seq, capacity, Kd] */
    float *v[DS4_MAX_LAYERS];    /* [n_seq, capacity, Kd] */
    int   *pos[DS4_MAX_LAYERS];  /* [n_seq, capacity] original position of each row */
    int   *len[DS4_MAX_LAYERS];  /* [n_seq] rows filled */
    int   *next_pos;             /* [n_seq] next position to be fed */
    /* lightning indexer keys (index_topk > 0, else NULL / 0), row j of a
     * sequence is its j-th key as for k/v, stored lane-major in blocks */
    int    ki_dim;               /* Di = index_head_dim */
    size_t ki_stride;            /* floats per sequence: ds4_indexer_keys_floats(capacity, Di) */
    float *ki[DS4_MAX_LAYERS];   /* [n_seq, ki_stride]: each sequence's keys blocked as in indexer.h */
    /* pruned layers: inference counters added by every ds4_forward call
     * (tokens routed, kept, and agreement of the causal rule with top-k
     * membership, scored for batch segments that start at position 0).
     * Cumulative; clear with ds4_kv_cache_reset_stats. */
    ds4_prune_counts prune[DS4_MAX_LAYERS];
    struct ds4_decode_scratch *decode;   /* batch-1 decode buffers (model/decode.c), lazily made */
} ds4_kv_cache;

ds4_kv_cache *ds4_kv_cache_create(const ds4_config *c, int n_seq, int capacity);
void   ds4_kv_cache_free(ds4_kv_cache *kv);
void   ds4_kv_cache_reset_seq(ds4_kv_cache *kv, int seq);
/* Bytes of the filled rows: K, V (and indexer keys) of every layer. */
size_t ds4_kv_cache_bytes_used(const ds4_kv_cache *kv);
void   ds4_kv_cache_reset_stats(ds4_kv_cache *kv);

/* A batch of n tokens. Tokens of one sequence are contiguous and in order,
 * and the first of them has position kv->next_pos[seq]. */
typedef struct ds4_batch {
    int n;
    const int *tokens;   /* [n] */
    const int *seq;      /* [n] cache slot of each token */
} ds4_batch;

/* Runs the model, appends K/V to the cache, advances next_pos, and writes
 * logits [n_out, V] for batch rows out_rows[0..n_out) (out_rows == NULL:
 * all n rows, n_out ignored). Fails (without touching the cache) if a
 * sequence would exceed the cache capacity. */
int ds4_forward(const ds4_model *m, const ds4_batch *b, ds4_kv_cache *kv,
                const int *out_rows, int n_out, float *logits);

/* Convenience: logits [T, V] for one sequence of ids from position 0 (no cache kept). */
int ds4_forward_logits(const ds4_model *m, const int *ids, int T, float *logits);

#endif
