/* quantized_io.c — which tensors get quantized, the quantized model directory
 * (U8 block tensors + "ds4.qtype.*" safetensors metadata, see quantized.h),
 * and weight byte counts. Uses only quant.h's block constants, so the model
 * loader needs no kernel code. */
#include <cjson/cJSON.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "model/quantized.h"
#include "util/util.h"

/* ds4_qtype -> (ggml type, name, block elems, block bytes), header-only. */
static const struct { int ggml; const char *name; int elems; size_t bytes; } QT[DS4_Q_COUNT] = {
    [DS4_Q_F32] = {0, "f32", 1, 4},
    [DS4_Q_Q8_0] = {8, "q8_0", DS4_QK8_0, sizeof(ds4_block_q8_0)},
    [DS4_Q_Q4_0] = {2, "q4_0", DS4_QK4_0, sizeof(ds4_block_q4_0)},
    [DS4_Q_Q4_K] = {12, "q4_k", DS4_QK_K, sizeof(ds4_block_q4_K)},
};

static size_t row_bytes(int t, int64_t cols) { return (size_t)cols / (size_t)QT[t].elems * QT[t].bytes; }

static int qtype_from_name(const char *s) {
    for (int t = DS4_Q_Q8_0; t < DS4_Q_COUNT; t++)
        if (!strcmp(s, QT[t].name)) return t;
    return -1;
}

/* ---- registry --------------------------------------------------------------- */
#define N_REG 64
static _Atomic(const ds4_model *) g_reg[N_REG];
static _Atomic int g_n_reg;

/* A tied model's output projection reads the embedding table in full every
 * token (fp32: most of a small model's bytes); quantized models read a Q8_0
 * copy of it instead. Best effort: a table Q8_0 cannot hold stays fp32. */
static void tied_lm_head_q8(ds4_model *m) {
    const ds4_config *c = &m->cfg;
    ds4_qweights *q = m->quant;
    if (!c->tie_word_embeddings || q->lm_head_q8 || c->hidden_size % DS4_QK8_0 || !m->w.embed) return;
    size_t rb = ds4_q_row_bytes(DS4_Q_Q8_0, c->hidden_size);
    void *blk = ds4_alloc_aligned((size_t)c->vocab_size * rb);
    if (!blk) return;
    if (ds4_q_quantize(DS4_Q_Q8_0, m->w.embed, blk, c->vocab_size, c->hidden_size) != 0 ||
        ds4_qweights_keep(q, blk) != 0) {
        free(blk);
        return;
    }
    q->lm_head_q8 = blk;
    q->lm_head_rb = rb;
}

/* Best effort: a tensor whose copy cannot be allocated stays in row layout
 * (every kernel reads both). */
static void to_x8(ds4_model *m) {
    ds4_qweights *q = m->quant;
    for (int i = 0; i < m->layout.n_tensors; i++) {
        ds4_qtensor *qt = &q->t[i];
        const ds4_tensor_info *t = &m->layout.tensors[i];
        if (qt->type == DS4_Q_F32 || qt->x8 || t->ndim != 2 || !ds4_q_x8_usable((ds4_qtype)qt->type, (int)t->shape[0]))
            continue;
        const int rows = (int)t->shape[0], cols = (int)t->shape[1];
        if (qt->own) {
            if (ds4_q_to_x8((ds4_qtype)qt->type, qt->data, (void *)qt->data, rows, cols) == 0) qt->x8 = 1;
            continue;
        }
        void *copy = ds4_alloc_aligned((size_t)rows * qt->row_bytes);
        if (!copy) continue;
        if (ds4_q_to_x8((ds4_qtype)qt->type, qt->data, copy, rows, cols) != 0 || ds4_qweights_keep(q, copy) != 0) {
            free(copy);
            continue;
        }
        qt->data = copy;
        qt->own = qt->x8 = 1;
    }
    if (q->lm_head_q8 && !q->lm_head_x8 && ds4_q_x8_usable(DS4_Q_Q8_0, m->cfg.vocab_size) &&
        ds4_q_to_x8(DS4_Q_Q8_0, q->lm_head_q8, (void *)q->lm_head_q8, m->cfg.vocab_size, m->cfg.hidden_size) == 0)
        q->lm_head_x8 = 1;
}

