/* model.c — parameter layout (HF DeepSeek-V3 tensor names over one flat fp32
 * buffer), random initialisation, and model save/load via safetensors. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/linear.h"
#include "model/model.h"
#include "model/quantized.h"
#include "util/util.h"

/* ---- layout ------------------------------------------------------------- */

static int lay_add(ds4_layout *lay, int *cap, int trainable, int decay, int ndim,
                   int64_t d0, int64_t d1, const char *fmt, ...) {
    if (lay->n_tensors == *cap) {
        int nc = *cap ? *cap * 2 : 64;
        ds4_tensor_info *t = realloc(lay->tensors, (size_t)nc * sizeof *t);
        if (!t) { ds4_set_error("out of memory building the parameter layout"); return -1; }
        lay->tensors = t;
        *cap = nc;
    }
    ds4_tensor_info *t = &lay->tensors[lay->n_tensors++];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->numel = (size_t)d0 * (size_t)(ndim > 1 ? d1 : 1);
    t->offset = lay->n_floats;
    t->trainable = trainable;
    t->decay = decay;
    lay->n_floats += t->numel;
    return 0;
}

#define ADD(tr, dc, nd, a, b, ...) \
    do { if (lay_add(lay, &cap, tr, dc, nd, a, b, __VA_ARGS__) != 0) goto fail; } while (0)

int ds4_layout_build(ds4_layout *lay, const ds4_config *c) {
    memset(lay, 0, sizeof *lay);
    int cap = 0;
    const int64_t D = c->hidden_size, H = c->num_attention_heads, K = c->num_key_value_heads;
    const int64_t Dh = c->head_dim, F = c->intermediate_size, Fm = c->moe_intermediate_size;
    const int64_t E = c->n_routed_experts, S = c->n_shared_experts;
    ADD(1, 1, 2, c->vocab_size, D, "model.embed_tokens.weight");
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const char *p = "model.layers";
        ADD(1, 0, 1, D, 0, "%s.%d.input_layernorm.weight", p, l);
        ADD(1, 1, 2, H * Dh, D, "%s.%d.self_attn.q_proj.weight", p, l);
        ADD(1, 1, 2, K * Dh, D, "%s.%d.self_attn.k_proj.weight", p, l);
        ADD(1, 1, 2, K * Dh, D, "%s.%d.self_attn.v_proj.weight", p, l);
        ADD(1, 1, 2, D, H * Dh, "%s.%d.self_attn.o_proj.weight", p, l);
        if (c->attention_sinks) ADD(1, 0, 1, H, 0, "%s.%d.self_attn.sinks", p, l);
        if (c->index_topk > 0) {
            const int64_t Hi = c->index_n_heads, Di = c->index_head_dim;
            ADD(1, 1, 2, Hi * Di, D, "%s.%d.self_attn.indexer.wq.weight", p, l);
            ADD(1, 1, 2, Di, D, "%s.%d.self_attn.indexer.wk.weight", p, l);
            ADD(1, 0, 1, Di, 0, "%s.%d.self_attn.indexer.k_norm.weight", p, l);
            ADD(1, 1, 2, Hi, D, "%s.%d.self_attn.indexer.weights_proj.weight", p, l);
        }
        for (int i = 0; i < c->n_prune_layers; i++)
            if (c->prune_layers[i] == l && c->prune_ratio[i] > 0)
                ADD(1, 1, 2, 1, D, "%s.%d.prune_router.weight", p, l);
        ADD(1, 0, 1, D, 0, "%s.%d.post_attention_layernorm.weight", p, l);
        if (!ds4_layer_is_moe(c, l)) {
            ADD(1, 1, 2, F, D, "%s.%d.mlp.gate_proj.weight", p, l);
            ADD(1, 1, 2, F, D, "%s.%d.mlp.up_proj.weight", p, l);
            ADD(1, 1, 2, D, F, "%s.%d.mlp.down_proj.weight", p, l);
        } else {
            ADD(1, 1, 2, E, D, "%s.%d.mlp.gate.weight", p, l);
            ADD(0, 0, 1, E, 0, "%s.%d.mlp.gate.e_score_correction_bias", p, l);
            /* experts contiguous per projection: exp_gate is one [E, Fm, D] block */
            for (int j = 0; j < E; j++) ADD(1, 1, 2, Fm, D, "%s.%d.mlp.experts.%d.gate_proj.weight", p, l, j);
            for (int j = 0; j < E; j++) ADD(1, 1, 2, Fm, D, "%s.%d.mlp.experts.%d.up_proj.weight", p, l, j);
            for (int j = 0; j < E; j++) ADD(1, 1, 2, D, Fm, "%s.%d.mlp.experts.%d.down_proj.weight", p, l, j);
            if (S > 0) {
                ADD(1, 1, 2, S * Fm, D, "%s.%d.mlp.shared_experts.gate_proj.weight", p, l);
                ADD(1, 1, 2, S * Fm, D, "%s.%d.mlp.shared_experts.up_proj.weight", p, l);
                ADD(1, 1, 2, D, S * Fm, "%s.%d.mlp.shared_experts.down_proj.weight", p, l);
            }
        }
    }
    ADD(1, 0, 1, D, 0, "model.norm.weight");
    if (!c->tie_word_embeddings) ADD(1, 1, 2, c->vocab_size, D, "lm_head.weight");
    return 0;
