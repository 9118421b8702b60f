/* quantized_gguf.c — export a ds4 model (fp32 or quantized) and its tokenizer
 * to GGUF with llama.cpp's key and tensor names, and load a model back from
 * GGUF (quantized tensors stay in the file mapping). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "model/quantized.h"
#include "tokenizer/bpe.h"
#include "util/util.h"

/* ---- names ------------------------------------------------------------------ */

/* GGUF name of a ds4 (HF) tensor; experts map to their stacked tensor and
 * *expert to j (else -1). Returns 0, or -1 if the name is unknown. */
static int gguf_name(const char *hf, char *out, size_t cap, int *expert) {
    *expert = -1;
    if (!strcmp(hf, "model.embed_tokens.weight")) { snprintf(out, cap, "token_embd.weight"); return 0; }
    if (!strcmp(hf, "model.norm.weight")) { snprintf(out, cap, "output_norm.weight"); return 0; }
    if (!strcmp(hf, "lm_head.weight")) { snprintf(out, cap, "output.weight"); return 0; }
    int l, j, off = 0;
    if (sscanf(hf, "model.layers.%d.%n", &l, &off) != 1 || off == 0) return -1;
    const char *s = hf + off;
    static const char *const map[][2] = {
        {"input_layernorm.weight", "attn_norm.weight"},
        {"self_attn.q_proj.weight", "attn_q.weight"},
        {"self_attn.k_proj.weight", "attn_k.weight"},
        {"self_attn.v_proj.weight", "attn_v.weight"},
        {"self_attn.o_proj.weight", "attn_output.weight"},
        {"self_attn.sinks", "attn_sinks.weight"},
        {"post_attention_layernorm.weight", "ffn_norm.weight"},
        {"mlp.gate_proj.weight", "ffn_gate.weight"},
        {"mlp.up_proj.weight", "ffn_up.weight"},
        {"mlp.down_proj.weight", "ffn_down.weight"},
        {"mlp.gate.weight", "ffn_gate_inp.weight"},
        {"mlp.gate.e_score_correction_bias", "exp_probs_b.bias"},
        {"mlp.shared_experts.gate_proj.weight", "ffn_gate_shexp.weight"},
        {"mlp.shared_experts.up_proj.weight", "ffn_up_shexp.weight"},
        {"mlp.shared_experts.down_proj.weight", "ffn_down_shexp.weight"},
        /* ds4's own (no llama.cpp equivalent) */
        {"prune_router.weight", "prune_router.weight"},
        {"self_attn.indexer.wq.weight", "indexer.attn_q.weight"},
        {"self_attn.indexer.wk.weight", "indexer.attn_k.weight"},
        {"self_attn.indexer.k_norm.weight", "indexer.k_norm.weight"},
        {"self_attn.indexer.weights_proj.weight", "indexer.proj.weight"},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (!strcmp(s, map[i][0])) { snprintf(out, cap, "blk.%d.%s", l, map[i][1]); return 0; }
    char proj[16];
    if (sscanf(s, "mlp.experts.%d.%15[a-z]_proj.weight", &j, proj) == 2) {
        *expert = j;
        snprintf(out, cap, "blk.%d.ffn_%s_exps.weight", l, proj);
        return 0;
    }
    return -1;
}

/* ---- arch ------------------------------------------------------------------- */

int ds4_gguf_llama_compatible(const ds4_config *c, const char **why) {
    *why = NULL;
    int pruned = 0;
    for (int i = 0; i < c->n_prune_layers; i++) pruned |= c->prune_ratio[i] > 0;
    if (c->n_routed_experts > 0 && c->first_k_dense_replace < c->num_hidden_layers)
        *why = "MoE layers: llama.cpp's MoE architectures with sigmoid scores, a selection bias and shared experts "
               "(deepseek2) use multi-head latent attention, not ds4's grouped-query attention, and none has "
               "ds4's tier-2 top-k inside each chosen group (topk_per_group)";
    else if (pruned) *why = "token pruning (prune_router): llama.cpp has no per-layer token dropping";
    else if (c->index_topk > 0) *why = "the lightning indexer (indexed top-k sparse attention)";
    else if (c->attention_sinks) *why = "attention sinks in a llama-architecture model (llama.cpp has them for gpt-oss only)";
    else if (c->sliding_window > 0) *why = "sliding-window attention in a llama-architecture model";
    return *why == NULL;
}

/* GPT-2 bytes_to_unicode: printable bytes map to themselves, the rest to 256+. */
static uint32_t byte_cp(int b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) return (uint32_t)b;
    int n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) n++;
    return 256u + (uint32_t)n;
}

