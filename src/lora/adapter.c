/* adapter.c — LoRA adapters in the PEFT layout: targets, creation, save and
 * validated load, W + scale * B A and its chain rule, merge, and attaching an
 * adapter to a model for inference through ds4_linear's LoRA slot. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "infer/infer.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "lora/lora.h"
#include "model/linear.h"
#include "model/quantized.h"
#include "util/util.h"

#define PEFT_PREFIX "base_model.model."

/* ---- targets ------------------------------------------------------------ */

static const struct { unsigned bit; const char *name, *proj; } TARGETS[] = {
    {DS4_LORA_Q, "q", "q_proj"}, {DS4_LORA_K, "k", "k_proj"}, {DS4_LORA_V, "v", "v_proj"},
    {DS4_LORA_O, "o", "o_proj"}, {DS4_LORA_GATE, "gate", "gate_proj"},
    {DS4_LORA_UP, "up", "up_proj"}, {DS4_LORA_DOWN, "down", "down_proj"},
};
#define N_TARGETS ((int)(sizeof TARGETS / sizeof TARGETS[0]))

int ds4_lora_parse_targets(const char *list, unsigned *mask) {
    *mask = 0;
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        int found = 0;
        if (len == 3 && !strncmp(p, "all", 3)) { *mask |= DS4_LORA_ALL; found = 1; }
        for (int i = 0; i < N_TARGETS && !found; i++)
            if ((strlen(TARGETS[i].name) == len && !strncmp(p, TARGETS[i].name, len)) ||
                (strlen(TARGETS[i].proj) == len && !strncmp(p, TARGETS[i].proj, len))) {
                *mask |= TARGETS[i].bit;
                found = 1;
            }
        if (!found) {
            ds4_set_error("unknown LoRA target '%.*s' (expected q,k,v,o,gate,up,down or all)", (int)len, p);
            return -1;
        }
        p += len;
        if (*p == ',') p++;
    }
    if (!*mask) { ds4_set_error("empty LoRA target list"); return -1; }
    return 0;
}

void ds4_lora_targets_str(unsigned mask, char *buf, size_t n) {
    size_t k = 0;
    if (n) buf[0] = 0;
    for (int i = 0; i < N_TARGETS; i++)
        if ((mask & TARGETS[i].bit) && k < n)
            k += (size_t)snprintf(buf + k, n - k, "%s%s", k ? "," : "", TARGETS[i].proj);
}

/* The target bit of a base tensor name (…q_proj.weight etc.), 0 if none. */
static unsigned target_bit(const char *name) {
    size_t len = strlen(name);
    for (int i = 0; i < N_TARGETS; i++) {
        char suf[32];
        snprintf(suf, sizeof suf, ".%s.weight", TARGETS[i].proj);
        size_t sl = strlen(suf);
        if (len > sl && !strcmp(name + len - sl, suf)) return TARGETS[i].bit;
    }
    return 0;
}

int ds4_lora_is_target(const char *name, unsigned mask) { return (target_bit(name) & mask) != 0; }

/* ---- adapter memory ----------------------------------------------------- */