int ds4_model_quant_rows(ds4_model *m) {
    if (!m->quant) return 0;
    ds4_qweights *q = m->quant;
    for (int i = 0; i < m->layout.n_tensors; i++) {
        ds4_qtensor *qt = &q->t[i];
        const ds4_tensor_info *t = &m->layout.tensors[i];
        if (!qt->x8) continue;
        if (ds4_q_from_x8((ds4_qtype)qt->type, qt->data, (void *)qt->data, (int)t->shape[0], (int)t->shape[1]) != 0)
            return -1;
        qt->x8 = 0;
    }
    if (q->lm_head_x8) {
        if (ds4_q_from_x8(DS4_Q_Q8_0, q->lm_head_q8, (void *)q->lm_head_q8, m->cfg.vocab_size, m->cfg.hidden_size))
            return -1;
        q->lm_head_x8 = 0;
    }
    return 0;
}

const void *ds4_qtensor_rows(const ds4_model *m, int i, void **tmp) {
    const ds4_qtensor *qt = &m->quant->t[i];
    const ds4_tensor_info *t = &m->layout.tensors[i];
    *tmp = NULL;
    if (!qt->x8) return qt->data;
    void *rows = ds4_malloc((size_t)t->shape[0] * qt->row_bytes);
    if (!rows) return NULL;
    if (ds4_q_from_x8((ds4_qtype)qt->type, qt->data, rows, (int)t->shape[0], (int)t->shape[1]) != 0) {
        free(rows);
        return NULL;
    }
    *tmp = rows;
    return rows;
}

int ds4_quant_register(ds4_model *m) {
    m->quant->owner = m;
    tied_lm_head_q8(m);
    to_x8(m);
    for (int i = 0; i < N_REG; i++) {
        const ds4_model *expect = NULL;
        if (atomic_compare_exchange_strong(&g_reg[i], &expect, m)) {
            atomic_fetch_add(&g_n_reg, 1);
            return 0;
        }
    }
    ds4_set_error("more than %d quantized models loaded at once", N_REG);
    return -1;
}

const ds4_model *ds4_quant_owner_of(const float *w) {
    if (atomic_load_explicit(&g_n_reg, memory_order_relaxed) == 0) return NULL;
    uintptr_t p = (uintptr_t)w;
    for (int i = 0; i < N_REG; i++) {
        const ds4_model *m = atomic_load_explicit(&g_reg[i], memory_order_acquire);
        if (m && p >= (uintptr_t)m->params && p < (uintptr_t)(m->params + m->layout.n_floats)) return m;
    }
    return NULL;
}

static void unregister(const ds4_model *m) {
    for (int i = 0; i < N_REG; i++) {
        const ds4_model *expect = m;
        if (m && atomic_compare_exchange_strong(&g_reg[i], &expect, NULL)) atomic_fetch_sub(&g_n_reg, 1);
    }
}

void ds4_qweights_free(ds4_qweights *q) {
    if (!q) return;
    unregister(q->owner);
    free(q->t);
    free(q->owned);
    for (int i = 0; i < q->n_keep; i++) free(q->keep[i]);
    free(q->keep);
    if (q->st_open) ds4_st_close(&q->st);
    if (q->gguf_open) ds4_gguf_close(&q->gguf);
    free(q);
}

int ds4_qweights_keep(ds4_qweights *q, void *p) {
    void **k = realloc(q->keep, (size_t)(q->n_keep + 1) * sizeof *k);
    if (!k) { ds4_set_error("out of memory"); return -1; }
    q->keep = k;
    q->keep[q->n_keep++] = p;
    return 0;
}

