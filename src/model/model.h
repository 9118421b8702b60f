/* model.h — the ds4 model in memory: one flat fp32 parameter buffer with a
 * table of named tensors (HF DeepSeek-V3 names) and per-layer pointers laid
 * over it. The same layout is reused for gradients and AdamW moments. */
#ifndef DS4_MODEL_H
#define DS4_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include "ds4.h"

/* One named tensor inside a flat buffer. */
typedef struct ds4_tensor_info {
    char   name[96];
    int    ndim;
    int64_t shape[4];
    size_t offset;      /* in floats from the buffer start */
    size_t numel;
    int    trainable;   /* updated by the optimizer */
    int    decay;       /* AdamW weight decay applies (matrices only) */
} ds4_tensor_info;

/* Pointers into a flat buffer for one layer. Shapes: D = hidden_size,
 * H = num_attention_heads, K = num_key_value_heads, Dh = head_dim,
 * F = intermediate_size, E = n_routed_experts, Fm = moe_intermediate_size,
 * S = n_shared_experts. NULL when the layer lacks the tensor. */
typedef struct ds4_layer {
    float *input_layernorm;          /* [D] */
    float *q_proj;                   /* [H*Dh, D] */
    float *k_proj;                   /* [K*Dh, D] */
    float *v_proj;                   /* [K*Dh, D] */
    float *o_proj;                   /* [D, H*Dh] */
    float *sinks;                    /* [H] (attention_sinks) */
    float *post_attention_layernorm; /* [D] */
    /* dense SwiGLU FFN (layer < first_k_dense_replace) */
    float *gate_proj, *up_proj;      /* [F, D] */
    float *down_proj;                /* [D, F] */
    /* MoE FFN */
    float *router;                   /* [E, D]  mlp.gate.weight */
    float *router_bias;              /* [E]     mlp.gate.e_score_correction_bias (not trained by gradient) */
    float *exp_gate, *exp_up;        /* [E, Fm, D] experts.{j}.gate/up_proj */
    float *exp_down;                 /* [E, D, Fm] experts.{j}.down_proj */
    float *sh_gate, *sh_up;          /* [S*Fm, D] shared_experts */
    float *sh_down;                  /* [D, S*Fm] */
    /* token pruning (SPEC §1.3) */
    float *prune_router;             /* [1, D] */
    /* lightning indexer (SPEC §1.4); Hi = index_n_heads, Di = index_head_dim */
    float *idx_wq;                   /* [Hi*Di, D] */
    float *idx_wk;                   /* [Di, D] */
    float *idx_k_norm;               /* [Di] */
    float *idx_weights_proj;         /* [Hi, D] */
} ds4_layer;

typedef struct ds4_weights {
    float *embed;                    /* [V, D] model.embed_tokens.weight */
    float *norm;                     /* [D]    model.norm.weight */
    float *lm_head;                  /* [V, D] (== embed when tied) */
    ds4_layer layers[DS4_MAX_LAYERS];
} ds4_weights;

/* The parameter layout for a config: built once, shared by params/grads/moments. */
typedef struct ds4_layout {
    ds4_tensor_info *tensors;
    int    n_tensors;
    size_t n_floats;                 /* total floats in a buffer */
} ds4_layout;

int  ds4_layout_build(ds4_layout *lay, const ds4_config *c);
void ds4_layout_free(ds4_layout *lay);
const ds4_tensor_info *ds4_layout_find(const ds4_layout *lay, const char *name);
/* Lay the per-layer pointers over a buffer with this layout. */
void ds4_weights_bind(ds4_weights *w, const ds4_config *c, const ds4_layout *lay, float *base);

/* A LoRA adapter attached for inference (src/lora fills it, ds4_linear uses
 * it): per tensor of the layout, A [rank, in] and B [out, rank] (NULL when the
 * tensor is not adapted); ds4_linear adds scale * (x A^T) B^T. The model owns
 * the slot: ds4_model_free calls free_fn(slot). */
#define DS4_LORA_MAX_RANK 1024
typedef struct ds4_lora_tensor {
    const float *A, *B;
    int   rank;                      /* 1 .. DS4_LORA_MAX_RANK */
    float scale;
} ds4_lora_tensor;
typedef struct ds4_lora_slot {
    ds4_lora_tensor *t;              /* [layout.n_tensors] */
    void (*free_fn)(struct ds4_lora_slot *slot);
} ds4_lora_slot;

struct ds4_model {
    ds4_config  cfg;
    ds4_layout  layout;
    float      *params;              /* [layout.n_floats] */
    ds4_weights w;
    void       *mapping;             /* mmap of model.safetensors when loaded read-only, else NULL */
    size_t      mapping_len;
    /* quantized weights (model/quantized.h): per-tensor blocks that
     * ds4_linear uses instead of params; NULL for an fp32 model */
    struct ds4_qweights *quant;
    size_t      params_mmap_len;     /* params is an anonymous mmap of this size (0: malloc'd) */
    ds4_lora_slot *lora;             /* attached adapter (ds4_linear_set_lora), NULL: none */
};
typedef struct ds4_model ds4_model;

/* A model whose params are an anonymous mmap: pages never written (the fp32
 * storage of quantized tensors) are never resident. */
ds4_model *ds4_model_alloc_lazy(const ds4_config *c);
/* Random init (normal std 0.02, residual projections scaled 1/sqrt(2L), norms 1). */
ds4_model *ds4_model_create(const ds4_config *c, uint64_t seed);
/* Load DIR/config.json + DIR/model.safetensors (fp32 or quantized, see
 * model/quantized.h), or a GGUF file when the path is one. */
ds4_model *ds4_model_load(const char *dir);
/* Save DIR/config.json + DIR/model.safetensors atomically. */
int  ds4_model_save(const ds4_model *m, const char *dir);
void ds4_model_free(ds4_model *m);
size_t ds4_model_n_params(const ds4_model *m);        /* all parameters */
size_t ds4_model_n_active_params(const ds4_model *m); /* per token, excl. embeddings */

#endif
