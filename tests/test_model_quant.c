/* test_model_quant.c — quantized models: quantize -> save -> load keeps every
 * block byte for byte and leaves the fp32 storage of quantized tensors
 * untouched (not resident); ds4_linear against a naive matmul on the
 * dequantized blocks; logits of each type close to fp32; GGUF export -> load
 * (llama layout with its RoPE row permutation checked by hand, ds4 layout
 * for MoE + pruning, quantized blocks, the tokenizer as GGUF metadata); and
 * malformed quantized directories giving clear errors. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "kernels/kernels.h"
#include "model/forward.h"
#include "model/linear.h"
#include "io/safetensors.h"
#include "model/quantized.h"
#include "util/util.h"
#include "testutil.h"

static float g_scale = 1.0f;   /* weights = init x g_scale */

static int setup(void **s) {
    (void)s;
    return tmpdir_make("mquant");
}

static int teardown(void **s) {
    (void)s;
    return tmpdir_remove();
}

/* Dense: D 256, FFN 320 (down_proj has 320 inputs: Q4_K must fall back). */
static void dense_cfg(ds4_config *c) {
    ds4_config_defaults(c);
    c->vocab_size = 384;
    c->hidden_size = 256;
    c->intermediate_size = 320;
    c->num_hidden_layers = 2;
    c->num_attention_heads = 4;
    c->num_key_value_heads = 2;
    c->head_dim = 64;
    c->max_position_embeddings = 64;
    c->first_k_dense_replace = 2;
    c->tie_word_embeddings = 0;
}

/* MoE + pruning: not expressible as llama. */
static void moe_cfg(ds4_config *c) {
    dense_cfg(c);
    c->first_k_dense_replace = 1;
    c->n_routed_experts = 4;
    c->n_group = 2;
    c->topk_group = 1;
    c->topk_per_group = 2;
    c->num_experts_per_tok = 2;
    c->n_shared_experts = 1;
    c->moe_intermediate_size = 64;
    c->n_prune_layers = 1;
    c->prune_layers[0] = 1;
    c->prune_ratio[0] = 0.3f;
    c->tie_word_embeddings = 1;
}

static ds4_model *make(void (*cfg)(ds4_config *), uint64_t seed) {
    ds4_config c;
    cfg(&c);
    ds4_model *m = ds4_model_create(&c, seed);
    assert_non_null(m);
    /* larger weights than the init so that quantization error is visible */
    for (size_t i = 0; i < m->layout.n_floats; i++) m->params[i] *= g_scale;
    return m;
}