/* Append a [d0, d1] tensor to the adapter layout. */
static int lay_push(ds4_layout *lay, int *cap, const char *name, int64_t d0, int64_t d1) {
    if (strlen(name) >= sizeof lay->tensors[0].name) {
        ds4_set_error("LoRA tensor name too long: %s", name);
        return -1;
    }
    if (lay->n_tensors == *cap) {
        int nc = *cap ? *cap * 2 : 32;
        ds4_tensor_info *t = realloc(lay->tensors, (size_t)nc * sizeof *t);
        if (!t) { ds4_set_error("out of memory building the LoRA layout"); return -1; }
        lay->tensors = t;
        *cap = nc;
    }
    ds4_tensor_info *t = &lay->tensors[lay->n_tensors++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = 2;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->numel = (size_t)d0 * (size_t)d1;
    t->offset = lay->n_floats;
    t->trainable = 1;
    t->decay = 1;
    lay->n_floats += t->numel;
    return 0;
}

/* PEFT names of a base weight "X.weight": base_model.model.X.lora_{A,B}.weight */
static int peft_names(const char *base, char *a, char *b, size_t n) {
    size_t len = strlen(base);
    if (len < 8 || strcmp(base + len - 7, ".weight")) {
        ds4_set_error("LoRA: base tensor %s does not end in .weight", base);
        return -1;
    }
    snprintf(a, n, PEFT_PREFIX "%.*s.lora_A.weight", (int)(len - 7), base);
    snprintf(b, n, PEFT_PREFIX "%.*s.lora_B.weight", (int)(len - 7), base);
    return 0;
}

static void set_scale(ds4_lora *l) {
    l->scale = l->rslora ? l->alpha / sqrtf((float)l->rank) : l->alpha / (float)l->rank;
}

void ds4_lora_free(ds4_lora *l) {
    if (!l) return;
    ds4_layout_free(&l->layout);
    free(l->params);
    free(l->base);
    free(l);
}

size_t ds4_lora_n_params(const ds4_lora *l) { return l->layout.n_floats; }

static int check_rank(int rank) {
    if (rank < 1 || rank > DS4_LORA_MAX_RANK) {
        ds4_set_error("LoRA rank %d outside [1, %d]", rank, DS4_LORA_MAX_RANK);
        return -1;
    }
    return 0;
}

ds4_lora *ds4_lora_create(const ds4_model *m, int rank, float alpha, unsigned targets, uint64_t seed) {
    if (check_rank(rank) != 0) return NULL;
    if (!(alpha > 0) || !isfinite(alpha)) { ds4_set_error("LoRA alpha must be positive, got %g", alpha); return NULL; }
    ds4_lora *l = ds4_calloc(1, sizeof *l);
    if (!l) return NULL;
    l->rank = rank;
    l->alpha = alpha;
    l->targets = targets;
    set_scale(l);
    int cap = 0;
    if (!(l->base = ds4_malloc(sizeof(int) * (size_t)(m->layout.n_tensors + 1)))) goto fail;
    for (int i = 0; i < m->layout.n_tensors; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        if (t->ndim != 2 || !(target_bit(t->name) & targets)) continue;
        char a[160], b[160];
        if (peft_names(t->name, a, b, sizeof a) != 0) goto fail;
        if (lay_push(&l->layout, &cap, a, rank, t->shape[1]) != 0) goto fail;
        if (lay_push(&l->layout, &cap, b, t->shape[0], rank) != 0) goto fail;
        l->base[l->n++] = i;
    }
    if (l->n == 0) { ds4_set_error("LoRA: no weight of the model matches the targets"); goto fail; }
    if (!(l->params = ds4_alloc_aligned(l->layout.n_floats * sizeof(float)))) goto fail;
    ds4_rng rng;
    ds4_rng_seed(&rng, seed);
    for (int k = 0; k < l->n; k++) {             /* A ~ U(-1/sqrt(in), 1/sqrt(in)); B = 0 */
        const ds4_tensor_info *A = &l->layout.tensors[2 * k];
        const float bound = 1.0f / sqrtf((float)A->shape[1]);
        float *p = l->params + A->offset;
        for (size_t i = 0; i < A->numel; i++) p[i] = bound * (2.0f * ds4_rng_uniform(&rng) - 1.0f);
    }
    return l;
fail:
    ds4_lora_free(l);
    return NULL;
}

/* ---- save ---------------------------------------------------------------- */

static int save_config(const ds4_lora *l, const char *path) {
    cJSON *j = cJSON_CreateObject();
    if (!j) { ds4_set_error("out of memory writing %s", path); return -1; }
    cJSON_AddStringToObject(j, "peft_type", "LORA");
    cJSON_AddStringToObject(j, "task_type", "CAUSAL_LM");
    cJSON_AddStringToObject(j, "base_model_name_or_path", l->base_model);
    cJSON_AddNumberToObject(j, "r", l->rank);
    cJSON_AddNumberToObject(j, "lora_alpha", l->alpha);
    cJSON_AddNumberToObject(j, "lora_dropout", 0.0);
    cJSON *tm = cJSON_AddArrayToObject(j, "target_modules");
    for (int i = 0; i < N_TARGETS; i++)
        if (l->targets & TARGETS[i].bit) cJSON_AddItemToArray(tm, cJSON_CreateString(TARGETS[i].proj));
    cJSON_AddStringToObject(j, "bias", "none");
    cJSON_AddBoolToObject(j, "fan_in_fan_out", 0);
    cJSON_AddBoolToObject(j, "inference_mode", 1);
    cJSON_AddBoolToObject(j, "init_lora_weights", 1);
    cJSON_AddBoolToObject(j, "use_rslora", l->rslora);
    cJSON_AddNullToObject(j, "modules_to_save");
    cJSON_AddNullToObject(j, "layers_to_transform");
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    if (!txt) { ds4_set_error("out of memory writing %s", path); return -1; }
    size_t len = strlen(txt);
    char *t2 = realloc(txt, len + 2);
    if (!t2) { free(txt); ds4_set_error("out of memory writing %s", path); return -1; }
    t2[len] = '\n';
    int rc = ds4_write_file_atomic(path, t2, len + 1);
    free(t2);
    return rc;
}

int ds4_lora_save(const ds4_lora *l, const char *dir) {
    if (ds4_mkdir_p(dir) != 0) return -1;
    const int n = l->layout.n_tensors;
    ds4_st_entry *e = ds4_calloc((size_t)n, sizeof *e);
    if (!e) return -1;
    for (int i = 0; i < n; i++) {
        const ds4_tensor_info *t = &l->layout.tensors[i];
        e[i].name = t->name;
        e[i].dtype = DS4_DT_F32;
        e[i].ndim = 2;
        e[i].shape[0] = t->shape[0];
        e[i].shape[1] = t->shape[1];
        e[i].data = l->params + t->offset;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    int rc = ds4_st_write(path, e, n, "{\"format\":\"pt\",\"producer\":\"ds4\"}");
    free(e);
    if (rc != 0) return -1;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    return save_config(l, path);
}

/* ---- load ---------------------------------------------------------------- */

static int load_config(ds4_lora *l, const char *path) {
    char *txt;
    if (ds4_read_file(path, &txt, NULL) != 0) return -1;
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    if (!j || !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        ds4_set_error("%s: not a valid JSON object", path);
        return -1;
    }
    int rc = -1;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "peft_type");
    if (!cJSON_IsString(v) || strcmp(v->valuestring, "LORA")) {
        ds4_set_error("%s: peft_type must be \"LORA\"", path);
        goto out;
    }
    v = cJSON_GetObjectItemCaseSensitive(j, "r");
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int)v->valuedouble) {
        ds4_set_error("%s: field 'r' missing or not an integer", path);
        goto out;
    }
    l->rank = (int)v->valuedouble;
    if (check_rank(l->rank) != 0) { ds4_error_prefix("%s: ", path); goto out; }
    v = cJSON_GetObjectItemCaseSensitive(j, "lora_alpha");
    if (!cJSON_IsNumber(v) || !(v->valuedouble > 0)) {
        ds4_set_error("%s: field 'lora_alpha' missing or not a positive number", path);
        goto out;
    }
    l->alpha = (float)v->valuedouble;
    v = cJSON_GetObjectItemCaseSensitive(j, "fan_in_fan_out");
    if (v && !cJSON_IsFalse(v) && !cJSON_IsNull(v)) {
        ds4_set_error("%s: fan_in_fan_out must be false (ds4 weights are [out, in])", path);
        goto out;
    }
    v = cJSON_GetObjectItemCaseSensitive(j, "bias");
    if (v && !cJSON_IsNull(v) && (!cJSON_IsString(v) || strcmp(v->valuestring, "none"))) {
        ds4_set_error("%s: bias must be \"none\" (ds4 layers have no biases)", path);
        goto out;
    }
    v = cJSON_GetObjectItemCaseSensitive(j, "use_dora");
    if (v && cJSON_IsTrue(v)) { ds4_set_error("%s: use_dora adapters are not supported", path); goto out; }
    v = cJSON_GetObjectItemCaseSensitive(j, "use_rslora");
    if (v && !cJSON_IsBool(v) && !cJSON_IsNull(v)) { ds4_set_error("%s: use_rslora must be a boolean", path); goto out; }
    l->rslora = v && cJSON_IsTrue(v);
    v = cJSON_GetObjectItemCaseSensitive(j, "base_model_name_or_path");
    if (cJSON_IsString(v)) snprintf(l->base_model, sizeof l->base_model, "%s", v->valuestring);
    set_scale(l);
    rc = 0;