static size_t put_utf8(char *o, uint32_t cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 63)); return 2; }
    o[0] = (char)(0xE0 | (cp >> 12));
    o[1] = (char)(0x80 | ((cp >> 6) & 63));
    o[2] = (char)(0x80 | (cp & 63));
    return 3;
}

/* Token text as GGUF stores it: byte-level mapped for model tokens, literal for
 * special ones. out has room for 3 * len bytes. */
static size_t token_text(const ds4_tokenizer *t, int id, char *out) {
    const char *b = t->tok_bytes + t->tok_off[id];
    size_t n = t->tok_off[id + 1] - t->tok_off[id], o = 0;
    if (id >= t->n_model) { memcpy(out, b, n); return n; }
    for (size_t i = 0; i < n; i++) o += put_utf8(out + o, byte_cp((uint8_t)b[i]));
    return o;
}

static int add_tokenizer(ds4_gguf_writer *w, const ds4_tokenizer *t, const ds4_config *c, char **pool_out) {
    int V = DS4_MAX(c->vocab_size, t->n_total);
    size_t cap = 0;
    for (int i = 0; i < t->n_total; i++) cap += 3 * (t->tok_off[i + 1] - t->tok_off[i]) + 1;
    cap += (size_t)V * 24;
    for (int r = 0; r < t->n_merges; r++) {
        int a = t->merge_left[r], b = t->merge_right[r];
        cap += 3 * (t->tok_off[a + 1] - t->tok_off[a] + t->tok_off[b + 1] - t->tok_off[b]) + 2;
    }
    char *pool = ds4_malloc(cap + 1);
    const char **strs = ds4_calloc((size_t)V + (size_t)t->n_merges + 1, sizeof *strs);
    size_t *lens = ds4_calloc((size_t)V + (size_t)t->n_merges + 1, sizeof *lens);
    int32_t *types = ds4_calloc((size_t)V + 1, sizeof *types);
    int rc = -1;
    if (!pool || !strs || !lens || !types) goto out;
    size_t o = 0;
    for (int i = 0; i < V; i++) {
        strs[i] = pool + o;
        if (i < t->n_total) {
            lens[i] = token_text(t, i, pool + o);
            types[i] = i < t->n_model ? 1 : 3;      /* NORMAL, CONTROL */
        } else {
            lens[i] = (size_t)snprintf(pool + o, 24, "<|ds4_unused_%d|>", i);
            types[i] = 5;                           /* UNUSED: ids the text tokenizer never makes */
        }
        o += lens[i];
    }
    if (ds4_gguf_add_str(w, "tokenizer.ggml.model", "gpt2") || ds4_gguf_add_str(w, "tokenizer.ggml.pre", "gpt-2") ||
        ds4_gguf_add_arr_str(w, "tokenizer.ggml.tokens", strs, lens, (uint64_t)V) ||
        ds4_gguf_add_arr(w, "tokenizer.ggml.token_type", DS4_GGUF_I32, types, (uint64_t)V))
        goto out;
    for (int r = 0; r < t->n_merges; r++) {
        char *s = pool + o;
        size_t n = token_text(t, t->merge_left[r], s);
        s[n++] = ' ';
        n += token_text(t, t->merge_right[r], s + n);
        strs[r] = s;
        lens[r] = n;
        o += n;
    }
    if (ds4_gguf_add_arr_str(w, "tokenizer.ggml.merges", strs, lens, (uint64_t)t->n_merges)) goto out;
    int bos = c->bos_token_id, eos = c->eos_token_id, pad = -1;
    for (int i = t->n_model; i < t->n_total; i++) {
        const char *b = t->tok_bytes + t->tok_off[i];
        size_t n = t->tok_off[i + 1] - t->tok_off[i];
        if (bos < 0 && n == 7 && !memcmp(b, "<|bos|>", 7)) bos = i;
        if (eos < 0 && n == 7 && !memcmp(b, "<|eos|>", 7)) eos = i;
        if (n == 7 && !memcmp(b, "<|pad|>", 7)) pad = i;
    }
    if (bos >= 0 && ds4_gguf_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)bos)) goto out;
    if (eos >= 0 && ds4_gguf_add_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)eos)) goto out;
    if (pad >= 0 && ds4_gguf_add_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)pad)) goto out;
    if (ds4_gguf_add_bool(w, "tokenizer.ggml.add_bos_token", bos >= 0) ||
        ds4_gguf_add_bool(w, "tokenizer.ggml.add_eos_token", 0))
        goto out;
    rc = 0;