fail:
    ds4_layout_free(lay);
    return -1;
}
#undef ADD

void ds4_layout_free(ds4_layout *lay) {
    free(lay->tensors);
    memset(lay, 0, sizeof *lay);
}

const ds4_tensor_info *ds4_layout_find(const ds4_layout *lay, const char *name) {
    for (int i = 0; i < lay->n_tensors; i++)
        if (!strcmp(lay->tensors[i].name, name)) return &lay->tensors[i];
    return NULL;
}

/* Bind pointers by walking the table in the order ds4_layout_build wrote it. */
void ds4_weights_bind(ds4_weights *w, const ds4_config *c, const ds4_layout *lay, float *base) {
    memset(w, 0, sizeof *w);
    for (int i = 0; i < lay->n_tensors; i++) {
        const ds4_tensor_info *t = &lay->tensors[i];
        float *p = base + t->offset;
        const char *n = t->name;
        if (!strcmp(n, "model.embed_tokens.weight")) { w->embed = p; continue; }
        if (!strcmp(n, "model.norm.weight")) { w->norm = p; continue; }
        if (!strcmp(n, "lm_head.weight")) { w->lm_head = p; continue; }
        int l, j, off = 0;
        if (sscanf(n, "model.layers.%d.%n", &l, &off) != 1 || off == 0) continue;
        ds4_layer *L = &w->layers[l];
        const char *s = n + off;
        if (!strcmp(s, "input_layernorm.weight")) L->input_layernorm = p;
        else if (!strcmp(s, "self_attn.q_proj.weight")) L->q_proj = p;
        else if (!strcmp(s, "self_attn.k_proj.weight")) L->k_proj = p;
        else if (!strcmp(s, "self_attn.v_proj.weight")) L->v_proj = p;
        else if (!strcmp(s, "self_attn.o_proj.weight")) L->o_proj = p;
        else if (!strcmp(s, "self_attn.sinks")) L->sinks = p;
        else if (!strcmp(s, "self_attn.indexer.wq.weight")) L->idx_wq = p;
        else if (!strcmp(s, "self_attn.indexer.wk.weight")) L->idx_wk = p;
        else if (!strcmp(s, "self_attn.indexer.k_norm.weight")) L->idx_k_norm = p;
        else if (!strcmp(s, "self_attn.indexer.weights_proj.weight")) L->idx_weights_proj = p;
        else if (!strcmp(s, "prune_router.weight")) L->prune_router = p;
        else if (!strcmp(s, "post_attention_layernorm.weight")) L->post_attention_layernorm = p;
        else if (!strcmp(s, "mlp.gate_proj.weight")) L->gate_proj = p;
        else if (!strcmp(s, "mlp.up_proj.weight")) L->up_proj = p;
        else if (!strcmp(s, "mlp.down_proj.weight")) L->down_proj = p;
        else if (!strcmp(s, "mlp.gate.weight")) L->router = p;
        else if (!strcmp(s, "mlp.gate.e_score_correction_bias")) L->router_bias = p;
        else if (!strcmp(s, "mlp.shared_experts.gate_proj.weight")) L->sh_gate = p;
        else if (!strcmp(s, "mlp.shared_experts.up_proj.weight")) L->sh_up = p;
        else if (!strcmp(s, "mlp.shared_experts.down_proj.weight")) L->sh_down = p;
        else if (sscanf(s, "mlp.experts.%d.", &j) == 1 && j == 0) {
            if (strstr(s, "gate_proj")) L->exp_gate = p;
            else if (strstr(s, "up_proj")) L->exp_up = p;
            else if (strstr(s, "down_proj")) L->exp_down = p;
        }
    }
    if (c->tie_word_embeddings) w->lm_head = w->embed;
}