out:
    cJSON_Delete(j);
    return rc;
}

/* Copy a file tensor (F32/F16/BF16) into fp32. */
static int read_tensor(float *dst, const ds4_st_tensor *t, const char *path) {
    if (t->dtype == DS4_DT_F32) { memcpy(dst, t->data, t->numel * sizeof(float)); return 0; }
    if (t->dtype != DS4_DT_F16 && t->dtype != DS4_DT_BF16) {
        ds4_set_error("%s: tensor %s has dtype %s; expected F32, F16 or BF16", path, t->name, ds4_dtype_name(t->dtype));
        return -1;
    }
    const uint16_t *s = t->data;
    for (size_t k = 0; k < t->numel; k++) {
        uint16_t h;
        memcpy(&h, s + k, 2);
        dst[k] = t->dtype == DS4_DT_F16 ? ds4_fp16_to_fp32(h) : ds4_bf16_to_fp32(h);
    }
    return 0;
}

/* "base_model.model.<stem>.lora_X.weight" -> stem length and X ('A' / 'B'); 0 if not LoRA. */
static size_t parse_name(const char *name, char *which) {
    const size_t pl = strlen(PEFT_PREFIX), len = strlen(name), sl = strlen(".lora_A.weight");
    if (len <= pl + sl || strncmp(name, PEFT_PREFIX, pl)) return 0;
    const char *suf = name + len - sl;
    if (!strcmp(suf, ".lora_A.weight")) *which = 'A';
    else if (!strcmp(suf, ".lora_B.weight")) *which = 'B';
    else return 0;
    return len - sl - pl;
}