out:
    free(strs);
    free(lens);
    free(types);
    if (rc) { free(pool); pool = NULL; }
    *pool_out = pool;
    return rc;
}

/* config.json text of c (through a temporary file: ds4_config_save writes files). */
static char *config_text(const ds4_config *c, const char *near) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.config.%d.tmp", near, (int)getpid());
    if (ds4_config_save(c, tmp)) return NULL;
    char *s = NULL;
    size_t n;
    int rc = ds4_read_file(tmp, &s, &n);
    unlink(tmp);
    return rc ? NULL : s;
}

static int llama_ftype(int requested, int quantized) {
    if (!quantized) return 0;                 /* ALL_F32 */
    switch (requested) {
    case DS4_Q_Q8_0: return 7;
    case DS4_Q_Q4_0: return 2;
    case DS4_Q_Q4_K: return 15;               /* Q4_K_M (output in Q8_0) */
    default: return 0;
    }
}

static int ggml_of(int qt) {
    switch (qt) {
    case DS4_Q_Q8_0: return DS4_GGML_Q8_0;
    case DS4_Q_Q4_0: return DS4_GGML_Q4_0;
    case DS4_Q_Q4_K: return DS4_GGML_Q4_K;
    default: return DS4_GGML_F32;
    }
}

static int qtype_of_ggml(int g) {
    switch (g) {
    case DS4_GGML_Q8_0: return DS4_Q_Q8_0;
    case DS4_GGML_Q4_0: return DS4_Q_Q4_0;
    case DS4_GGML_Q4_K: return DS4_Q_Q4_K;
    default: return DS4_Q_F32;
    }
}

/* Rows of a q/k projection in llama.cpp's interleaved RoPE order: per head of
 * Dh rows, new row 2i + j is old row j * Dh/2 + i. inv: the inverse. */
static void permute_rows(char *dst, const char *src, int n_head, int Dh, size_t rb, int inv) {
    int half = Dh / 2;
    for (int h = 0; h < n_head; h++)
        for (int i = 0; i < half; i++)
            for (int j = 0; j < 2; j++) {
                size_t a = (size_t)h * Dh + 2 * i + j, b = (size_t)h * Dh + (size_t)j * half + i;
                if (inv) memcpy(dst + b * rb, src + a * rb, rb);
                else memcpy(dst + a * rb, src + b * rb, rb);
            }
}