/* ---- create / free ------------------------------------------------------ */

static ds4_model *model_alloc(const ds4_config *c) {
    if (ds4_config_validate(c) != 0) return NULL;
    ds4_model *m = ds4_calloc(1, sizeof *m);
    if (!m) return NULL;
    m->cfg = *c;
    if (ds4_layout_build(&m->layout, c) != 0) { free(m); return NULL; }
    m->params = ds4_alloc_aligned(m->layout.n_floats * sizeof(float));
    if (!m->params) { ds4_layout_free(&m->layout); free(m); return NULL; }
    ds4_weights_bind(&m->w, c, &m->layout, m->params);
    return m;
}

ds4_model *ds4_model_alloc_lazy(const ds4_config *c) {
    if (ds4_config_validate(c) != 0) return NULL;
    ds4_model *m = ds4_calloc(1, sizeof *m);
    if (!m) return NULL;
    m->cfg = *c;
    if (ds4_layout_build(&m->layout, c) != 0) { free(m); return NULL; }
    size_t len = (m->layout.n_floats * sizeof(float) + 4095) & ~(size_t)4095;
    void *p = mmap(NULL, len ? len : 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        ds4_set_error("out of memory mapping %zu bytes of parameters", len);
        ds4_layout_free(&m->layout);
        free(m);
        return NULL;
    }
    m->params = p;
    m->params_mmap_len = len ? len : 4096;
    ds4_weights_bind(&m->w, c, &m->layout, m->params);
    return m;
}

static int is_residual_out(const char *name) {
    return strstr(name, "o_proj") || strstr(name, "down_proj");
}

ds4_model *ds4_model_create(const ds4_config *c, uint64_t seed) {
    ds4_model *m = model_alloc(c);
    if (!m) return NULL;
    ds4_rng rng;
    ds4_rng_seed(&rng, seed);
    const float std = 0.02f, res_std = 0.02f / sqrtf(2.0f * (float)c->num_hidden_layers);
    for (int i = 0; i < m->layout.n_tensors; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        float *p = m->params + t->offset;
        if (strstr(t->name, "norm.weight")) { for (size_t k = 0; k < t->numel; k++) p[k] = 1.0f; continue; }
        if (t->ndim < 2) continue;      /* biases, sinks: zero */
        float s = is_residual_out(t->name) ? res_std : std;
        for (size_t k = 0; k < t->numel; k++) p[k] = s * ds4_rng_normal(&rng);
    }
    return m;
}

void ds4_model_free(ds4_model *m) {
    if (!m) return;
    ds4_lora_slot *lora = m->lora;
    ds4_linear_set_lora(m, NULL);
    if (lora && lora->free_fn) lora->free_fn(lora);
    ds4_qweights_free(m->quant);
    if (m->params_mmap_len) munmap(m->params, m->params_mmap_len);
    else free(m->params);
    ds4_layout_free(&m->layout);
    free(m);
}

size_t ds4_model_n_params(const ds4_model *m) { return m->layout.n_floats; }

size_t ds4_model_n_active_params(const ds4_model *m) {
    const ds4_config *c = &m->cfg;
    size_t n = 0;
    for (int i = 0; i < m->layout.n_tensors; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        if (!strcmp(t->name, "model.embed_tokens.weight")) continue;
        int j;
        const char *e = strstr(t->name, "mlp.experts.");
        if (e && sscanf(e, "mlp.experts.%d.", &j) == 1) continue;
        n += t->numel;
    }
    int k = c->topk_per_group > 0 ? c->topk_group * c->topk_per_group : c->num_experts_per_tok;
    for (int l = 0; l < c->num_hidden_layers; l++)
        if (ds4_layer_is_moe(c, l)) n += (size_t)k * 3 * c->moe_intermediate_size * c->hidden_size;
    if (c->tie_word_embeddings) n += (size_t)c->vocab_size * c->hidden_size;
    return n;
}

