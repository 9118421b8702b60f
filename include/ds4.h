/* ds4.h — the public API of the ds4 engine: configuration, models, tokenizer,
 * training, inference. The CLI, the server and the tests use only this header
 * plus the per-concern internal headers under src/. */
#ifndef DS4_H
#define DS4_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors ------------------------------------------------------------
 * Library functions return 0 (or a non-NULL pointer) on success and -1 (or
 * NULL) on failure, after recording a message that names the file, field and
 * problem. The message is thread-local. Only the CLI exits. */
const char *ds4_error(void);
void ds4_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prefix the current error with context ("loading foo.json: <old message>"). */
void ds4_error_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- configuration (SPEC §1.1, config.json) ---------------------------- */
#define DS4_MAX_LAYERS 64

enum { DS4_SCORE_SIGMOID = 0, DS4_SCORE_SOFTMAX = 1 };

typedef struct ds4_video_config {
    int enabled;          /* 1 when config.json has a "video" object */
    int width, height;    /* frame size in pixels (64) */
    int fps;              /* 24 */
    int patch;            /* spatial pixels per token side (8) */
    int tubelet;          /* frames per token (4) */
    int n_levels;         /* FSQ levels count */
    int levels[8];        /* FSQ levels, e.g. 8,5,5,5 */
    int code_offset;      /* first token id of video codes */
    int hidden;           /* video tokenizer channels */
} ds4_video_config;

typedef struct ds4_config {
    int vocab_size, hidden_size, intermediate_size, moe_intermediate_size;
    int num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim;
    int max_position_embeddings;
    float rope_theta, rms_norm_eps;
    int tie_word_embeddings;
    /* MoE (SPEC §1.2) */
    int first_k_dense_replace;   /* layers < this are dense SwiGLU */
    int n_routed_experts, n_shared_experts, num_experts_per_tok;
    int n_group, topk_group, topk_per_group;
    float routed_scaling_factor;
    int norm_topk_prob;
    int scoring_func;            /* DS4_SCORE_* */
    float router_bias_update_rate, aux_loss_alpha, expert_capacity_factor;
    /* pruning (SPEC §1.3) */
    int n_prune_layers;
    int prune_layers[DS4_MAX_LAYERS];
    float prune_ratio[DS4_MAX_LAYERS];
    float prune_loss_weight;
    /* sparse attention (SPEC §1.4) */
    int index_n_heads, index_head_dim, index_topk;
    int sliding_window;
    int attention_sinks;
    /* special token ids (-1 when absent) */
    int bos_token_id, eos_token_id;
    ds4_video_config video;
} ds4_config;

/* Fill with the documented defaults (a tiny dense model). */
void ds4_config_defaults(ds4_config *c);
/* Parse config.json. Unknown keys and impossible shapes are errors naming the key. */
int ds4_config_load(ds4_config *c, const char *path);
int ds4_config_parse(ds4_config *c, const char *json_text, const char *origin);
int ds4_config_save(const ds4_config *c, const char *path);
int ds4_config_validate(const ds4_config *c);
/* 1 if layer l uses the MoE FFN. */
static inline int ds4_layer_is_moe(const ds4_config *c, int l) {
    return c->n_routed_experts > 0 && l >= c->first_k_dense_replace;
}

/* ---- tokenizer (byte-level BPE, Hugging Face tokenizer.json) ----------- */
typedef struct ds4_tokenizer ds4_tokenizer;

/* vocab_size counts everything: 256 byte tokens, the learned merges, and the
 * 6 special tokens appended last (<|bos|> <|eos|> <|video|> <|eov|> <|frame|> <|pad|>). */
ds4_tokenizer *ds4_tokenizer_train(const char *text, size_t len, int vocab_size,
                                   int verbose);
ds4_tokenizer *ds4_tokenizer_load(const char *path);
int  ds4_tokenizer_save(const ds4_tokenizer *t, const char *path);
void ds4_tokenizer_free(ds4_tokenizer *t);
int  ds4_tokenizer_vocab_size(const ds4_tokenizer *t);   /* incl. specials */
/* Encode raw bytes (special-token text is NOT interpreted: it is plain text).
 * *ids is malloc'd; caller frees. */
int  ds4_tokenizer_encode(const ds4_tokenizer *t, const char *text, size_t len,
                          int **ids, size_t *n_ids);
/* Bytes of one token (special tokens give their literal text). */
int  ds4_tokenizer_token_bytes(const ds4_tokenizer *t, int id,
                               const char **bytes, size_t *len);
/* Decode ids into a malloc'd buffer (NUL-terminated, *len excludes NUL). */
int  ds4_tokenizer_decode(const ds4_tokenizer *t, const int *ids, size_t n,
                          char **out, size_t *len);
/* Id of a special token such as "<|bos|>", or -1. */
int  ds4_tokenizer_special(const ds4_tokenizer *t, const char *name);

/* Token shards: "DS4TOK01", uint64 LE count, then count uint32 LE ids. */
int ds4_shard_write(const char *path, const int *ids, size_t n);
int ds4_shard_read(const char *path, int **ids, size_t *n);

#ifdef __cplusplus
}
#endif
#endif