/* Check pair k against m: the base tensor exists, is a 2-D weight used
 * through ds4_linear, and A [r, in], B [out, r] fit it. Sets l->base[k]. */
static int bind_pair(ds4_lora *l, int k, const ds4_model *m, const char *path) {
    const ds4_tensor_info *A = &l->layout.tensors[2 * k], *B = &l->layout.tensors[2 * k + 1];
    const size_t pl = strlen(PEFT_PREFIX), stem = strlen(A->name) - strlen(".lora_A.weight") - pl;
    char base[160];
    snprintf(base, sizeof base, "%.*s.weight", (int)stem, A->name + pl);
    const ds4_tensor_info *t = ds4_layout_find(&m->layout, base);
    if (!t) {
        ds4_set_error("%s: tensor %s adapts %s, which the base model does not have", path, A->name, base);
        return -1;
    }
    if (t->ndim != 2 || !strcmp(base, "model.embed_tokens.weight")) {
        ds4_set_error("%s: tensor %s adapts %s, which is not a linear layer weight", path, A->name, base);
        return -1;
    }
    if (A->shape[1] != t->shape[1]) {
        ds4_set_error("%s: tensor %s has shape [%lld, %lld]; the base weight %s is [%lld, %lld], so A must be [%d, %lld]",
                      path, A->name, (long long)A->shape[0], (long long)A->shape[1], base, (long long)t->shape[0],
                      (long long)t->shape[1], l->rank, (long long)t->shape[1]);
        return -1;
    }
    if (B->shape[0] != t->shape[0]) {
        ds4_set_error("%s: tensor %s has shape [%lld, %lld]; the base weight %s is [%lld, %lld], so B must be [%lld, %d]",
                      path, B->name, (long long)B->shape[0], (long long)B->shape[1], base, (long long)t->shape[0],
                      (long long)t->shape[1], (long long)t->shape[0], l->rank);
        return -1;
    }
    l->base[k] = (int)(t - m->layout.tensors);
    return 0;
}

static int cmp_pair_base(const void *a, const void *b, void *ctx);