int ds4_model_export_gguf(const ds4_model *m, const ds4_tokenizer *tok, const char *path, const char **arch_out) {
    const ds4_config *c = &m->cfg;
    const char *why;
    int llama = ds4_gguf_llama_compatible(c, &why);
    const char *A = llama ? "llama" : "ds4";
    if (arch_out) *arch_out = A;
    ds4_gguf_writer *w = ds4_gguf_writer_new();
    char *pool = NULL, *cfg = NULL;
    void **bufs = NULL;
    int n_bufs = 0, rc = -1;
    if (!w) return -1;
    bufs = ds4_calloc(2 * (size_t)m->layout.n_tensors + 1, sizeof *bufs);   /* <= 2 per tensor */
    cfg = config_text(c, path);
    if (!bufs || !cfg) goto out;
    char k[160];
#define KEY(s) (snprintf(k, sizeof k, "%s.%s", A, s), k)
    int quantized = m->quant != NULL;
    int E = c->n_routed_experts;
    int moe = E > 0 && c->first_k_dense_replace < c->num_hidden_layers;
    if (ds4_gguf_add_str(w, "general.architecture", A) || ds4_gguf_add_str(w, "general.name", "ds4") ||
        ds4_gguf_add_u32(w, "general.alignment", DS4_GGUF_ALIGN) ||
        ds4_gguf_add_u32(w, "general.file_type", (uint32_t)llama_ftype(quantized ? m->quant->requested : 0, quantized)) ||
        ds4_gguf_add_u32(w, "general.quantization_version", 2) ||
        ds4_gguf_add_u32(w, KEY("context_length"), (uint32_t)c->max_position_embeddings) ||
        ds4_gguf_add_u32(w, KEY("embedding_length"), (uint32_t)c->hidden_size) ||
        ds4_gguf_add_u32(w, KEY("block_count"), (uint32_t)c->num_hidden_layers) ||
        ds4_gguf_add_u32(w, KEY("feed_forward_length"), (uint32_t)c->intermediate_size) ||
        ds4_gguf_add_u32(w, KEY("attention.head_count"), (uint32_t)c->num_attention_heads) ||
        ds4_gguf_add_u32(w, KEY("attention.head_count_kv"), (uint32_t)c->num_key_value_heads) ||
        ds4_gguf_add_u32(w, KEY("attention.key_length"), (uint32_t)c->head_dim) ||
        ds4_gguf_add_u32(w, KEY("attention.value_length"), (uint32_t)c->head_dim) ||
        ds4_gguf_add_f32(w, KEY("attention.layer_norm_rms_epsilon"), c->rms_norm_eps) ||
        ds4_gguf_add_f32(w, KEY("rope.freq_base"), c->rope_theta) ||
        ds4_gguf_add_u32(w, KEY("rope.dimension_count"), (uint32_t)c->head_dim) ||
        ds4_gguf_add_u32(w, KEY("vocab_size"), (uint32_t)c->vocab_size))
        goto out;
    if (moe) {
        int used = c->topk_per_group > 0 ? c->topk_group * c->topk_per_group : c->num_experts_per_tok;
        if (ds4_gguf_add_u32(w, KEY("leading_dense_block_count"), (uint32_t)c->first_k_dense_replace) ||
            ds4_gguf_add_u32(w, KEY("expert_feed_forward_length"), (uint32_t)c->moe_intermediate_size) ||
            ds4_gguf_add_u32(w, KEY("expert_count"), (uint32_t)E) ||
            ds4_gguf_add_u32(w, KEY("expert_used_count"), (uint32_t)used) ||
            ds4_gguf_add_u32(w, KEY("expert_shared_count"), (uint32_t)c->n_shared_experts) ||
            ds4_gguf_add_f32(w, KEY("expert_weights_scale"), c->routed_scaling_factor) ||
            ds4_gguf_add_bool(w, KEY("expert_weights_norm"), c->norm_topk_prob) ||
            ds4_gguf_add_u32(w, KEY("expert_gating_func"), c->scoring_func == DS4_SCORE_SIGMOID ? 2 : 1) ||
            ds4_gguf_add_u32(w, KEY("expert_group_count"), (uint32_t)c->n_group) ||
            ds4_gguf_add_u32(w, KEY("expert_group_used_count"), (uint32_t)c->topk_group))
            goto out;
    }
#undef KEY
    if (ds4_gguf_add_str(w, "ds4.config", cfg)) goto out;
    if (!llama && ds4_gguf_add_str(w, "ds4.llama_cpp_lacks", why)) goto out;
    if (tok && add_tokenizer(w, tok, c, &pool)) goto out;

    const int H = c->num_attention_heads, KV = c->num_key_value_heads, Dh = c->head_dim;
    for (int i = 0; i < m->layout.n_tensors; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        const ds4_qtensor *q = quantized ? &m->quant->t[i] : NULL;
        int qt = q ? q->type : DS4_Q_F32;
        char name[160];
        int ex;
        if (gguf_name(t->name, name, sizeof name, &ex)) {
            ds4_set_error("GGUF export: no GGUF name for tensor %s", t->name);
            goto out;
        }
        if (ex > 0) continue;                       /* written with expert 0 */
        size_t rb = qt == DS4_Q_F32 ? (size_t)(t->ndim > 1 ? t->shape[1] : t->shape[0]) * 4 : q->row_bytes;
        int64_t rows = t->ndim > 1 ? t->shape[0] : 1;
        int64_t ne[3] = {t->ndim > 1 ? t->shape[1] : t->shape[0], rows, 1};
        int ndim = t->ndim;
        const void *data = (const void *)(m->params + t->offset);
        if (qt != DS4_Q_F32 && ex < 0) {
            void *tmp;
            if (!(data = ds4_qtensor_rows(m, i, &tmp))) goto out;
            if (tmp) bufs[n_bufs++] = tmp;
        }
        size_t nbytes = (size_t)rows * rb;
        if (ex == 0) {                              /* stack experts 0..E-1: [E, rows, cols] */
            ne[2] = E;
            ndim = 3;
            char *b = ds4_malloc(nbytes * (size_t)E);
            if (!b) goto out;
            bufs[n_bufs++] = b;
            for (int j = 0; j < E; j++) {
                if (j > 0 && (!q || m->quant->t[i + j].type != qt) && qt != DS4_Q_F32) {
                    ds4_set_error("GGUF export: experts of %s have mixed types", name);
                    goto out;
                }
                void *tmp = NULL;
                const void *src = qt == DS4_Q_F32 ? (const void *)(m->params + t->offset + (size_t)j * t->numel)
                                                  : ds4_qtensor_rows(m, i + j, &tmp);
                if (!src) goto out;
                memcpy(b + (size_t)j * nbytes, src, nbytes);
                free(tmp);
            }
            data = b;
            nbytes *= (size_t)E;
        } else if (llama && (strstr(t->name, "q_proj") || strstr(t->name, "k_proj"))) {
            int nh = strstr(t->name, "q_proj") ? H : KV;
            char *b = ds4_malloc(nbytes);
            if (!b) goto out;
            bufs[n_bufs++] = b;
            permute_rows(b, data, nh, Dh, rb, 0);
            data = b;
        }
        if (ds4_gguf_add_tensor(w, name, ggml_of(qt), ndim, ne, data, nbytes)) goto out;
    }
    rc = ds4_gguf_writer_write(w, path);
out:
    for (int i = 0; i < n_bufs; i++) free(bufs[i]);
    free(bufs);
    free(pool);
    free(cfg);
    ds4_gguf_writer_free(w);
    return rc;
}

