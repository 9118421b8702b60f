/* config.c — config.json (SPEC §1.1) <-> struct ds4_config: documented
 * defaults, a strict parser (unknown keys, wrong JSON types and impossible
 * shapes are errors naming the key), a validator and an atomic pretty writer.
 *
 * Defaults (a tiny dense model). "absent" = key missing or JSON null.
 *
 *   key                        default     notes
 *   vocab_size                 4096
 *   hidden_size                256
 *   intermediate_size          768         dense SwiGLU width
 *   moe_intermediate_size      256         per-expert SwiGLU width
 *   num_hidden_layers          4           <= DS4_MAX_LAYERS (64)
 *   num_attention_heads        4
 *   num_key_value_heads        derived     num_attention_heads when absent (as in HF
 *                                          Llama; 4 with the default heads); must divide it
 *   head_dim                   derived     hidden_size / num_attention_heads when absent
 *   max_position_embeddings    1024
 *   rope_theta                 10000
 *   rms_norm_eps               1e-5
 *   tie_word_embeddings        false
 *   first_k_dense_replace      derived     when absent: num_hidden_layers if
 *                                          n_routed_experts == 0, else 1
 *   n_routed_experts           0           0 = dense model
 *   n_shared_experts           0
 *   num_experts_per_tok        0
 *   n_group                    1
 *   topk_group                 1
 *   topk_per_group             0           0 = DeepSeek-V3 flat top-k inside chosen groups
 *   routed_scaling_factor      1.0
 *   norm_topk_prob             true
 *   scoring_func               "sigmoid"   or "softmax"
 *   router_bias_update_rate    0           0 = load bias update off
 *   aux_loss_alpha             0
 *   expert_capacity_factor     0           0 = dropless
 *   prune_layers               []          layer indices
 *   prune_ratio                []          same length as prune_layers, each in [0, 1)
 *   prune_loss_weight          0.1         router BCE weight (SPEC §1.3)
 *   index_n_heads              0
 *   index_head_dim             0
 *   index_topk                 0           0 = no indexer
 *   sliding_window             0           0 = no window
 *   attention_sinks            false
 *   bos_token_id, eos_token_id -1          absent
 *   model_type                 -           must be "ds4" when present; saved as "ds4"
 *   architectures              -           array, ignored; saved as ["DS4ForCausalLM"]
 *   video                      absent      video.enabled = 0; when the object is present:
 *     width, height            64, 64      pixels, multiples of patch
 *     fps                      24
 *     patch                    8           pixels per token side
 *     tubelet                  4           frames per token
 *     levels                   [8,5,5,5]   FSQ levels, 1..8 entries, each >= 3 (L = 2 is undefined in SPEC FSQ)
 *     code_offset              derived     vocab_size - prod(levels) when absent (codes
 *                                          take the last ids of the vocabulary)
 *     hidden                   64          video tokenizer channels
 */
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "ds4.h"
#include "util/util.h"

void ds4_config_defaults(ds4_config *c) {
    memset(c, 0, sizeof *c);
    c->vocab_size = 4096;
    c->hidden_size = 256;
    c->intermediate_size = 768;
    c->moe_intermediate_size = 256;
    c->num_hidden_layers = 4;
    c->num_attention_heads = 4;
    c->num_key_value_heads = 4;
    c->head_dim = 64;
    c->max_position_embeddings = 1024;
    c->rope_theta = 10000.0f;
    c->rms_norm_eps = 1e-5f;
    c->tie_word_embeddings = 0;
    c->first_k_dense_replace = 4;
    c->n_routed_experts = 0;
    c->n_shared_experts = 0;
    c->num_experts_per_tok = 0;
    c->n_group = 1;
    c->topk_group = 1;
    c->topk_per_group = 0;
    c->routed_scaling_factor = 1.0f;
    c->norm_topk_prob = 1;
    c->scoring_func = DS4_SCORE_SIGMOID;
    c->router_bias_update_rate = 0.0f;
    c->aux_loss_alpha = 0.0f;
    c->expert_capacity_factor = 0.0f;
    c->n_prune_layers = 0;
    c->prune_loss_weight = 0.1f;
    c->index_n_heads = 0;
    c->index_head_dim = 0;
    c->index_topk = 0;
    c->sliding_window = 0;
    c->attention_sinks = 0;
    c->bos_token_id = -1;
    c->eos_token_id = -1;
    ds4_video_config *v = &c->video;
    v->enabled = 0;
    v->width = 64;
    v->height = 64;
    v->fps = 24;
    v->patch = 8;
    v->tubelet = 4;
    v->n_levels = 4;
    v->levels[0] = 8; v->levels[1] = 5; v->levels[2] = 5; v->levels[3] = 5;
    v->code_offset = 0;
    v->hidden = 64;
}