static void test_dir_roundtrip(void **s) {
    (void)s;
    for (int qt = DS4_Q_Q8_0; qt < DS4_Q_COUNT; qt++) {
        ds4_model *m = make(dense_cfg, 1);
        assert_int_equal(ds4_model_quantize(m, (ds4_qtype)qt), 0);
        assert_int_equal(ds4_model_quantize(m, (ds4_qtype)qt), -1);    /* twice */
        const ds4_tensor_info *down = ds4_layout_find(&m->layout, "model.layers.0.mlp.down_proj.weight");
        int di = (int)(down - m->layout.tensors);
        int qi = (int)(ds4_layout_find(&m->layout, "model.layers.0.self_attn.q_proj.weight") - m->layout.tensors);
        int ei = (int)(ds4_layout_find(&m->layout, "model.embed_tokens.weight") - m->layout.tensors);
        int li = (int)(ds4_layout_find(&m->layout, "lm_head.weight") - m->layout.tensors);
        assert_int_equal(m->quant->t[qi].type, qt);
        assert_int_equal(m->quant->t[di].type, qt == DS4_Q_Q4_K ? DS4_Q_Q8_0 : qt);   /* 320 % 256 != 0 */
        assert_int_equal(m->quant->t[ei].type, DS4_Q_F32);
        assert_int_equal(m->quant->t[li].type, qt == DS4_Q_Q8_0 ? DS4_Q_Q8_0 : DS4_Q_Q8_0);
        const char *dir = tmp_path(ds4_q_type_name((ds4_qtype)qt));
        assert_int_equal(ds4_model_save(m, dir), 0);
        /* in memory the blocks may be in the x8 layout; the file holds ggml's rows:
         * q_proj's bytes equal quantizing its fp32 rows afresh */
        {
            const ds4_tensor_info *t = &m->layout.tensors[qi];
            const size_t nb = (size_t)t->shape[0] * m->quant->t[qi].row_bytes;
            void *want = malloc(nb);
            assert_int_equal(ds4_q_quantize((ds4_qtype)qt, m->params + t->offset, want, (int)t->shape[0],
                                            (int)t->shape[1]), 0);
            char path[300];
            snprintf(path, sizeof path, "%s/model.safetensors", dir);
            ds4_safetensors st;
            assert_int_equal(ds4_st_open(&st, path), 0);
            const ds4_st_tensor *ft = ds4_st_find(&st, t->name);
            assert_non_null(ft);
            assert_memory_equal(ft->data, want, nb);
            assert_int_equal(m->quant->t[qi].x8, ds4_q_x8_usable((ds4_qtype)qt, (int)t->shape[0]));
            ds4_st_close(&st);
            free(want);
        }
        ds4_model *l = ds4_model_load(dir);
        if (!l) fail_msg("%s", ds4_error());
        assert_non_null(l->quant);
        assert_true(l->params_mmap_len > 0);
        for (int i = 0; i < m->layout.n_tensors; i++) {
            const ds4_tensor_info *t = &m->layout.tensors[i];
            assert_int_equal(l->quant->t[i].type, m->quant->t[i].type);
            if (m->quant->t[i].type == DS4_Q_F32) {
                assert_memory_equal(l->params + t->offset, m->params + t->offset, t->numel * 4);
            } else {
                assert_int_equal(l->quant->t[i].row_bytes, ds4_q_row_bytes((ds4_qtype)m->quant->t[i].type, (int)t->shape[1]));
                assert_memory_equal(l->quant->t[i].data, m->quant->t[i].data, (size_t)t->shape[0] * l->quant->t[i].row_bytes);
            }
        }
        /* the fp32 pages of a quantized tensor were never touched */
        const ds4_tensor_info *t = &l->layout.tensors[qi];
        uintptr_t a = ((uintptr_t)(l->params + t->offset) + 4095) & ~(uintptr_t)4095;
        uintptr_t e = ((uintptr_t)(l->params + t->offset + t->numel)) & ~(uintptr_t)4095;
        unsigned char vec[256];
        assert_true(e > a && (e - a) / 4096 <= 256);
        assert_int_equal(mincore((void *)a, e - a, vec), 0);
        for (size_t p = 0; p < (e - a) / 4096; p++) assert_int_equal(vec[p] & 1, 0);
        ds4_model_free(l);
        ds4_model_free(m);
    }
}

/* ds4_model_quant_rows (bench quant's baseline) puts the blocks back into
 * ggml's rows: the same bytes as quantizing afresh, and the row kernels give
 * the x8 kernels' logits up to float rounding. */
static void test_quant_rows(void **s) {
    (void)s;
    for (int qt = DS4_Q_Q8_0; qt < DS4_Q_COUNT; qt++) {
        ds4_model *m = make(dense_cfg, 4);
        assert_int_equal(ds4_model_quantize(m, (ds4_qtype)qt), 0);
        const int T = 6, V = m->cfg.vocab_size, ids[6] = {1, 5, 9, 2, 6, 5};
        float *a = malloc(sizeof(float) * T * V), *b = malloc(sizeof(float) * T * V);
        assert_int_equal(ds4_forward_logits(m, ids, T, a), 0);
        int n_x8 = 0;
        for (int i = 0; i < m->layout.n_tensors; i++) n_x8 += m->quant->t[i].x8;
        assert_true(n_x8 > 0 || !ds4_q_have_simd());
        assert_int_equal(ds4_model_quant_rows(m), 0);
        for (int i = 0; i < m->layout.n_tensors; i++) {
            const ds4_tensor_info *t = &m->layout.tensors[i];
            const ds4_qtensor *q = &m->quant->t[i];
            assert_int_equal(q->x8, 0);
            if (q->type == DS4_Q_F32) continue;
            const size_t nb = (size_t)t->shape[0] * q->row_bytes;
            void *want = malloc(nb);
            assert_int_equal(ds4_q_quantize((ds4_qtype)q->type, m->params + t->offset, want, (int)t->shape[0],
                                            (int)t->shape[1]), 0);
            assert_memory_equal(q->data, want, nb);
            free(want);
        }
        assert_int_equal(ds4_forward_logits(m, ids, T, b), 0);
        float mx = 0, d = 0;
        for (int i = 0; i < T * V; i++) { mx = fmaxf(mx, fabsf(a[i])); d = fmaxf(d, fabsf(a[i] - b[i])); }
        print_message("  %s: x8 vs row layout logits max |diff| %.2g of |logit| max %.2f\n", ds4_q_type_name((ds4_qtype)qt), d, mx);
        if (!(d <= 0.02f * mx)) fail_msg("%s: x8 vs row logits differ by %g of %g", ds4_q_type_name((ds4_qtype)qt), d, mx);
        free(a); free(b);
        ds4_model_free(m);
    }
}