ds4_qtype ds4_quant_tensor_type(const ds4_config *c, const ds4_tensor_info *t, ds4_qtype want) {
    (void)c;
    if (want == DS4_Q_F32 || t->ndim != 2) return DS4_Q_F32;
    const char *n = t->name;
    if (!strcmp(n, "model.embed_tokens.weight") || strstr(n, "mlp.gate.weight") || strstr(n, "prune_router") ||
        strstr(n, "indexer.weights_proj"))
        return DS4_Q_F32;
    ds4_qtype ty = want;
    /* the output projection is the most sensitive matrix: 4-bit types keep it in Q8_0 */
    if (!strcmp(n, "lm_head.weight") && (want == DS4_Q_Q4_0 || want == DS4_Q_Q4_K)) ty = DS4_Q_Q8_0;
    if (t->shape[1] % QT[ty].elems == 0) return ty;
    if (t->shape[1] % DS4_QK8_0 == 0) return DS4_Q_Q8_0;
    return DS4_Q_F32;
}

size_t ds4_model_weight_bytes(const ds4_model *m) {
    size_t b = 0;
    for (int i = 0; i < m->layout.n_tensors; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        const ds4_qtensor *q = m->quant ? &m->quant->t[i] : NULL;
        b += q && q->type != DS4_Q_F32 ? (size_t)t->shape[0] * q->row_bytes : t->numel * sizeof(float);
    }
    if (m->quant && m->quant->lm_head_q8) b += (size_t)m->cfg.vocab_size * m->quant->lm_head_rb;
    return b;
}

size_t ds4_model_weight_bytes_per_token(const ds4_model *m) {
    const ds4_config *c = &m->cfg;
    int k = c->topk_per_group > 0 ? c->topk_group * c->topk_per_group : c->num_experts_per_tok;
    double b = 0;
    for (int i = 0; i < m->layout.n_tensors; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        const ds4_qtensor *q = m->quant ? &m->quant->t[i] : NULL;
        double tb = q && q->type != DS4_Q_F32 ? (double)t->shape[0] * (double)q->row_bytes
                                              : (double)t->numel * sizeof(float);
        if (!strcmp(t->name, "model.embed_tokens.weight")) {
            /* one row looked up; the whole table again as the tied lm_head
             * (or its Q8_0 copy) */
            const double row = tb / (double)t->shape[0];
            tb = !c->tie_word_embeddings ? row
               : m->quant && m->quant->lm_head_q8 ? row + (double)t->shape[0] * (double)m->quant->lm_head_rb : tb;
        } else if (strstr(t->name, "mlp.experts.")) {
            tb *= (double)k / (double)c->n_routed_experts;
        }
        b += tb;
    }
    return (size_t)b;
}

int ds4_st_is_quantized(const ds4_safetensors *st) {
    if (!st->metadata) return 0;
    cJSON *j = cJSON_Parse(st->metadata);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "ds4.quantized");
    int r = cJSON_IsString(v) && !strcmp(v->valuestring, "1");
    cJSON_Delete(j);
    return r;
}

int ds4_model_save_quantized(const ds4_model *m, const char *dir) {
    if (!m->quant) { ds4_set_error("ds4_model_save_quantized: the model is not quantized"); return -1; }
    if (ds4_mkdir_p(dir) != 0) return -1;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (ds4_config_save(&m->cfg, path) != 0) return -1;
    int n = m->layout.n_tensors, rc = -1;
    ds4_st_entry *e = ds4_calloc((size_t)n, sizeof *e);
    void **tmps = ds4_calloc((size_t)n + 1, sizeof *tmps);   /* row-layout copies of x8 tensors */
    int n_tmp = 0;
    cJSON *meta = cJSON_CreateObject();
    char *meta_s = NULL;
    if (!e || !tmps || !meta) goto out;
    cJSON_AddStringToObject(meta, "format", "pt");
    cJSON_AddStringToObject(meta, "producer", "ds4");
    cJSON_AddStringToObject(meta, "ds4.quantized", "1");
    cJSON_AddStringToObject(meta, "ds4.quant_type", ds4_quant_type_name(m->quant->requested));
    for (int i = 0; i < n; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        const ds4_qtensor *q = &m->quant->t[i];
        e[i].name = t->name;
        if (q->type == DS4_Q_F32) {
            e[i].dtype = DS4_DT_F32;
            e[i].ndim = t->ndim;
            for (int d = 0; d < t->ndim; d++) e[i].shape[d] = t->shape[d];
            e[i].data = m->params + t->offset;
            continue;
        }
        e[i].dtype = DS4_DT_U8;
        e[i].ndim = 2;
        e[i].shape[0] = t->shape[0];
        e[i].shape[1] = (int64_t)q->row_bytes;
        void *tmp;
        if (!(e[i].data = ds4_qtensor_rows(m, i, &tmp))) goto out;
        if (tmp) tmps[n_tmp++] = tmp;
        char key[160], val[160];
        snprintf(key, sizeof key, "ds4.qtype.%s", t->name);
        snprintf(val, sizeof val, "{\"type\":\"%s\",\"ggml_type\":%d,\"shape\":[%lld,%lld]}", QT[q->type].name,
                 QT[q->type].ggml, (long long)t->shape[0], (long long)t->shape[1]);
        cJSON_AddStringToObject(meta, key, val);
    }
    meta_s = cJSON_PrintUnformatted(meta);
    if (!meta_s) { ds4_set_error("out of memory printing safetensors metadata"); goto out; }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    rc = ds4_st_write(path, e, n, meta_s);
out:
    free(e);
    for (int i = 0; i < n_tmp; i++) free(tmps[i]);
    free(tmps);
    cJSON_Delete(meta);
    if (meta_s) cJSON_free(meta_s);
    return rc;
}