ds4_lora *ds4_lora_load(const ds4_model *m, const char *dir) {
    char cpath[4200], path[4200];
    snprintf(cpath, sizeof cpath, "%s/adapter_config.json", dir);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if (!ds4_file_exists(cpath)) { ds4_set_error("adapter directory %s has no adapter_config.json", dir); return NULL; }
    if (!ds4_file_exists(path)) { ds4_set_error("adapter directory %s has no adapter_model.safetensors", dir); return NULL; }
    ds4_lora *l = ds4_calloc(1, sizeof *l);
    if (!l) return NULL;
    ds4_safetensors st;
    int st_open = 0;
    int *order = NULL;
    if (load_config(l, cpath) != 0) goto fail;
    if (ds4_st_open(&st, path) != 0) goto fail;
    st_open = 1;
    if (st.n_tensors == 0) { ds4_set_error("%s: no tensors", path); goto fail; }
    /* every tensor is an A or a B; each A has its B and vice versa */
    order = ds4_malloc(sizeof(int) * (size_t)st.n_tensors);
    if (!order) goto fail;
    int n = 0;
    for (int i = 0; i < st.n_tensors; i++) {
        const ds4_st_tensor *t = &st.tensors[i];
        char which;
        size_t stem = parse_name(t->name, &which);
        if (!stem) {
            ds4_set_error("%s: tensor %s is not a LoRA weight (expected " PEFT_PREFIX "<module>.lora_A.weight or .lora_B.weight)",
                          path, t->name);
            goto fail;
        }
        if (t->ndim != 2) { ds4_set_error("%s: tensor %s has %d dims, expected 2", path, t->name, t->ndim); goto fail; }
        char other[256];
        snprintf(other, sizeof other, "%.*s.lora_%c.weight", (int)(strlen(PEFT_PREFIX) + stem), t->name,
                 which == 'A' ? 'B' : 'A');
        if (!ds4_st_find(&st, other)) { ds4_set_error("%s: tensor %s has no partner: missing %s", path, t->name, other); goto fail; }
        if (which == 'A') order[n++] = i;
    }
    l->base = ds4_malloc(sizeof(int) * (size_t)(n + 1));
    if (!l->base) goto fail;
    int cap = 0;
    for (int k = 0; k < n; k++) {
        const ds4_st_tensor *A = &st.tensors[order[k]];
        char bname[256];
        snprintf(bname, sizeof bname, "%.*s.lora_B.weight", (int)(strlen(A->name) - strlen(".lora_A.weight")), A->name);
        const ds4_st_tensor *B = ds4_st_find(&st, bname);
        if (A->shape[0] != l->rank) {
            ds4_set_error("%s: tensor %s has shape [%lld, %lld] but adapter_config.json says r = %d", path, A->name,
                          (long long)A->shape[0], (long long)A->shape[1], l->rank);
            goto fail;
        }
        if (B->shape[1] != l->rank) {
            ds4_set_error("%s: tensor %s has shape [%lld, %lld] but adapter_config.json says r = %d", path, B->name,
                          (long long)B->shape[0], (long long)B->shape[1], l->rank);
            goto fail;
        }
        if (lay_push(&l->layout, &cap, A->name, A->shape[0], A->shape[1]) != 0) goto fail;
        if (lay_push(&l->layout, &cap, B->name, B->shape[0], B->shape[1]) != 0) goto fail;
        l->base[k] = -1;
        l->n++;
    }
    if (m) {
        for (int k = 0; k < l->n; k++)
            if (bind_pair(l, k, m, path) != 0) goto fail;
        /* pairs in the base model's order: the same file layout whatever wrote it */
        int *perm = ds4_malloc(sizeof(int) * (size_t)l->n);
        if (!perm) goto fail;
        for (int k = 0; k < l->n; k++) perm[k] = k;
        qsort_r(perm, (size_t)l->n, sizeof(int), cmp_pair_base, l->base);
        ds4_layout sorted = {0};
        int scap = 0, *sbase = ds4_malloc(sizeof(int) * (size_t)(l->n + 1));
        for (int k = 0; k < l->n && sbase; k++) {
            const ds4_tensor_info *A = &l->layout.tensors[2 * perm[k]], *B = A + 1;
            if (lay_push(&sorted, &scap, A->name, A->shape[0], A->shape[1]) != 0 ||
                lay_push(&sorted, &scap, B->name, B->shape[0], B->shape[1]) != 0) {
                free(sbase);
                sbase = NULL;
                break;
            }
            sbase[k] = l->base[perm[k]];
        }
        free(perm);
        if (!sbase) { ds4_layout_free(&sorted); goto fail; }
        ds4_layout_free(&l->layout);
        l->layout = sorted;
        free(l->base);
        l->base = sbase;
    }
    if (!(l->params = ds4_alloc_aligned(l->layout.n_floats * sizeof(float)))) goto fail;
    for (int i = 0; i < l->layout.n_tensors; i++) {
        const ds4_tensor_info *t = &l->layout.tensors[i];
        if (read_tensor(l->params + t->offset, ds4_st_find(&st, t->name), path) != 0) goto fail;
        const float *p = l->params + t->offset;
        for (size_t k = 0; k < t->numel; k++)
            if (!isfinite(p[k])) { ds4_set_error("%s: tensor %s holds a NaN or infinity", path, t->name); goto fail; }
        if (i % 2 == 0) {
            char base[160];
            snprintf(base, sizeof base, "%.*s.weight", (int)(strlen(t->name) - strlen(".lora_A.weight") - strlen(PEFT_PREFIX)),
                     t->name + strlen(PEFT_PREFIX));
            l->targets |= target_bit(base);
        }
    }
    free(order);
    ds4_st_close(&st);
    return l;
fail:
    free(order);
    if (st_open) ds4_st_close(&st);
    ds4_lora_free(l);
    return NULL;
}

