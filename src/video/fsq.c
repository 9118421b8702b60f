/* fsq.c — finite scalar quantization (SPEC §3): bound, round, straight-through
 * backward, and the mixed-radix code index (first channel least significant).
 * No codebook, no commitment loss: the codes are the digits themselves. */
#include <math.h>
#include "ds4.h"
#include "video/video.h"

int ds4_fsq_init(ds4_fsq *f, const int *levels, int n) {
    if (n < 1 || n > DS4_VTOK_MAX_LEVELS) {
        ds4_set_error("fsq: levels must have 1 to %d entries, got %d", DS4_VTOK_MAX_LEVELS, n);
        return -1;
    }
    int64_t codes = 1;
    for (int c = 0; c < n; c++) {
        int L = levels[c];
        /* L = 2 is out: half = 0.4995 < offset 0.5, so shift = atanh(offset / half)
         * is undefined with SPEC's (1 - 1e-3) */
        if (L < 3 || L > 65536) {
            ds4_set_error("fsq: levels[%d] is %d, must be in [3, 65536] (L = 2 leaves "
                          "atanh(offset / half) undefined)", c, L);
            return -1;
        }
        f->levels[c] = L;
        f->hl[c] = L / 2;
        f->basis[c] = (int32_t)codes;
        codes *= L;
        if (codes > INT32_MAX) {
            ds4_set_error("fsq: %d levels give more than 2^31 - 1 codes", n);
            return -1;
        }
        double half = (L - 1) * (1.0 - 1e-3) / 2.0;
        double offset = (L % 2 == 0) ? 0.5 : 0.0;
        f->half[c] = (float)half;
        f->offset[c] = (float)offset;
        f->shift[c] = (float)atanh(offset / half);
    }
    f->n = n;
    f->n_codes = (int32_t)codes;
    return 0;
}

float ds4_fsq_bound(const ds4_fsq *f, int c, float z) {
    return tanhf(z + f->shift[c]) * f->half[c] - f->offset[c];
}

void ds4_fsq_forward(const ds4_fsq *f, const float *z, float *q, int32_t *codes,
                     size_t n_tok, int round) {
    const int n = f->n;
    for (size_t t = 0; t < n_tok; t++) {
        int32_t code = 0;
        for (int c = 0; c < n; c++) {
            float b = ds4_fsq_bound(f, c, z[t * n + c]);
            float r = rintf(b);                 /* half to even, like torch.round */
            int d = (int)r + f->hl[c];
            /* bound() stays inside (-hl - 0.5, hl - offset + 0.5); clamp guards float edges */
            if (d < 0) d = 0;
            if (d >= f->levels[c]) d = f->levels[c] - 1;
            code += d * f->basis[c];
            if (q) q[t * n + c] = (round ? r : b) / (float)f->hl[c];
        }
        if (codes) codes[t] = code;
    }
}

void ds4_fsq_backward(const ds4_fsq *f, const float *z, const float *dq, float *dz,
                      size_t n_tok) {
    const int n = f->n;
    for (size_t t = 0; t < n_tok; t++)
        for (int c = 0; c < n; c++) {
            float th = tanhf(z[t * n + c] + f->shift[c]);
            dz[t * n + c] = dq[t * n + c] * (1.0f - th * th) * f->half[c] / (float)f->hl[c];
        }
}

int ds4_fsq_code_to_digits(const ds4_fsq *f, int32_t code, int *digits) {
    if (code < 0 || code >= f->n_codes) {
        ds4_set_error("fsq: code %d out of range [0, %d)", (int)code, (int)f->n_codes);
        return -1;
    }
    for (int c = 0; c < f->n; c++) {
        digits[c] = code % f->levels[c];
        code /= f->levels[c];
    }
    return 0;
}

int32_t ds4_fsq_digits_to_code(const ds4_fsq *f, const int *digits) {
    int32_t code = 0;
    for (int c = 0; c < f->n; c++) {
        if (digits[c] < 0 || digits[c] >= f->levels[c]) {
            ds4_set_error("fsq: digit %d of channel %d out of range [0, %d)", digits[c], c,
                          f->levels[c]);
            return -1;
        }
        code += digits[c] * f->basis[c];
    }
    return code;
}

int ds4_fsq_code_to_q(const ds4_fsq *f, int32_t code, float *q) {
    int d[DS4_VTOK_MAX_LEVELS];
    if (ds4_fsq_code_to_digits(f, code, d) != 0) return -1;
    for (int c = 0; c < f->n; c++) q[c] = (float)(d[c] - f->hl[c]) / (float)f->hl[c];
    return 0;
}