/* ds4_linear on a quantized tensor == naive matmul on the dequantized blocks
 * (up to activation quantization), and close to the fp32 weights. */
static void test_linear(void **s) {
    (void)s;
    const double tol_w[DS4_Q_COUNT] = {0, 0.02, 0.15, 0.10};
    for (int qt = DS4_Q_Q8_0; qt < DS4_Q_COUNT; qt++) {
        ds4_model *m = make(dense_cfg, 2);
        assert_int_equal(ds4_model_quantize(m, (ds4_qtype)qt), 0);
        const int n = 3;
        for (int i = 0; i < m->layout.n_tensors; i++) {
            const ds4_tensor_info *t = &m->layout.tensors[i];
            if (t->ndim != 2 || m->quant->t[i].type == DS4_Q_F32) continue;
            int out = (int)t->shape[0], in = (int)t->shape[1];
            float *x = malloc((size_t)n * in * 4), *y = malloc((size_t)n * out * 4), *yr = malloc((size_t)n * out * 4);
            float *yf = malloc((size_t)n * out * 4), *wd = malloc((size_t)out * in * 4);
            ds4_rng r;
            ds4_rng_seed(&r, (uint64_t)i);
            for (int k = 0; k < n * in; k++) x[k] = ds4_rng_normal(&r);
            ds4_linear(m, y, x, m->params + t->offset, n, in, out, 0);
            void *tmp;
            const void *rows = ds4_qtensor_rows(m, i, &tmp);
            assert_non_null(rows);
            assert_int_equal(ds4_q_dequantize((ds4_qtype)m->quant->t[i].type, rows, wd, out, in), 0);
            free(tmp);
            double e1 = 0, e2 = 0, nr = 0;
            for (int a = 0; a < n; a++)
                for (int o = 0; o < out; o++) {
                    double acc = 0, accf = 0;
                    for (int k = 0; k < in; k++) {
                        acc += (double)x[a * in + k] * wd[(size_t)o * in + k];
                        accf += (double)x[a * in + k] * m->params[t->offset + (size_t)o * in + k];
                    }
                    double v = y[a * out + o];
                    e1 += (v - acc) * (v - acc);
                    e2 += (v - accf) * (v - accf);
                    nr += accf * accf;
                }
            assert_true(sqrt(e1 / nr) < 0.02);              /* only the int8 activations differ */
            if (sqrt(e2 / nr) >= tol_w[qt]) fail_msg("%s %s rel err %g", ds4_q_type_name((ds4_qtype)qt), t->name, sqrt(e2 / nr));
            /* acc = 1 adds; a run of rows starting inside the tensor uses those rows */
            for (int k = 0; k < n * out; k++) yr[k] = 1.0f;
            ds4_linear(m, yr, x, m->params + t->offset, n, in, out, 1);
            for (int k = 0; k < n * out; k++) assert_true(fabsf(yr[k] - 1.0f - y[k]) < 1e-4f * (1 + fabsf(y[k])));
            /* (rows from the middle of an 8-row group of the x8 layout, ending inside another) */
            int r0 = out / 2 + 3, cnt = DS4_MIN(out - r0, 13);
            ds4_linear(m, yf, x, m->params + t->offset + (size_t)r0 * in, n, in, cnt, 0);
            for (int a = 0; a < n; a++)
                for (int o = 0; o < cnt; o++) assert_true(yf[a * cnt + o] == y[a * out + r0 + o]);
            for (int k = 0; k < n * cnt; k++) yf[k] = 2.0f;
            ds4_linear(m, yf, x, m->params + t->offset + (size_t)r0 * in, n, in, cnt, 1);
            for (int a = 0; a < n; a++)
                for (int o = 0; o < cnt; o++) assert_true(yf[a * cnt + o] == 2.0f + y[a * out + r0 + o]);
            /* no model: found through the registry; weights outside any model: plain fp32 */
            ds4_linear(NULL, yf, x, m->params + t->offset, n, in, out, 0);
            assert_memory_equal(yf, y, (size_t)n * out * 4);
            memcpy(wd, m->params + t->offset, (size_t)out * in * 4);
            ds4_linear(NULL, yf, x, wd, n, in, out, 0);
            ds4_matmul(yr, x, wd, n, in, out, 0);
            assert_memory_equal(yf, yr, (size_t)n * out * 4);
            free(x); free(y); free(yr); free(yf); free(wd);
        }
        ds4_model_free(m);
    }
}