const char *ds4_quant_type_name(int t) { return t >= 0 && t < DS4_Q_COUNT ? QT[t].name : "?"; }

/* Parse the ds4.qtype entry of one tensor: its type, and check the shape. */
static int parse_qentry(const char *val, const ds4_tensor_info *t, const char *path, int *type) {
    cJSON *j = cJSON_Parse(val);
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(j, "type");
    const cJSON *gg = cJSON_GetObjectItemCaseSensitive(j, "ggml_type");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(j, "shape");
    int rc = -1;
    if (!cJSON_IsString(ty) || !cJSON_IsNumber(gg) || !cJSON_IsArray(sh) || cJSON_GetArraySize(sh) != 2) {
        ds4_set_error("%s: metadata ds4.qtype.%s must be {\"type\":..,\"ggml_type\":..,\"shape\":[rows,cols]}", path,
                      t->name);
        goto out;
    }
    int q = qtype_from_name(ty->valuestring);
    if (q < 0 || QT[q].ggml != gg->valueint) {
        ds4_set_error("%s: tensor %s: quantized type '%s' (ggml %d) is not one ds4 reads (q8_0, q4_0, q4_k)", path,
                      t->name, ty->valuestring, gg->valueint);
        goto out;
    }
    const cJSON *r = cJSON_GetArrayItem(sh, 0), *c = cJSON_GetArrayItem(sh, 1);
    if (t->ndim != 2 || !cJSON_IsNumber(r) || !cJSON_IsNumber(c) || r->valuedouble != (double)t->shape[0] ||
        c->valuedouble != (double)t->shape[1]) {
        ds4_set_error("%s: tensor %s: quantized logical shape does not match config.json's [%lld, %lld]", path,
                      t->name, (long long)t->shape[0], (long long)(t->ndim > 1 ? t->shape[1] : 1));
        goto out;
    }
    if (t->shape[1] % QT[q].elems) {
        ds4_set_error("%s: tensor %s: %lld columns are not a multiple of the %s block (%d)", path, t->name,
                      (long long)t->shape[1], QT[q].name, QT[q].elems);
        goto out;
    }
    *type = q;
    rc = 0;
out:
    cJSON_Delete(j);
    return rc;
}