static int cmp_pair_base(const void *a, const void *b, void *ctx) {
    const int *base = ctx;
    return base[*(const int *)a] - base[*(const int *)b];
}

/* ---- math ------------------------------------------------------------------ */

static float *transposed(const float *a, int rows, int cols, float scale) {
    float *t = ds4_malloc(sizeof(float) * (size_t)rows * cols);
    if (!t) return NULL;
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) t[(size_t)j * rows + i] = scale * a[(size_t)i * cols + j];
    return t;
}

void ds4_lora_effective(const ds4_lora *l, const ds4_model *m, const float *base, float *dst) {
    for (int k = 0; k < l->n; k++) {
        const ds4_tensor_info *t = &m->layout.tensors[l->base[k]];
        const int out = (int)t->shape[0], in = (int)t->shape[1], r = l->rank;
        const float *A = l->params + l->layout.tensors[2 * k].offset;      /* [r, in] */
        const float *B = l->params + l->layout.tensors[2 * k + 1].offset;  /* [out, r] */
        float *w = dst + t->offset;
        if (base != dst) memcpy(w, base + t->offset, t->numel * sizeof(float));
        /* w[out, in] += B[out, r] @ (scale A^T)[in, r]^T */
        float *At = transposed(A, r, in, l->scale);
        if (At) {
            ds4_matmul(w, B, At, out, r, in, 1);
            free(At);
        } else {                                  /* out of memory: plain loops */
            for (int o = 0; o < out; o++)
                for (int j = 0; j < r; j++) {
                    const float b = l->scale * B[(size_t)o * r + j];
                    for (int i = 0; i < in; i++) w[(size_t)o * in + i] += b * A[(size_t)j * in + i];
                }
        }
    }
}

void ds4_lora_grad(const ds4_lora *l, const ds4_model *m, const float *dW, float *g) {
    memset(g, 0, l->layout.n_floats * sizeof(float));
    for (int k = 0; k < l->n; k++) {
        const ds4_tensor_info *t = &m->layout.tensors[l->base[k]];
        const int out = (int)t->shape[0], in = (int)t->shape[1], r = l->rank;
        const float *A = l->params + l->layout.tensors[2 * k].offset;      /* [r, in] */
        const float *B = l->params + l->layout.tensors[2 * k + 1].offset;  /* [out, r] */
        float *dA = g + l->layout.tensors[2 * k].offset;
        float *dB = g + l->layout.tensors[2 * k + 1].offset;
        const float *G = dW + t->offset;                                  /* [out, in] */
        ds4_matmul(dB, G, A, out, in, r, 0);                 /* dB[out, r] = G A^T */
        ds4_matmul_backward(NULL, dA, B, G, A, out, in, r);  /* dA[r, in] += B^T G */
        for (size_t i = 0; i < (size_t)out * r; i++) dB[i] *= l->scale;
        for (size_t i = 0; i < (size_t)r * in; i++) dA[i] *= l->scale;
    }
}

/* ---- models ------------------------------------------------------------------ */