static double rel_rms(const float *a, const float *b, size_t n) {
    double e = 0, r = 0;
    for (size_t i = 0; i < n; i++) { e += (a[i] - (double)b[i]) * (a[i] - (double)b[i]); r += (double)b[i] * b[i]; }
    return sqrt(e / r);
}

/* Full forward: a quantized model's logits equal (up to the int8 activations)
 * those of an fp32 model holding the dequantized weights, and stay close to
 * the original fp32 model's (random weights: loose bounds; the trained model's
 * perplexity is what ds4 bench quant measures). */
static void test_logits_close(void **s) {
    (void)s;
    const double tol[DS4_Q_COUNT] = {0, 0.04, 0.3, 0.3};
    void (*cfgs[2])(ds4_config *) = {dense_cfg, moe_cfg};
    for (int ci = 0; ci < 2; ci++) {
        ds4_model *f = make(cfgs[ci], 3);
        int T = 12, V = f->cfg.vocab_size;
        int ids[12];
        for (int i = 0; i < T; i++) ids[i] = (i * 37 + 5) % V;
        float *lf = malloc((size_t)T * V * 4), *lq = malloc((size_t)T * V * 4), *ld = malloc((size_t)T * V * 4);
        assert_int_equal(ds4_forward_logits(f, ids, T, lf), 0);
        for (int qt = DS4_Q_Q8_0; qt < DS4_Q_COUNT; qt++) {
            ds4_model *q = make(cfgs[ci], 3), *d = make(cfgs[ci], 3);
            assert_int_equal(ds4_model_quantize(q, (ds4_qtype)qt), 0);
            for (int i = 0; i < q->layout.n_tensors; i++) {
                const ds4_tensor_info *t = &q->layout.tensors[i];
                if (q->quant->t[i].type == DS4_Q_F32) continue;
                void *tmp;
                const void *rows = ds4_qtensor_rows(q, i, &tmp);
                assert_non_null(rows);
                assert_int_equal(ds4_q_dequantize((ds4_qtype)q->quant->t[i].type, rows, d->params + t->offset,
                                                  (int)t->shape[0], (int)t->shape[1]), 0);
                free(tmp);
            }
            assert_int_equal(ds4_model_save(q, tmp_path("lg")), 0);
            ds4_model_free(q);
            q = ds4_model_load(tmp_path("lg"));
            assert_non_null(q);
            assert_int_equal(ds4_forward_logits(q, ids, T, lq), 0);
            assert_int_equal(ds4_forward_logits(d, ids, T, ld), 0);
            double e = rel_rms(lq, lf, (size_t)T * V), ed = rel_rms(lq, ld, (size_t)T * V);
            print_message("cfg %d %s: logits rel rms vs fp32 %.4f, vs fp32 on dequantized weights %.4f\n", ci,
                          ds4_q_type_name((ds4_qtype)qt), e, ed);
            if (e >= tol[qt] || e < 1e-6)   /* and it must differ: the blocks are really used */
                fail_msg("cfg %d %s: logits rel rms err %g", ci, ds4_q_type_name((ds4_qtype)qt), e);
            if (ed >= 0.03) fail_msg("cfg %d %s: vs dequantized %g", ci, ds4_q_type_name((ds4_qtype)qt), ed);
            ds4_model_free(q);
            ds4_model_free(d);
        }
        free(lf);
        free(lq);
        free(ld);
        ds4_model_free(f);
    }
}

