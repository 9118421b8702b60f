/* testmodel.h — the tiny random text model the inference, CLI and server
 * tests share (2 dense layers, D 32, GQA 4/2 heads, over a tokenizer's vocabulary),
 * and the random parameters of the numerical inference tests. */
#ifndef DS4_TESTMODEL_H
#define DS4_TESTMODEL_H

#include <string.h>
#include "ds4.h"
#include "model/model.h"
#include "util/util.h"

/* Parameters N(0, 0.3^2) from rng seed `seed + 1` (init seed `seed`); NULL on failure. */
static inline ds4_model *tiny_text_model(const ds4_tokenizer *tok, int max_pos, uint64_t seed) {
    ds4_config c;
    ds4_config_defaults(&c);
    c.vocab_size = ds4_tokenizer_vocab_size(tok);
    c.hidden_size = 32; c.intermediate_size = 48; c.num_hidden_layers = 2;
    c.num_attention_heads = 4; c.num_key_value_heads = 2; c.head_dim = 8;
    c.first_k_dense_replace = 2; c.max_position_embeddings = max_pos;
    ds4_model *m = ds4_model_create(&c, seed);
    if (!m) return NULL;
    ds4_rng r;
    ds4_rng_seed(&r, seed + 1);
    for (size_t i = 0; i < m->layout.n_floats; i++) m->params[i] = 0.3f * ds4_rng_normal(&r);
    return m;
}

/* Random parameters for numerical tests: norm weights 1 + 0.1 N(0, 1), everything else 0.25 N(0, 1). */
static inline void tiny_randomize(ds4_model *m, uint64_t seed) {
    ds4_rng r;
    ds4_rng_seed(&r, seed);
    for (int t = 0; t < m->layout.n_tensors; t++) {
        const ds4_tensor_info *ti = &m->layout.tensors[t];
        float *p = m->params + ti->offset;
        const int is_norm = strstr(ti->name, "norm") != NULL;
        for (size_t i = 0; i < ti->numel; i++)
            p[i] = is_norm ? 1.0f + 0.1f * ds4_rng_normal(&r) : 0.25f * ds4_rng_normal(&r);
    }
}

#endif
