/* linear.h — every weight matmul of the model forward goes through
 * ds4_linear: fp32 weights use ds4_matmul, a quantized copy (m->quant) uses
 * the int8 kernels, and the LoRA slot adds low-rank adapters. */
#ifndef DS4_MODEL_LINEAR_H
#define DS4_MODEL_LINEAR_H

#include <stddef.h>
#include "model/model.h"

/* y[n, out] (+)= x[n, in] @ w[out, in]^T. w points into m->params (a whole
 * tensor or a run of its rows). m NULL: the registered quantized model whose
 * params hold w, if any (model/quantized.h). When w has no quantized copy
 * this is exactly ds4_matmul. acc: y += instead of y =. */
void ds4_linear(const ds4_model *m, float *y, const float *x, const float *w, int n, int in, int out, int acc);

/* The quantized copy of w (out rows starting at w): its ds4_qtype and the
 * first row's blocks; DS4_Q_F32 / NULL when w is used in fp32. When the
 * tensor is in the x8 layout, *x8 = 1 (else 0), *qdata is the start of the
 * group of 8 rows that holds w's row, and *skip the rows of that group before
 * it (0 when w starts a group). */
int ds4_linear_lookup(const ds4_model *m, const float *w, int in, int out, const void **qdata, int *x8, int *skip);

/* Attach a LoRA slot to m for inference (NULL: detach without freeing), so
 * that ds4_linear, also when called with m NULL, adds the adapters. The
 * model owns an attached slot (ds4_model_free detaches and frees it). At
 * most 64 models with adapters at once. */
int ds4_linear_set_lora(ds4_model *m, ds4_lora_slot *slot);

/* The adapter of the tensor whose rows row0 .. row0+out start at w (the
 * caller adds scale * B[rows] (A x)), or NULL when it has none. The batch-1
 * decode step (decode.c) reads weights without ds4_linear and uses this. */
const ds4_lora_tensor *ds4_linear_lora(const ds4_model *m, const float *w, int in, int out, size_t *row0);

#endif