static void test_gguf_llama(void **s) {
    (void)s;
    ds4_model *m = make(dense_cfg, 4);
    const char *why;
    assert_int_equal(ds4_gguf_llama_compatible(&m->cfg, &why), 1);
    const char *arch;
    assert_int_equal(ds4_model_export_gguf(m, NULL, tmp_path("d.gguf"), &arch), 0);
    assert_string_equal(arch, "llama");
    /* by hand: llama.cpp's interleaved RoPE order puts HF row Dh/2 of head 0 at row 1 */
    ds4_gguf g;
    assert_int_equal(ds4_gguf_open(&g, tmp_path("d.gguf")), 0);
    const ds4_gguf_tensor *q = ds4_gguf_find_tensor(&g, "blk.0.attn_q.weight");
    const ds4_gguf_tensor *k = ds4_gguf_find_tensor(&g, "blk.1.attn_k.weight");
    assert_non_null(q);
    assert_non_null(k);
    assert_int_equal(q->ne[0], 256);
    assert_int_equal(q->ne[1], 256);
    const float *q0 = m->w.layers[0].q_proj, *qg = q->data, *k1 = m->w.layers[1].k_proj, *kg = k->data;
    assert_memory_equal(qg + 0 * 256, q0 + 0 * 256, 1024);
    assert_memory_equal(qg + 1 * 256, q0 + 32 * 256, 1024);
    assert_memory_equal(qg + 2 * 256, q0 + 1 * 256, 1024);
    assert_memory_equal(qg + 65 * 256, q0 + (64 + 32) * 256, 1024);   /* head 1 */
    assert_memory_equal(kg + 127 * 256, k1 + (64 + 63) * 256, 1024);  /* kv head 1, last pair */
    int64_t v;
    assert_int_equal(ds4_gguf_get_i64(&g, "llama.attention.head_count_kv", &v), 0);
    assert_int_equal(v, 2);
    assert_int_equal(ds4_gguf_get_i64(&g, "llama.block_count", &v), 0);
    assert_int_equal(v, 2);
    assert_non_null(ds4_gguf_find_tensor(&g, "output.weight"));
    assert_non_null(ds4_gguf_find_tensor(&g, "blk.1.ffn_down.weight"));
    ds4_gguf_close(&g);
    ds4_model *l = ds4_model_load(tmp_path("d.gguf"));
    if (!l) fail_msg("%s", ds4_error());
    assert_null(l->quant);
    assert_memory_equal(l->params, m->params, m->layout.n_floats * 4);
    ds4_model_free(l);
    /* quantized: blocks survive (q/k rows permuted there and back) */
    assert_int_equal(ds4_model_quantize(m, DS4_Q_Q4_0), 0);
    assert_int_equal(ds4_model_export_gguf(m, NULL, tmp_path("q.gguf"), &arch), 0);
    l = ds4_model_load(tmp_path("q.gguf"));
    if (!l) fail_msg("%s", ds4_error());
    for (int i = 0; i < m->layout.n_tensors; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        assert_int_equal(l->quant->t[i].type, m->quant->t[i].type);
        if (m->quant->t[i].type == DS4_Q_F32) assert_memory_equal(l->params + t->offset, m->params + t->offset, t->numel * 4);
        else assert_memory_equal(l->quant->t[i].data, m->quant->t[i].data, (size_t)t->shape[0] * m->quant->t[i].row_bytes);
    }
    ds4_model_free(l);
    ds4_model_free(m);
}