/* Copy an F32/F16/BF16 file tensor into dst, checking the shape. */
static int copy_f(float *dst, const ds4_st_tensor *s, const ds4_tensor_info *t, const char *path) {
    if (s->ndim != t->ndim) {
        ds4_set_error("%s: tensor %s has %d dims, expected %d", path, t->name, s->ndim, t->ndim);
        return -1;
    }
    for (int d = 0; d < t->ndim; d++)
        if (s->shape[d] != t->shape[d]) {
            ds4_set_error("%s: tensor %s has shape[%d] = %lld, config.json implies %lld", path, t->name, d,
                          (long long)s->shape[d], (long long)t->shape[d]);
            return -1;
        }
    if (s->dtype == DS4_DT_F32) { memcpy(dst, s->data, t->numel * sizeof(float)); return 0; }
    if (s->dtype == DS4_DT_F16 || s->dtype == DS4_DT_BF16) {
        const uint8_t *p = s->data;
        for (size_t k = 0; k < t->numel; k++) {
            uint16_t h;
            memcpy(&h, p + 2 * k, 2);
            dst[k] = s->dtype == DS4_DT_F16 ? ds4_fp16_to_fp32(h) : ds4_bf16_to_fp32(h);
        }
        return 0;
    }
    ds4_set_error("%s: tensor %s has dtype %s; expected F32, F16 or BF16 (or U8 with a ds4.qtype entry)", path,
                  t->name, ds4_dtype_name(s->dtype));
    return -1;
}

ds4_model *ds4_model_load_quantized(const ds4_config *c, ds4_safetensors *st, const char *path) {
    ds4_model *m = ds4_model_alloc_lazy(c);
    cJSON *meta = NULL;
    if (!m) { ds4_st_close(st); return NULL; }
    ds4_qweights *q = ds4_calloc(1, sizeof *q);
    if (!q) goto fail_st;
    m->quant = q;
    q->st = *st;
    q->st_open = 1;
    memset(st, 0, sizeof *st);
    q->t = ds4_calloc((size_t)m->layout.n_tensors, sizeof *q->t);
    meta = cJSON_Parse(q->st.metadata ? q->st.metadata : "{}");
    if (!q->t || !meta) { if (!meta) ds4_set_error("%s: bad metadata", path); goto fail; }
    const cJSON *rq = cJSON_GetObjectItemCaseSensitive(meta, "ds4.quant_type");
    q->requested = cJSON_IsString(rq) ? qtype_from_name(rq->valuestring) : -1;
    if (q->requested < 0) q->requested = DS4_Q_Q8_0;
    int n_q = 0;
    for (int i = 0; i < m->layout.n_tensors; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        const ds4_st_tensor *s = ds4_st_find(&q->st, t->name);
        if (!s) { ds4_set_error("%s: missing tensor %s (required by config.json)", path, t->name); goto fail; }
        char key[160];
        snprintf(key, sizeof key, "ds4.qtype.%s", t->name);
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(meta, key);
        if (!e) {
            if (copy_f(m->params + t->offset, s, t, path)) goto fail;
            continue;
        }
        int ty;
        if (parse_qentry(e->valuestring, t, path, &ty)) goto fail;
        size_t rb = row_bytes(ty, t->shape[1]);
        if (s->dtype != DS4_DT_U8 || s->ndim != 2 || s->shape[0] != t->shape[0] || s->shape[1] != (int64_t)rb) {
            ds4_set_error("%s: tensor %s (%s) must be U8 [%lld, %zu], got %s with %d dims", path, t->name,
                          QT[ty].name, (long long)t->shape[0], rb, ds4_dtype_name(s->dtype), s->ndim);
            goto fail;
        }
        q->t[i].type = ty;
        q->t[i].data = s->data;
        q->t[i].row_bytes = rb;
        n_q++;
    }
    /* every ds4.qtype entry must name a tensor of the layout */
    for (const cJSON *e = meta->child; e; e = e->next)
        if (!strncmp(e->string, "ds4.qtype.", 10) && !ds4_layout_find(&m->layout, e->string + 10)) {
            ds4_set_error("%s: metadata %s names no tensor of this config", path, e->string);
            goto fail;
        }
    for (int i = 0; i < q->st.n_tensors; i++)
        if (!ds4_layout_find(&m->layout, q->st.tensors[i].name)) {
            ds4_set_error("%s: unexpected tensor %s (not part of the model config.json describes)", path,
                          q->st.tensors[i].name);
            goto fail;
        }
    (void)n_q;
    cJSON_Delete(meta);
    if (ds4_quant_register(m)) { ds4_model_free(m); return NULL; }
    return m;
fail_st:
    ds4_st_close(st);
fail:
    cJSON_Delete(meta);
    ds4_model_free(m);
    return NULL;
}