/* ---- load ------------------------------------------------------------------- */

static int u32key(const ds4_gguf *g, const char *arch, const char *key, int *v, int required) {
    char k[160];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    int64_t x;
    if (!ds4_gguf_find(g, k) && !required) return 0;
    if (ds4_gguf_get_i64(g, k, &x)) return -1;
    if (x < 0 || x > (1 << 30)) { ds4_set_error("%s: %s = %lld out of range", g->origin, k, (long long)x); return -1; }
    *v = (int)x;
    return 0;
}

static int f32key(const ds4_gguf *g, const char *arch, const char *key, float *v) {
    char k[160];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    double x;
    if (!ds4_gguf_find(g, k)) return 0;
    if (ds4_gguf_get_f64(g, k, &x)) return -1;
    *v = (float)x;
    return 0;
}

/* Config of a GGUF: ds4.config when present, else llama's keys (dense). */
static int gguf_config(const ds4_gguf *g, ds4_config *c, int *is_llama) {
    char *arch = NULL;
    if (ds4_gguf_get_str(g, "general.architecture", &arch)) return -1;
    *is_llama = !strcmp(arch, "llama");
    int rc = -1;
    if (ds4_gguf_find(g, "ds4.config")) {
        char *txt;
        if (ds4_gguf_get_str(g, "ds4.config", &txt)) goto out;
        char origin[300];
        snprintf(origin, sizeof origin, "%s: ds4.config", g->origin);
        rc = ds4_config_parse(c, txt, origin);
        free(txt);
        goto out;
    }
    if (!*is_llama) {
        ds4_set_error("%s: architecture '%s' without ds4.config: ds4 reads 'llama' and its own 'ds4'", g->origin, arch);
        goto out;
    }
    ds4_config_defaults(c);
    c->n_routed_experts = 0;
    c->n_shared_experts = 0;
    c->num_experts_per_tok = 0;
    c->topk_per_group = 0;
    c->n_prune_layers = 0;
    c->index_topk = c->index_n_heads = c->index_head_dim = 0;
    c->sliding_window = 0;
    c->attention_sinks = 0;
    if (u32key(g, arch, "embedding_length", &c->hidden_size, 1) || u32key(g, arch, "block_count", &c->num_hidden_layers, 1) ||
        u32key(g, arch, "feed_forward_length", &c->intermediate_size, 1) ||
        u32key(g, arch, "attention.head_count", &c->num_attention_heads, 1) ||
        u32key(g, arch, "context_length", &c->max_position_embeddings, 1))
        goto out;
    c->num_key_value_heads = c->num_attention_heads;
    c->head_dim = c->num_attention_heads ? c->hidden_size / c->num_attention_heads : 0;
    if (u32key(g, arch, "attention.head_count_kv", &c->num_key_value_heads, 0) ||
        u32key(g, arch, "attention.key_length", &c->head_dim, 0) ||
        f32key(g, arch, "attention.layer_norm_rms_epsilon", &c->rms_norm_eps) ||
        f32key(g, arch, "rope.freq_base", &c->rope_theta))
        goto out;
    c->first_k_dense_replace = c->num_hidden_layers;
    const ds4_gguf_tensor *emb = ds4_gguf_find_tensor(g, "token_embd.weight");
    if (!emb || emb->ndim != 2) { ds4_set_error("%s: no 2-D token_embd.weight", g->origin); goto out; }
    c->vocab_size = (int)emb->ne[1];
    c->tie_word_embeddings = ds4_gguf_find_tensor(g, "output.weight") == NULL;
    int64_t v;
    c->bos_token_id = ds4_gguf_find(g, "tokenizer.ggml.bos_token_id") &&
                              !ds4_gguf_get_i64(g, "tokenizer.ggml.bos_token_id", &v) && v < c->vocab_size
                          ? (int)v : -1;
    c->eos_token_id = ds4_gguf_find(g, "tokenizer.ggml.eos_token_id") &&
                              !ds4_gguf_get_i64(g, "tokenizer.ggml.eos_token_id", &v) && v < c->vocab_size
                          ? (int)v : -1;
    rc = ds4_config_validate(c);
out:
    if (rc) ds4_error_prefix("%s: model config", g->origin);
    free(arch);
    return rc;
}