static void test_gguf_moe(void **s) {
    (void)s;
    ds4_model *m = make(moe_cfg, 5);
    const char *why, *arch;
    assert_int_equal(ds4_gguf_llama_compatible(&m->cfg, &why), 0);
    assert_non_null(strstr(why, "MoE"));
    assert_int_equal(ds4_model_quantize(m, DS4_Q_Q8_0), 0);
    assert_int_equal(ds4_model_export_gguf(m, NULL, tmp_path("m.gguf"), &arch), 0);
    assert_string_equal(arch, "ds4");
    ds4_gguf g;
    assert_int_equal(ds4_gguf_open(&g, tmp_path("m.gguf")), 0);
    const ds4_gguf_tensor *ex = ds4_gguf_find_tensor(&g, "blk.1.ffn_up_exps.weight");
    assert_non_null(ex);
    assert_int_equal(ex->ndim, 3);
    assert_int_equal(ex->ne[0], 256);
    assert_int_equal(ex->ne[1], 64);
    assert_int_equal(ex->ne[2], 4);
    assert_non_null(ds4_gguf_find_tensor(&g, "blk.1.exp_probs_b.bias"));
    assert_non_null(ds4_gguf_find_tensor(&g, "blk.1.ffn_gate_shexp.weight"));
    assert_non_null(ds4_gguf_find_tensor(&g, "blk.1.prune_router.weight"));
    assert_null(ds4_gguf_find_tensor(&g, "output.weight"));       /* tied */
    int64_t v;
    assert_int_equal(ds4_gguf_get_i64(&g, "ds4.expert_group_count", &v), 0);
    assert_int_equal(v, 2);
    ds4_gguf_close(&g);
    ds4_model *l = ds4_model_load(tmp_path("m.gguf"));
    if (!l) fail_msg("%s", ds4_error());
    assert_int_equal(l->cfg.topk_per_group, 2);
    assert_int_equal(l->cfg.n_prune_layers, 1);
    for (int i = 0; i < m->layout.n_tensors; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        assert_int_equal(l->quant->t[i].type, m->quant->t[i].type);
        if (m->quant->t[i].type == DS4_Q_F32) assert_memory_equal(l->params + t->offset, m->params + t->offset, t->numel * 4);
        else assert_memory_equal(l->quant->t[i].data, m->quant->t[i].data, (size_t)t->shape[0] * m->quant->t[i].row_bytes);
    }
    ds4_model_free(l);
    ds4_model_free(m);
}

static void test_gguf_tokenizer(void **s) {
    (void)s;
    ds4_tokenizer *tok = ds4_tokenizer_load("../models/default/tokenizer.json");
    assert_non_null(tok);
    ds4_config c;
    dense_cfg(&c);
    c.vocab_size = ds4_tokenizer_vocab_size(tok) + 10;   /* padded ids beyond the text vocabulary */
    c.hidden_size = 64;
    c.num_attention_heads = 2;
    c.num_key_value_heads = 2;
    c.head_dim = 32;
    c.intermediate_size = 64;
    ds4_model *m = ds4_model_create(&c, 6);
    assert_int_equal(ds4_model_export_gguf(m, tok, tmp_path("t.gguf"), NULL), 0);
    ds4_gguf g;
    assert_int_equal(ds4_gguf_open(&g, tmp_path("t.gguf")), 0);
    char *model;
    assert_int_equal(ds4_gguf_get_str(&g, "tokenizer.ggml.model", &model), 0);
    assert_string_equal(model, "gpt2");
    free(model);
    const ds4_gguf_kv *tk = ds4_gguf_find(&g, "tokenizer.ggml.tokens");
    assert_int_equal(tk->n, (uint64_t)c.vocab_size);
    /* GPT-2 byte mapping by hand: byte ' ' (32) is U+0120 "Ġ", byte 'a' is itself */
    int sp = -1, a = -1;
    for (int i = 0; i < 256; i++) {
        const char *b;
        size_t n;
        ds4_tokenizer_token_bytes(tok, i, &b, &n);
        if (n == 1 && b[0] == ' ') sp = i;
        if (n == 1 && b[0] == 'a') a = i;
    }
    assert_true(sp >= 0 && a >= 0);
    assert_true(ds4_gguf_str_eq(tk->strs[sp], "\xc4\xa0"));
    assert_true(ds4_gguf_str_eq(tk->strs[a], "a"));
    ds4_gguf_close(&g);
    ds4_model *l;
    ds4_tokenizer *t2;
    if (ds4_model_open_gguf(tmp_path("t.gguf"), &l, &t2)) fail_msg("%s", ds4_error());
    assert_int_equal(ds4_tokenizer_vocab_size(t2), ds4_tokenizer_vocab_size(tok));
    const char *text = "The quick brown fox, naïvely 1234 — jumped!\n  <|eos|> over";
    int *i1, *i2;
    size_t n1, n2;
    assert_int_equal(ds4_tokenizer_encode(tok, text, strlen(text), &i1, &n1), 0);
    assert_int_equal(ds4_tokenizer_encode(t2, text, strlen(text), &i2, &n2), 0);
    assert_int_equal(n1, n2);
    assert_memory_equal(i1, i2, n1 * sizeof(int));
    assert_int_equal(ds4_tokenizer_special(t2, "<|bos|>"), ds4_tokenizer_special(tok, "<|bos|>"));
    free(i1);
    free(i2);
    ds4_tokenizer_free(t2);
    ds4_model_free(l);
    ds4_model_free(m);
    ds4_tokenizer_free(tok);
}

