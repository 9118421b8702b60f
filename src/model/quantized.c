/* quantized.c — quantize a loaded model's weight matrices in memory into
 * ggml blocks (ds4_q_quantize), one contiguous allocation for all of them. */
#include <stdlib.h>
#include <string.h>
#include "model/quantized.h"
#include "util/util.h"

int ds4_model_quantize(ds4_model *m, ds4_qtype want) {
    if (m->quant) { ds4_set_error("ds4_model_quantize: the model is already quantized"); return -1; }
    if (want <= DS4_Q_F32 || want >= DS4_Q_COUNT) { ds4_set_error("ds4_model_quantize: bad type %d", (int)want); return -1; }
    ds4_qweights *q = ds4_calloc(1, sizeof *q);
    if (!q) return -1;
    q->requested = want;
    q->t = ds4_calloc((size_t)m->layout.n_tensors, sizeof *q->t);
    if (!q->t) goto fail;
    size_t total = 0;
    for (int i = 0; i < m->layout.n_tensors; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        ds4_qtype ty = ds4_quant_tensor_type(&m->cfg, t, want);
        q->t[i].type = ty;
        if (ty == DS4_Q_F32) continue;
        q->t[i].row_bytes = ds4_q_row_bytes(ty, (int)t->shape[1]);
        total += ((size_t)t->shape[0] * q->t[i].row_bytes + 63) & ~(size_t)63;
    }
    q->owned = ds4_alloc_aligned(total ? total : 64);
    if (!q->owned) goto fail;
    size_t off = 0;
    for (int i = 0; i < m->layout.n_tensors; i++) {
        const ds4_tensor_info *t = &m->layout.tensors[i];
        if (q->t[i].type == DS4_Q_F32) continue;
        void *dst = (char *)q->owned + off;
        if (ds4_q_quantize((ds4_qtype)q->t[i].type, m->params + t->offset, dst, (int)t->shape[0], (int)t->shape[1])) {
            ds4_error_prefix("quantizing %s to %s", t->name, ds4_q_type_name((ds4_qtype)q->t[i].type));
            goto fail;
        }
        q->t[i].data = dst;
        q->t[i].own = 1;
        off += ((size_t)t->shape[0] * q->t[i].row_bytes + 63) & ~(size_t)63;
    }
    m->quant = q;
    if (ds4_quant_register(m)) { m->quant = NULL; ds4_qweights_free(q); return -1; }
    return 0;
fail:
    ds4_qweights_free(q);
    return -1;
}