/* ---- save / load -------------------------------------------------------- */

int ds4_model_save(const ds4_model *m, const char *dir) {
    if (m->quant) return ds4_model_save_quantized(m, dir);
    if (ds4_mkdir_p(dir) != 0) return -1;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (ds4_config_save(&m->cfg, path) != 0) return -1;
    int n = m->layout.n_tensors;
    ds4_st_entry *e = ds4_calloc((size_t)n, sizeof *e);
    if (!e) return -1;
    for (int i = 0; i < n; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        e[i].name = t->name;
        e[i].dtype = DS4_DT_F32;
        e[i].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) e[i].shape[d] = t->shape[d];
        e[i].data = m->params + t->offset;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int rc = ds4_st_write(path, e, n, "{\"format\":\"pt\",\"producer\":\"ds4\"}");
    free(e);
    return rc;
}

/* Copy one file tensor into an fp32 destination, converting F16/BF16. */
static int load_tensor(float *dst, const ds4_st_tensor *st, const ds4_tensor_info *t, const char *path) {
    if (st->ndim != t->ndim) {
        ds4_set_error("%s: tensor %s has %d dims, expected %d", path, t->name, st->ndim, t->ndim);
        return -1;
    }
    for (int d = 0; d < t->ndim; d++)
        if (st->shape[d] != t->shape[d]) {
            ds4_set_error("%s: tensor %s has shape[%d] = %lld, config.json implies %lld", path, t->name, d,
                          (long long)st->shape[d], (long long)t->shape[d]);
            return -1;
        }
    if (st->dtype == DS4_DT_F32) memcpy(dst, st->data, t->numel * sizeof(float));
    else if (st->dtype == DS4_DT_F16 || st->dtype == DS4_DT_BF16) {
        const uint16_t *s = st->data;
        for (size_t k = 0; k < t->numel; k++) {
            uint16_t h;
            memcpy(&h, s + k, 2);
            dst[k] = st->dtype == DS4_DT_F16 ? ds4_fp16_to_fp32(h) : ds4_bf16_to_fp32(h);
        }
    } else {
        ds4_set_error("%s: tensor %s has dtype %s; ds4 reads F32, F16 or BF16", path, t->name,
                      ds4_dtype_name(st->dtype));
        return -1;
    }
    return 0;
}

ds4_model *ds4_model_load(const char *dir) {
    char path[4096];
    ds4_config c;
    struct stat sb;
    if (stat(dir, &sb) == 0 && S_ISREG(sb.st_mode) && ds4_gguf_is_gguf(dir)) return ds4_model_load_gguf(dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (ds4_config_load(&c, path) != 0) return NULL;
    char cpath[4096];
    snprintf(cpath, sizeof cpath, "%s", path);
    if (ds4_config_validate(&c) != 0) { ds4_error_prefix("%s", cpath); return NULL; }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ds4_safetensors st;
    if (ds4_st_open(&st, path) != 0) return NULL;
    if (ds4_st_is_quantized(&st)) {          /* blocks stay in the mapping */
        return ds4_model_load_quantized(&c, &st, path);
    }
    ds4_model *m = model_alloc(&c);
    if (!m) { ds4_error_prefix("%s", cpath); ds4_st_close(&st); return NULL; }
    for (int i = 0; i < m->layout.n_tensors; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        const ds4_st_tensor *s = ds4_st_find(&st, t->name);
        if (!s) {
            ds4_set_error("%s: missing tensor %s (required by config.json)", path, t->name);
            goto fail;
        }
        if (load_tensor(m->params + t->offset, s, t, path) != 0) goto fail;
    }
    for (int i = 0; i < st.n_tensors; i++)
        if (!ds4_layout_find(&m->layout, st.tensors[i].name)) {
            ds4_set_error("%s: unexpected tensor %s (not part of the model config.json describes)", path,
                          st.tensors[i].name);
            goto fail;
        }
    ds4_st_close(&st);
    return m;
fail:
    ds4_st_close(&st);
    ds4_model_free(m);
    return NULL;
}