/* Rewrite a quantized directory's safetensors with a changed tensor/metadata. */
static void test_bad_quant_dir(void **s) {
    (void)s;
    ds4_model *m = make(dense_cfg, 7);
    assert_int_equal(ds4_model_quantize(m, DS4_Q_Q8_0), 0);
    const char *dir = tmp_path("bad");
    assert_int_equal(ds4_model_save(m, dir), 0);
    int n = m->layout.n_tensors;
    ds4_st_entry *e = calloc((size_t)n, sizeof *e);
    for (int i = 0; i < n; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        e[i].name = t->name;
        if (m->quant->t[i].type == DS4_Q_F32) {
            e[i].dtype = DS4_DT_F32;
            e[i].ndim = t->ndim;
            for (int d = 0; d < t->ndim; d++) e[i].shape[d] = t->shape[d];
            e[i].data = m->params + t->offset;
        } else {
            e[i].dtype = DS4_DT_U8;
            e[i].ndim = 2;
            e[i].shape[0] = t->shape[0];
            e[i].shape[1] = (int64_t)m->quant->t[i].row_bytes;
            e[i].data = m->quant->t[i].data;
        }
    }
    char path[300];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    struct { const char *meta; const char *needle; } cases[] = {
        /* q_proj says q4_0 but holds q8_0 rows */
        {"{\"ds4.quantized\":\"1\",\"ds4.qtype.model.layers.0.self_attn.q_proj.weight\":"
         "\"{\\\"type\\\":\\\"q4_0\\\",\\\"ggml_type\\\":2,\\\"shape\\\":[256,256]}\"}", "must be U8"},
        {"{\"ds4.quantized\":\"1\",\"ds4.qtype.model.layers.0.self_attn.q_proj.weight\":"
         "\"{\\\"type\\\":\\\"q5_1\\\",\\\"ggml_type\\\":7,\\\"shape\\\":[256,256]}\"}", "not one ds4 reads"},
        {"{\"ds4.quantized\":\"1\",\"ds4.qtype.model.layers.0.self_attn.q_proj.weight\":"
         "\"{\\\"type\\\":\\\"q8_0\\\",\\\"ggml_type\\\":8,\\\"shape\\\":[256,128]}\"}", "logical shape"},
        {"{\"ds4.quantized\":\"1\",\"ds4.qtype.model.layers.0.self_attn.q_proj.weight\":\"nonsense\"}", "ds4.qtype"},
        {"{\"ds4.quantized\":\"1\",\"ds4.qtype.model.layers.9.mlp.up_proj.weight\":"
         "\"{\\\"type\\\":\\\"q8_0\\\",\\\"ggml_type\\\":8,\\\"shape\\\":[1,32]}\"}", NULL},
        /* no ds4.qtype for U8 tensors at all */
        {"{\"ds4.quantized\":\"1\"}", "shape"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        assert_int_equal(ds4_st_write(path, e, n, cases[k].meta), 0);
        ds4_model *l = ds4_model_load(dir);
        if (l) fail_msg("case %zu loaded", k);
        if (cases[k].needle && !strstr(ds4_error(), cases[k].needle))
            fail_msg("case %zu: '%s' lacks '%s'", k, ds4_error(), cases[k].needle);
    }
    free(e);
    ds4_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dir_roundtrip), cmocka_unit_test(test_linear),
        cmocka_unit_test(test_logits_close),  cmocka_unit_test(test_gguf_llama),
        cmocka_unit_test(test_gguf_moe),      cmocka_unit_test(test_gguf_tokenizer),
        cmocka_unit_test(test_bad_quant_dir),   cmocka_unit_test(test_quant_rows),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