ds4_model *ds4_model_load_gguf(const char *path) {
    ds4_gguf g;
    if (ds4_gguf_open(&g, path)) return NULL;
    ds4_config c;
    int llama;
    if (gguf_config(&g, &c, &llama)) { ds4_gguf_close(&g); return NULL; }
    ds4_model *m = ds4_model_alloc_lazy(&c);
    if (!m) { ds4_gguf_close(&g); return NULL; }
    ds4_qweights *q = ds4_calloc(1, sizeof *q);
    if (!q) { ds4_gguf_close(&g); ds4_model_free(m); return NULL; }
    m->quant = q;
    q->gguf = g;
    q->gguf_open = 1;
    q->requested = DS4_Q_F32;
    const ds4_gguf *G = &q->gguf;
    q->t = ds4_calloc((size_t)m->layout.n_tensors, sizeof *q->t);
    char *used = ds4_calloc((size_t)G->n_tensors + 1, 1);
    if (!q->t || !used) goto fail;
    const int H = c.num_attention_heads, KV = c.num_key_value_heads, Dh = c.head_dim;
    int n_quant = 0;
    for (int i = 0; i < m->layout.n_tensors; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        char name[160];
        int ex;
        if (gguf_name(t->name, name, sizeof name, &ex)) { ds4_set_error("no GGUF name for %s", t->name); goto fail; }
        const ds4_gguf_tensor *gt = ds4_gguf_find_tensor(G, name);
        if (!gt) { ds4_set_error("%s: missing tensor %s (ds4 %s)", path, name, t->name); goto fail; }
        used[gt - G->tensors] = 1;
        int64_t cols = t->ndim > 1 ? t->shape[1] : t->shape[0], rows = t->ndim > 1 ? t->shape[0] : 1;
        int want_nd = ex >= 0 ? 3 : t->ndim;
        int ok = gt->ndim == want_nd && gt->ne[0] == cols && (want_nd < 2 || gt->ne[1] == rows) &&
                 (want_nd < 3 || gt->ne[2] == c.n_routed_experts);
        if (!ok) {
            ds4_set_error("%s: tensor %s has ne [%lld, %lld, %lld] in %d dims, config implies [%lld, %lld%s]", path, name,
                          (long long)gt->ne[0], (long long)gt->ne[1], (long long)gt->ne[2], gt->ndim, (long long)cols,
                          (long long)rows, ex >= 0 ? ", n_routed_experts" : "");
            goto fail;
        }
        int qt = qtype_of_ggml(gt->type);
        size_t rb = (size_t)cols / (size_t)ds4_ggml_block_elems(gt->type) * ds4_ggml_block_bytes(gt->type);
        const char *src = (const char *)gt->data + (ex > 0 ? (size_t)ex * (size_t)rows * rb : 0);
        int perm = llama && (strstr(t->name, "q_proj") || strstr(t->name, "k_proj"));
        int nh = strstr(t->name, "q_proj") ? H : KV;
        if (perm && (nh * Dh != rows || Dh % 2)) { ds4_set_error("%s: %s: bad head shape", path, name); goto fail; }
        if (qt != DS4_Q_F32) {
            if (t->ndim != 2) { ds4_set_error("%s: tensor %s must be F32", path, name); goto fail; }
            q->t[i].type = qt;
            q->t[i].row_bytes = rb;
            if (perm) {   /* back to rotate-half order: a private copy */
                char *b = ds4_malloc((size_t)rows * rb);
                if (!b) goto fail;
                permute_rows(b, src, nh, Dh, rb, 1);
                if (ds4_qweights_keep(q, b)) { free(b); goto fail; }
                src = b;
                q->t[i].own = 1;
            }
            q->t[i].data = src;
            n_quant++;
            continue;
        }
        float *dst = m->params + t->offset;
        if (gt->type == DS4_GGML_F32) {
            if (perm) permute_rows((char *)dst, src, nh, Dh, (size_t)cols * 4, 1);
            else memcpy(dst, src, t->numel * sizeof(float));
        } else if (gt->type == DS4_GGML_F16) {
            float *tmp = perm ? ds4_malloc(t->numel * sizeof(float)) : dst;
            if (!tmp) goto fail;
            for (size_t k = 0; k < t->numel; k++) {
                uint16_t h;
                memcpy(&h, src + 2 * k, 2);
                tmp[k] = ds4_fp16_to_fp32(h);
            }
            if (perm) { permute_rows((char *)dst, (const char *)tmp, nh, Dh, (size_t)cols * 4, 1); free(tmp); }
        } else {
            ds4_set_error("%s: tensor %s has type %s where ds4 needs F32/F16", path, name, ds4_ggml_type_name(gt->type));
            goto fail;
        }
    }
    for (int64_t i = 0; i < G->n_tensors; i++)
        if (!used[i]) {
            ds4_set_error("%s: unexpected tensor %.*s (not part of the model the metadata describes)", path,
                          (int)DS4_MIN(G->tensors[i].name.len, 120), G->tensors[i].name.s);
            goto fail;
        }
    free(used);
    if (n_quant == 0) {                 /* plain fp32 file: drop the table */
        ds4_qweights_free(q);
        m->quant = NULL;
    } else if (ds4_quant_register(m)) {
        ds4_model_free(m);
        return NULL;
    }
    return m;
fail:
    free(used);
    ds4_model_free(m);
    return NULL;
}
