/* quantized.h — a ds4 model whose weight matrices are held in ggml block
 * formats (Q8_0, Q4_0, Q4_K): the per-tensor table ds4_linear consults, the
 * quantized model directory format, and GGUF export/import.
 *
 * Quantized model directory: config.json, tokenizer.json and model.safetensors
 * where each quantized tensor is stored with dtype U8 and shape
 * [rows, row_bytes] (row_bytes = cols / block_elems * block_bytes, the rows'
 * ggml blocks back to back), and the safetensors "__metadata__" holds
 *   "ds4.quantized": "1"
 *   "ds4.qtype.<tensor name>": "{\"type\":\"q4_k\",\"ggml_type\":12,\"shape\":[768,256]}"
 * naming the ggml type and the logical [rows, cols] shape. Tensors without a
 * ds4.qtype entry are F32/F16/BF16 as in an fp32 directory. */
#ifndef DS4_MODEL_QUANTIZED_H
#define DS4_MODEL_QUANTIZED_H

#include <stddef.h>
#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "quant/quant.h"

/* One tensor of the layout: type DS4_Q_F32 means "use the fp32 params". */
typedef struct ds4_qtensor {
    int type;                /* ds4_qtype */
    const void *data;        /* [rows, row_bytes] ggml blocks, in row layout or (x8) x8 layout */
    size_t row_bytes;
    int x8;                  /* data is in the x8 layout of quant.h (set at registration) */
    int own;                 /* data is private to the model (may be converted in place) */
} ds4_qtensor;

struct ds4_qweights {
    ds4_qtensor *t;          /* [layout.n_tensors], parallel to layout.tensors */
    int requested;           /* ds4_qtype asked for (per-tensor types may fall back) */
    void *owned;             /* malloc'd storage of the blocks (in-memory quantization) */
    ds4_safetensors st;      /* the file the blocks point into (quantized directory) */
    int st_open;
    ds4_gguf gguf;           /* or the GGUF file */
    int gguf_open;
    void **keep;             /* [n_keep] other malloc'd blocks (permuted GGUF rows) */
    int n_keep;
    const ds4_model *owner;  /* set by ds4_quant_register */
    /* tied embeddings: a Q8_0 copy of the table [V, row bytes] for the output
     * projection only (the embedding lookup stays fp32). Made at registration,
     * never saved; NULL when the table cannot be quantized. */
    const void *lm_head_q8;
    size_t lm_head_rb;
    int lm_head_x8;          /* lm_head_q8 is in the x8 layout */
};
typedef struct ds4_qweights ds4_qweights;

void ds4_qweights_free(ds4_qweights *q);
/* The blocks of quantized tensor i in ggml's row layout (what files hold):
 * its data, or for an x8 tensor a converted copy left in *tmp for the caller
 * to free (*tmp = NULL otherwise). NULL with an error when out of memory. */
const void *ds4_qtensor_rows(const ds4_model *m, int i, void **tmp);
/* Put every x8 tensor of m back into ggml's row layout in place (x8 tensors
 * are always the model's own blocks), so the row kernels run: the baseline
 * of ds4 bench quant. Not undone; -1 with an error when out of memory. */
int ds4_model_quant_rows(ds4_model *m);
/* Free p with q. */
int ds4_qweights_keep(ds4_qweights *q, void *p);
/* Registration also puts every Q8_0 / Q4_0 / Q4_K matrix with a multiple of 8
 * rows into the x8 layout when its kernels are compiled in: in place when the
 * blocks are the model's own, else in a copy (a file mapping stays read-only).
 * Quantized models are registered process-wide (at most 64 at once) so that
 * ds4_linear(NULL, ...) finds the model a weight pointer belongs to: code that
 * sees only a layer (MoE experts, the indexer) needs no model argument.
 * Quantize and the loaders register; ds4_model_free unregisters. */
int ds4_quant_register(ds4_model *m);
const ds4_model *ds4_quant_owner_of(const float *w);
/* "f32", "q8_0", "q4_0", "q4_k" without linking the kernels. */
const char *ds4_quant_type_name(int qtype);

/* Type a tensor gets when the model is quantized to `want`: F32 for what stays
 * in full precision (embeddings, norms, biases, sinks, the MoE router and the
 * pruning router), `want` for weight matrices whose column count is a multiple
 * of the block size, else Q8_0 when cols % 32 == 0, else F32. */
ds4_qtype ds4_quant_tensor_type(const ds4_config *c, const ds4_tensor_info *t, ds4_qtype want);

/* Quantize the weight matrices of m in memory (m->quant). The fp32 params
 * stay allocated (the caller's copy); ds4_linear uses the blocks. Fails if m
 * is already quantized. */
int ds4_model_quantize(ds4_model *m, ds4_qtype want);

/* Bytes one decode token reads from weights: every quantized or fp32 matrix
 * used per token (routed experts counted at their active share), norms and the
 * embedding row excluded. */
size_t ds4_model_weight_bytes_per_token(const ds4_model *m);
/* Total bytes of weights as stored (quantized blocks + fp32 tensors). */
size_t ds4_model_weight_bytes(const ds4_model *m);

/* Quantized directory I/O (model.c calls these). */
int ds4_model_save_quantized(const ds4_model *m, const char *dir);
/* st is opened by the caller; on success the model owns it. */
ds4_model *ds4_model_load_quantized(const ds4_config *c, ds4_safetensors *st, const char *path);
/* 1 if the safetensors metadata marks a quantized directory. */
int ds4_st_is_quantized(const ds4_safetensors *st);

/* ---- GGUF (quantized_gguf.c) ----------------------------------------------
 * Architecture written: "llama" when the config is a plain dense model that
 * llama.cpp's llama architecture computes identically (no MoE, pruning,
 * indexer, sinks or sliding window); q_proj/k_proj rows are then permuted
 * from ds4's rotate-half RoPE layout to llama.cpp's interleaved one, as its
 * converter does. Otherwise "ds4", with llama.cpp tensor names where one
 * exists (deepseek2's for the MoE parts) and ds4's own names for the rest.
 * Both carry "ds4.config" (config.json text) so ds4 reads them back exactly. */
struct ds4_tokenizer;
/* tok may be NULL (no tokenizer metadata). m may be quantized. */
int ds4_model_export_gguf(const ds4_model *m, const struct ds4_tokenizer *tok, const char *path,
                          const char **arch_out);
/* 1 when the config can be written as llama.cpp's "llama" architecture; else 0
 * and *why (static text) says what llama.cpp lacks. */
int ds4_gguf_llama_compatible(const ds4_config *c, const char **why);
ds4_model *ds4_model_load_gguf(const char *path);
/* Model and (when tok != NULL) tokenizer from a GGUF file (quantized_gguf_tok.c). */
int ds4_model_open_gguf(const char *path, ds4_model **m, struct ds4_tokenizer **tok);
struct ds4_tokenizer *ds4_tokenizer_from_gguf(const ds4_gguf *g);

#endif