const char *ds4_model_qtype_name(const ds4_model *m) {
    if (!m->quant) return NULL;
    if (m->quant->requested != DS4_Q_F32) return ds4_quant_type_name(m->quant->requested);
    for (int i = 0; i < m->layout.n_tensors; i++)         /* GGUF: the first quantized tensor */
        if (m->quant->t[i].type != DS4_Q_F32) return ds4_quant_type_name(m->quant->t[i].type);
    return NULL;
}

ds4_model *ds4_model_fp32_copy(const ds4_model *m) {
    ds4_model *c = ds4_model_alloc_lazy(&m->cfg);
    if (!c) return NULL;
    for (int i = 0; i < m->layout.n_tensors; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        float *dst = c->params + t->offset;
        const ds4_qtensor *q = m->quant ? &m->quant->t[i] : NULL;
        if (q && q->type != DS4_Q_F32) {
            void *tmp;
            const void *rows = ds4_qtensor_rows(m, i, &tmp);
            if (!rows || ds4_q_dequantize((ds4_qtype)q->type, rows, dst, (int)t->shape[0], (int)t->shape[1]) != 0) {
                free(tmp);
                ds4_error_prefix("dequantizing %s: ", t->name);
                ds4_model_free(c);
                return NULL;
            }
            free(tmp);
        } else {
            memcpy(dst, m->params + t->offset, t->numel * sizeof(float));
        }
    }
    return c;
}

int ds4_lora_merge(ds4_model *m, const ds4_lora *l) {
    if (m->quant) {
        ds4_set_error("LoRA merge needs fp32 weights; dequantize the model first (ds4_model_fp32_copy)");
        return -1;
    }
    for (int k = 0; k < l->n; k++)
        if (l->base[k] < 0 || l->base[k] >= m->layout.n_tensors) {
            ds4_set_error("LoRA merge: the adapter was not checked against this model");
            return -1;
        }
    ds4_lora_effective(l, m, m->params, m->params);
    return 0;
}

/* ---- attach -------------------------------------------------------------------- */

typedef struct attached {
    ds4_lora_slot slot;           /* first: the model sees only this */
    ds4_lora *l;
} attached;

static void attached_free(ds4_lora_slot *s) {
    attached *a = (attached *)s;
    free(a->slot.t);
    ds4_lora_free(a->l);
    free(a);
}

int ds4_lora_attach(ds4_model *m, ds4_lora *l) {
    if (m->lora) { ds4_set_error("the model already has a LoRA adapter attached"); return -1; }
    for (int k = 0; k < l->n; k++) {
        if (l->base[k] < 0 && bind_pair(l, k, m, "LoRA adapter") != 0) return -1;
        const ds4_tensor_info *t = &m->layout.tensors[l->base[k]];
        const ds4_tensor_info *A = &l->layout.tensors[2 * k], *B = A + 1;
        if (A->shape[1] != t->shape[1] || B->shape[0] != t->shape[0]) {
            ds4_set_error("LoRA adapter tensor %s does not fit %s", A->name, t->name);
            return -1;
        }
    }
    attached *a = ds4_calloc(1, sizeof *a);
    if (!a) return -1;
    if (!(a->slot.t = ds4_calloc((size_t)m->layout.n_tensors, sizeof *a->slot.t))) { free(a); return -1; }
    for (int k = 0; k < l->n; k++) {
        ds4_lora_tensor *s = &a->slot.t[l->base[k]];
        s->A = l->params + l->layout.tensors[2 * k].offset;
        s->B = l->params + l->layout.tensors[2 * k + 1].offset;
        s->rank = l->rank;
        s->scale = l->scale;
    }
    a->slot.free_fn = attached_free;
    a->l = l;
    if (ds4_linear_set_lora(m, &a->slot) != 0) {
        free(a->slot.t);
        free(a);
        return -1;
    }
    return 0;
}

int ds4_open_model_lora(const char *dir, const char *lora_dir, ds4_model **m, struct ds4_tokenizer **tok) {
    if (ds4_open_model_dir(dir, m, tok) != 0) return -1;
    if (!lora_dir) return 0;
    ds4_lora *l = ds4_lora_load(*m, lora_dir);
    if (!l || ds4_lora_attach(*m, l) != 0) {
        ds4_lora_free(l);
        ds4_model_free(*m);
        *m = NULL;
        if (tok) { ds4_tokenizer_free(*tok); *tok = NULL; }
        return -1;
    }
    return 0;
}