/* ---- the key table ------------------------------------------------------ */

typedef enum { K_INT, K_FLOAT, K_BOOL, K_TOKEN, K_SPECIAL } key_kind;

typedef struct { const char *name; key_kind kind; size_t off; } key_def;

#define KI(f) {#f, K_INT, offsetof(ds4_config, f)}
#define KF(f) {#f, K_FLOAT, offsetof(ds4_config, f)}
#define KB(f) {#f, K_BOOL, offsetof(ds4_config, f)}
#define KT(f) {#f, K_TOKEN, offsetof(ds4_config, f)}
#define KS(n) {n, K_SPECIAL, 0}

/* In the order ds4_config_save writes them. */
static const key_def k_keys[] = {
    KS("model_type"), KS("architectures"),
    KI(vocab_size), KI(hidden_size), KI(intermediate_size), KI(moe_intermediate_size),
    KI(num_hidden_layers), KI(num_attention_heads), KI(num_key_value_heads), KI(head_dim),
    KI(max_position_embeddings), KF(rope_theta), KF(rms_norm_eps), KB(tie_word_embeddings),
    KI(first_k_dense_replace), KI(n_routed_experts), KI(n_shared_experts),
    KI(num_experts_per_tok), KI(n_group), KI(topk_group), KI(topk_per_group),
    KF(routed_scaling_factor), KB(norm_topk_prob), KS("scoring_func"),
    KF(router_bias_update_rate), KF(aux_loss_alpha), KF(expert_capacity_factor),
    KS("prune_layers"), KS("prune_ratio"), KF(prune_loss_weight),
    KI(index_n_heads), KI(index_head_dim), KI(index_topk), KI(sliding_window),
    KB(attention_sinks), KT(bos_token_id), KT(eos_token_id), KS("video"),
};
#define N_KEYS ((int)(sizeof k_keys / sizeof k_keys[0]))

static const char *json_kind(const cJSON *j) {
    if (cJSON_IsObject(j)) return "an object";
    if (cJSON_IsArray(j)) return "an array";
    if (cJSON_IsString(j)) return "a string";
    if (cJSON_IsNumber(j)) return "a number";
    if (cJSON_IsBool(j)) return "a boolean";
    if (cJSON_IsNull(j)) return "null";
    return "an invalid value";
}

