/* decode.h — the batch-1 decode step behind ds4_forward: one token of one
 * sequence, one OpenMP region per run of dense layers, scratch kept in the KV cache. */
#ifndef DS4_MODEL_DECODE_H
#define DS4_MODEL_DECODE_H

#include "model/acts.h"
#include "model/forward.h"

/* 1 when ds4_forward may hand batch b to ds4_decode_step: one token, no saved
 * activations, no token pruning, no indexer, no LoRA adapters. */
int ds4_decode_supported(const ds4_model *m, const ds4_batch *b, const ds4_acts *acts);
/* Runs token at kv->next_pos[seq] (capacity already checked), appends its
 * K/V, advances next_pos and writes logits [V] (NULL: none). The scratch is
 * kv->decode, created on first use. Returns 0, or -1 (out of memory). */
int ds4_decode_step(const ds4_model *m, int token, int seq, ds4_kv_cache *kv, float *logits);
void ds4_decode_scratch_free(ds4_decode_scratch *s);

#endif