static int get_int(const char *origin, const char *key, const cJSON *j, int *out) {
    if (!cJSON_IsNumber(j)) {
        ds4_set_error("%s: key '%s' must be an integer, got %s", origin, key, json_kind(j));
        return -1;
    }
    double v = j->valuedouble;
    if (!isfinite(v) || v != floor(v) || v < -2147483648.0 || v > 2147483647.0) {
        ds4_set_error("%s: key '%s' must be an integer, got %g", origin, key, v);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int get_float(const char *origin, const char *key, const cJSON *j, float *out) {
    if (!cJSON_IsNumber(j)) {
        ds4_set_error("%s: key '%s' must be a number, got %s", origin, key, json_kind(j));
        return -1;
    }
    double v = j->valuedouble;
    if (!isfinite(v) || fabs(v) > FLT_MAX) {
        ds4_set_error("%s: key '%s': %g is not a finite float", origin, key, v);
        return -1;
    }
    *out = (float)v;
    return 0;
}

static int get_bool(const char *origin, const char *key, const cJSON *j, int *out) {
    if (!cJSON_IsBool(j)) {
        ds4_set_error("%s: key '%s' must be true or false, got %s", origin, key, json_kind(j));
        return -1;
    }
    *out = cJSON_IsTrue(j) ? 1 : 0;
    return 0;
}

/* Reject a key that appears twice among the earlier children of parent. */
static int check_dup(const char *origin, const char *prefix, const cJSON *parent,
                     const cJSON *j) {
    for (const cJSON *p = parent->child; p && p != j; p = p->next) {
        if (strcmp(p->string, j->string) == 0) {
            ds4_set_error("%s: key '%s%s' appears twice", origin, prefix, j->string);
            return -1;
        }
    }
    return 0;
}

static int parse_video(ds4_config *c, const cJSON *obj, const char *origin, int *has_offset) {
    ds4_video_config *v = &c->video;
    if (!cJSON_IsObject(obj)) {
        ds4_set_error("%s: key 'video' must be an object, got %s", origin, json_kind(obj));
        return -1;
    }
    v->enabled = 1;
    *has_offset = 0;
    static const struct { const char *name; size_t off; } ints[] = {
        {"width", offsetof(ds4_video_config, width)},
        {"height", offsetof(ds4_video_config, height)},
        {"fps", offsetof(ds4_video_config, fps)},
        {"patch", offsetof(ds4_video_config, patch)},
        {"tubelet", offsetof(ds4_video_config, tubelet)},
        {"code_offset", offsetof(ds4_video_config, code_offset)},
        {"hidden", offsetof(ds4_video_config, hidden)},
    };
    for (const cJSON *f = obj->child; f; f = f->next) {
        char key[128];
        snprintf(key, sizeof key, "video.%s", f->string);
        if (check_dup(origin, "video.", obj, f) != 0) return -1;
        if (cJSON_IsNull(f)) continue;
        if (strcmp(f->string, "levels") == 0) {
            if (!cJSON_IsArray(f)) {
                ds4_set_error("%s: key '%s' must be an array of integers, got %s", origin, key,
                              json_kind(f));
                return -1;
            }
            int n = cJSON_GetArraySize(f);
            if (n < 1 || n > 8) {
                ds4_set_error("%s: key '%s' has %d entries, expected 1 to 8", origin, key, n);
                return -1;
            }
            int i = 0;
            for (const cJSON *x = f->child; x; x = x->next, i++)
                if (get_int(origin, key, x, &v->levels[i]) != 0) return -1;
            for (; i < 8; i++) v->levels[i] = 0;
            v->n_levels = n;
            continue;
        }
        int found = 0;
        for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
            if (strcmp(f->string, ints[i].name) == 0) {
                if (get_int(origin, key, f, (int *)((char *)v + ints[i].off)) != 0) return -1;
                if (strcmp(f->string, "code_offset") == 0) *has_offset = 1;
                found = 1;
                break;
            }
        }
        if (!found) { ds4_set_error("%s: unknown key '%s'", origin, key); return -1; }
    }
    return 0;
}

static int parse_list(const char *origin, const char *key, const cJSON *j, int is_float,
                      ds4_config *c, int *count) {
    if (!cJSON_IsArray(j)) {
        ds4_set_error("%s: key '%s' must be an array of %s, got %s", origin, key,
                      is_float ? "numbers" : "integers", json_kind(j));
        return -1;
    }
    int n = cJSON_GetArraySize(j);
    if (n > DS4_MAX_LAYERS) {
        ds4_set_error("%s: key '%s' has %d entries, at most %d", origin, key, n, DS4_MAX_LAYERS);
        return -1;
    }
    int i = 0;
    for (const cJSON *x = j->child; x; x = x->next, i++) {
        int rc = is_float ? get_float(origin, key, x, &c->prune_ratio[i])
                          : get_int(origin, key, x, &c->prune_layers[i]);
        if (rc != 0) return -1;
    }
    *count = n;
    return 0;
}

static int line_of(const char *text, const char *at, int *col) {
    int line = 1;
    const char *ls = text;
    for (const char *p = text; p < at && *p; p++)
        if (*p == '\n') { line++; ls = p + 1; }
    *col = (int)(at - ls) + 1;
    return line;
}

int ds4_config_parse(ds4_config *c, const char *json_text, const char *origin) {
    if (!origin) origin = "config";
    ds4_config_defaults(c);
    if (!json_text) { ds4_set_error("%s: no JSON text", origin); return -1; }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(json_text, &end, 1);
    if (!root) {
        int col, line = line_of(json_text, end ? end : json_text, &col);
        ds4_set_error("%s: not valid JSON (line %d, column %d)", origin, line, col);
        return -1;
    }
    int rc = -1;
    int has_head_dim = 0, has_first_k = 0, has_kv = 0, has_offset = 0;
    int n_layers_list = -1, n_ratio_list = -1;
    if (!cJSON_IsObject(root)) {
        ds4_set_error("%s: config must be a JSON object, got %s", origin, json_kind(root));
        goto done;
    }
    for (const cJSON *f = root->child; f; f = f->next) {
        const char *key = f->string;
        if (check_dup(origin, "", root, f) != 0) goto done;
        const key_def *k = NULL;
        for (int i = 0; i < N_KEYS; i++)
            if (strcmp(key, k_keys[i].name) == 0) { k = &k_keys[i]; break; }
        if (!k) { ds4_set_error("%s: unknown key '%s'", origin, key); goto done; }
        if (cJSON_IsNull(f)) continue;   /* null = absent: the default stands */
        char *field = (char *)c + k->off;
        switch (k->kind) {
        case K_INT:
            if (get_int(origin, key, f, (int *)field) != 0) goto done;
            if (strcmp(key, "head_dim") == 0) has_head_dim = 1;
            if (strcmp(key, "first_k_dense_replace") == 0) has_first_k = 1;
            if (strcmp(key, "num_key_value_heads") == 0) has_kv = 1;
            break;
        case K_TOKEN:
            if (get_int(origin, key, f, (int *)field) != 0) goto done;
            break;
        case K_FLOAT:
            if (get_float(origin, key, f, (float *)field) != 0) goto done;
            break;
        case K_BOOL:
            if (get_bool(origin, key, f, (int *)field) != 0) goto done;
            break;
        case K_SPECIAL:
            if (strcmp(key, "model_type") == 0) {
                if (!cJSON_IsString(f) || strcmp(f->valuestring, "ds4") != 0) {
                    ds4_set_error("%s: key 'model_type' must be \"ds4\", got %s%s%s", origin,
                                  cJSON_IsString(f) ? "\"" : json_kind(f),
                                  cJSON_IsString(f) ? f->valuestring : "",
                                  cJSON_IsString(f) ? "\"" : "");
                    goto done;
                }
            } else if (strcmp(key, "architectures") == 0) {
                if (!cJSON_IsArray(f)) {
                    ds4_set_error("%s: key 'architectures' must be an array, got %s", origin,
                                  json_kind(f));
                    goto done;
                }
            } else if (strcmp(key, "scoring_func") == 0) {
                if (cJSON_IsString(f) && strcmp(f->valuestring, "sigmoid") == 0)
                    c->scoring_func = DS4_SCORE_SIGMOID;
                else if (cJSON_IsString(f) && strcmp(f->valuestring, "softmax") == 0)
                    c->scoring_func = DS4_SCORE_SOFTMAX;
                else {
                    ds4_set_error("%s: key 'scoring_func' must be \"sigmoid\" or \"softmax\", "
                                  "got %s%s%s", origin, cJSON_IsString(f) ? "\"" : json_kind(f),
                                  cJSON_IsString(f) ? f->valuestring : "",
                                  cJSON_IsString(f) ? "\"" : "");
                    goto done;
                }
            } else if (strcmp(key, "prune_layers") == 0) {
                if (parse_list(origin, key, f, 0, c, &n_layers_list) != 0) goto done;
            } else if (strcmp(key, "prune_ratio") == 0) {
                if (parse_list(origin, key, f, 1, c, &n_ratio_list) != 0) goto done;
            } else if (strcmp(key, "video") == 0) {
                if (parse_video(c, f, origin, &has_offset) != 0) goto done;
            }
            break;
        }
    }
    if (n_layers_list >= 0 || n_ratio_list >= 0) {
        if (n_layers_list != n_ratio_list) {
            if (n_ratio_list < 0)
                ds4_set_error("%s: key 'prune_ratio' is missing but prune_layers has %d entries",
                              origin, n_layers_list);
            else if (n_layers_list < 0)
                ds4_set_error("%s: key 'prune_layers' is missing but prune_ratio has %d entries",
                              origin, n_ratio_list);
            else
                ds4_set_error("%s: key 'prune_ratio' has %d entries but prune_layers has %d",
                              origin, n_ratio_list, n_layers_list);
            goto done;
        }
        c->n_prune_layers = n_layers_list;
    }
    /* derived defaults, only for keys that were absent */
    if (!has_kv) c->num_key_value_heads = c->num_attention_heads;
    if (!has_head_dim)
        c->head_dim = c->num_attention_heads > 0 ? c->hidden_size / c->num_attention_heads : 0;
    if (!has_first_k)
        c->first_k_dense_replace = c->n_routed_experts == 0 ? c->num_hidden_layers : 1;
    if (c->video.enabled && !has_offset) {
        long long codes = 1;
        for (int i = 0; i < c->video.n_levels; i++) {
            codes *= c->video.levels[i] > 0 ? c->video.levels[i] : 1;
            if (codes > (1LL << 31)) break;
        }
        long long off = (long long)c->vocab_size - codes;
        c->video.code_offset = off < -2147483647LL ? -2147483647 : (int)off;
    }
    if (ds4_config_validate(c) != 0) {
        ds4_error_prefix("%s", origin);
        goto done;
    }
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

int ds4_config_load(ds4_config *c, const char *path) {
    char *text = NULL;
    if (ds4_read_file(path, &text, NULL) != 0) { ds4_config_defaults(c); return -1; }
    int rc = ds4_config_parse(c, text, path);
    free(text);
    return rc;
}

/* ---- validation --------------------------------------------------------- */

#define FAIL(...) do { ds4_set_error(__VA_ARGS__); return -1; } while (0)
#define POS(f) do { if (c->f <= 0) FAIL("key '" #f "' must be positive, got %d", c->f); } while (0)
#define NONNEG(f) do { if (c->f < 0) FAIL("key '" #f "' must be >= 0, got %d", c->f); } while (0)
#define FPOS(f) do { if (!(isfinite(c->f) && c->f > 0)) \
    FAIL("key '" #f "' must be a positive finite number, got %g", (double)c->f); } while (0)
#define FNONNEG(f) do { if (!(isfinite(c->f) && c->f >= 0)) \
    FAIL("key '" #f "' must be a finite number >= 0, got %g", (double)c->f); } while (0)
#define BOOL01(f) do { if (c->f != 0 && c->f != 1) \
    FAIL("key '" #f "' must be true or false, got %d", c->f); } while (0)

static int validate_video(const ds4_config *c) {
    const ds4_video_config *v = &c->video;
    if (v->enabled != 0 && v->enabled != 1) FAIL("key 'video': enabled must be 0 or 1");
    if (!v->enabled) return 0;
    if (v->width <= 0) FAIL("key 'video.width' must be positive, got %d", v->width);
    if (v->height <= 0) FAIL("key 'video.height' must be positive, got %d", v->height);
    if (v->fps <= 0) FAIL("key 'video.fps' must be positive, got %d", v->fps);
    if (v->patch <= 0) FAIL("key 'video.patch' must be positive, got %d", v->patch);
    if (v->tubelet <= 0) FAIL("key 'video.tubelet' must be positive, got %d", v->tubelet);
    if (v->hidden <= 0) FAIL("key 'video.hidden' must be positive, got %d", v->hidden);
    if (v->width % v->patch != 0)
        FAIL("key 'video.width' (%d) must be a multiple of video.patch (%d)", v->width, v->patch);
    if (v->height % v->patch != 0)
        FAIL("key 'video.height' (%d) must be a multiple of video.patch (%d)", v->height,
             v->patch);
    if (v->n_levels < 1 || v->n_levels > 8)
        FAIL("key 'video.levels' must have 1 to 8 entries, got %d", v->n_levels);
    long long codes = 1;
    for (int i = 0; i < v->n_levels; i++) {
        if (v->levels[i] < 3 || v->levels[i] > 65536)
            FAIL("key 'video.levels': entry %d is %d, must be in [3, 65536] (SPEC FSQ: L = 2 makes atanh(offset / half) undefined)", i, v->levels[i]);
        codes *= v->levels[i];
        if (codes > c->vocab_size)
            FAIL("key 'video.levels': %lld+ codes do not fit in vocab_size %d", codes,
                 c->vocab_size);
    }
    if (v->code_offset < 0 || v->code_offset + codes > c->vocab_size)
        FAIL("key 'video.code_offset': codes [%d, %lld) must lie inside [0, vocab_size %d)",
             v->code_offset, v->code_offset + codes, c->vocab_size);
    return 0;
}

int ds4_config_validate(const ds4_config *c) {
    POS(vocab_size);
    POS(hidden_size);
    POS(intermediate_size);
    POS(num_hidden_layers);
    if (c->num_hidden_layers > DS4_MAX_LAYERS)
        FAIL("key 'num_hidden_layers' is %d, at most %d supported", c->num_hidden_layers,
             DS4_MAX_LAYERS);
    POS(num_attention_heads);
    POS(num_key_value_heads);
    if (c->num_attention_heads % c->num_key_value_heads != 0)
        FAIL("key 'num_key_value_heads': num_attention_heads (%d) must be a multiple of "
             "num_key_value_heads (%d)", c->num_attention_heads, c->num_key_value_heads);
    POS(head_dim);
    if (c->head_dim % 2 != 0) FAIL("key 'head_dim' must be even for RoPE, got %d", c->head_dim);
    POS(max_position_embeddings);
    FPOS(rope_theta);
    FPOS(rms_norm_eps);
    BOOL01(tie_word_embeddings);

    /* MoE */
    NONNEG(n_routed_experts);
    NONNEG(n_shared_experts);
    NONNEG(num_experts_per_tok);
    NONNEG(topk_per_group);
    if (c->first_k_dense_replace < 0 || c->first_k_dense_replace > c->num_hidden_layers)
        FAIL("key 'first_k_dense_replace' is %d, must be in [0, num_hidden_layers %d]",
             c->first_k_dense_replace, c->num_hidden_layers);
    POS(n_group);
    if (c->topk_group < 1 || c->topk_group > c->n_group)
        FAIL("key 'topk_group' is %d, must be in [1, n_group %d]", c->topk_group, c->n_group);
    if (c->n_routed_experts % c->n_group != 0)
        FAIL("key 'n_group': n_routed_experts (%d) must be a multiple of n_group (%d)",
             c->n_routed_experts, c->n_group);
    if (c->num_experts_per_tok > c->n_routed_experts)
        FAIL("key 'num_experts_per_tok' is %d, more than n_routed_experts (%d)",
             c->num_experts_per_tok, c->n_routed_experts);
    int per_group = c->n_routed_experts / c->n_group;
    if (c->topk_per_group > per_group)
        FAIL("key 'topk_per_group' is %d, more than the %d experts per group "
             "(n_routed_experts / n_group)", c->topk_per_group, per_group);
    if (c->n_routed_experts > 0) {
        POS(moe_intermediate_size);
        if (c->num_experts_per_tok < 1)
            FAIL("key 'num_experts_per_tok' must be >= 1 when n_routed_experts > 0");
        if (c->topk_per_group > 0 && c->num_experts_per_tok != c->topk_group * c->topk_per_group)
            FAIL("key 'num_experts_per_tok' is %d but hierarchical routing picks topk_group "
                 "(%d) x topk_per_group (%d) = %d experts: they must be equal",
                 c->num_experts_per_tok, c->topk_group, c->topk_per_group,
                 c->topk_group * c->topk_per_group);
        if (c->topk_per_group == 0 && c->num_experts_per_tok > c->topk_group * per_group)
            FAIL("key 'num_experts_per_tok' is %d but topk_group (%d) groups of %d experts "
                 "hold only %d", c->num_experts_per_tok, c->topk_group, per_group,
                 c->topk_group * per_group);
    } else if (c->n_shared_experts > 0) {
        POS(moe_intermediate_size);
    } else {
        NONNEG(moe_intermediate_size);
    }
    FPOS(routed_scaling_factor);
    BOOL01(norm_topk_prob);
    if (c->scoring_func != DS4_SCORE_SIGMOID && c->scoring_func != DS4_SCORE_SOFTMAX)
        FAIL("key 'scoring_func': unknown value %d", c->scoring_func);
    FNONNEG(router_bias_update_rate);
    FNONNEG(aux_loss_alpha);
    FNONNEG(expert_capacity_factor);

    /* pruning */
    if (c->n_prune_layers < 0 || c->n_prune_layers > DS4_MAX_LAYERS)
        FAIL("key 'prune_layers' has %d entries, must be in [0, %d]", c->n_prune_layers,
             DS4_MAX_LAYERS);
    for (int i = 0; i < c->n_prune_layers; i++) {
        int l = c->prune_layers[i];
        if (l < 0 || l >= c->num_hidden_layers)
            FAIL("key 'prune_layers': entry %d is layer %d, must be in [0, num_hidden_layers "
                 "%d)", i, l, c->num_hidden_layers);
        for (int j = 0; j < i; j++)
            if (c->prune_layers[j] == l)
                FAIL("key 'prune_layers': layer %d is listed twice", l);
        float r = c->prune_ratio[i];
        if (!(isfinite(r) && r >= 0.0f && r < 1.0f))
            FAIL("key 'prune_ratio': entry %d (layer %d) is %g, must be in [0, 1)", i, l,
                 (double)r);
    }
    FNONNEG(prune_loss_weight);

    /* sparse attention */
    NONNEG(index_n_heads);
    NONNEG(index_head_dim);
    NONNEG(index_topk);
    NONNEG(sliding_window);
    if (c->index_topk > 0) {
        if (c->index_n_heads <= 0)
            FAIL("key 'index_n_heads' must be positive when index_topk > 0, got %d",
                 c->index_n_heads);
        if (c->index_head_dim <= 0 || c->index_head_dim % 2 != 0)
            FAIL("key 'index_head_dim' must be positive and even (RoPE) when index_topk > 0, "
                 "got %d", c->index_head_dim);
    } else if (c->index_n_heads != 0 || c->index_head_dim != 0) {
        FAIL("key '%s' is set but index_topk is 0 (no indexer): set index_topk or remove it",
             c->index_n_heads != 0 ? "index_n_heads" : "index_head_dim");
    }
    BOOL01(attention_sinks);

    if (c->bos_token_id < -1 || c->bos_token_id >= c->vocab_size)
        FAIL("key 'bos_token_id' is %d, must be -1 (none) or in [0, vocab_size %d)",
             c->bos_token_id, c->vocab_size);
    if (c->eos_token_id < -1 || c->eos_token_id >= c->vocab_size)
        FAIL("key 'eos_token_id' is %d, must be -1 (none) or in [0, vocab_size %d)",
             c->eos_token_id, c->vocab_size);
    return validate_video(c);
}

/* ---- writer ------------------------------------------------------------- */

/* Shortest decimal that reads back as the same float. */
static cJSON *float_json(float f) {
    char buf[48];
    for (int p = 6; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, (double)f);
        if (strtof(buf, NULL) == f) break;
    }
    return cJSON_CreateRaw(buf);
}

int ds4_config_save(const ds4_config *c, const char *path) {
    if (ds4_config_validate(c) != 0) {
        ds4_error_prefix("%s: refusing to save an invalid config", path);
        return -1;
    }
    cJSON *root = cJSON_CreateObject();
    int rc = -1;
    char *text = NULL;
    if (!root) goto oom;
    for (int i = 0; i < N_KEYS; i++) {
        const key_def *k = &k_keys[i];
        const char *field = (const char *)c + k->off;
        cJSON *v = NULL;
        switch (k->kind) {
        case K_INT: v = cJSON_CreateNumber(*(const int *)field); break;
        case K_FLOAT: v = float_json(*(const float *)field); break;
        case K_BOOL: v = cJSON_CreateBool(*(const int *)field); break;
        case K_TOKEN: {
            int t = *(const int *)field;
            v = t < 0 ? cJSON_CreateNull() : cJSON_CreateNumber(t);
            break;
        }
        case K_SPECIAL:
            if (strcmp(k->name, "model_type") == 0) v = cJSON_CreateString("ds4");
            else if (strcmp(k->name, "architectures") == 0) {
                const char *a[] = {"DS4ForCausalLM"};
                v = cJSON_CreateStringArray(a, 1);
            } else if (strcmp(k->name, "scoring_func") == 0)
                v = cJSON_CreateString(c->scoring_func == DS4_SCORE_SOFTMAX ? "softmax"
                                                                              : "sigmoid");
            else if (strcmp(k->name, "prune_layers") == 0)
                v = cJSON_CreateIntArray(c->prune_layers, c->n_prune_layers);
            else if (strcmp(k->name, "prune_ratio") == 0) {
                v = cJSON_CreateArray();
                for (int j = 0; v && j < c->n_prune_layers; j++)
                    cJSON_AddItemToArray(v, float_json(c->prune_ratio[j]));
            } else if (strcmp(k->name, "video") == 0) {
                if (!c->video.enabled) continue;
                const ds4_video_config *vc = &c->video;
                v = cJSON_CreateObject();
                if (!v) goto oom;
                cJSON_AddNumberToObject(v, "width", vc->width);
                cJSON_AddNumberToObject(v, "height", vc->height);
                cJSON_AddNumberToObject(v, "fps", vc->fps);
                cJSON_AddNumberToObject(v, "patch", vc->patch);
                cJSON_AddNumberToObject(v, "tubelet", vc->tubelet);
                cJSON_AddItemToObject(v, "levels", cJSON_CreateIntArray(vc->levels, vc->n_levels));
                cJSON_AddNumberToObject(v, "code_offset", vc->code_offset);
                cJSON_AddNumberToObject(v, "hidden", vc->hidden);
            }
            break;
        }
        if (!v) goto oom;
        cJSON_AddItemToObject(root, k->name, v);
    }
    text = cJSON_Print(root);
    if (!text) goto oom;
    /* cJSON_Print indents with tabs and writes ":\t"; re-indent with two
     * spaces like Hugging Face files (no string we write holds a tab) */
    size_t n = strlen(text);
    char *buf = malloc(2 * n + 2);
    if (!buf) goto oom;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (text[i] == '\t' && i > 0 && text[i - 1] == ':') buf[o++] = ' ';
        else if (text[i] == '\t') { buf[o++] = ' '; buf[o++] = ' '; }
        else buf[o++] = text[i];
    }
    buf[o++] = '\n';
    n = o - 1;
    rc = ds4_write_file_atomic(path, buf, n + 1);
    free(buf);
    goto done;
oom:
    ds4_set_error("%s: out of memory writing config", path);
done:
    cJSON_free(text);
    cJSON_Delete(root);
    return rc;
}
