/* test_video_fsq.c — FSQ (SPEC §3) against independent checks: hand-computed
 * cases, the PyTorch reference of tools/reference_fsq.py (fixtures/video/
 * fsq_ref.txt: bound, q, code, straight-through gradient), codes -> digits ->
 * codes round trips over every code, and bound()'s derivative by finite
 * differences. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ds4.h"
#include "util/util.h"
#include "video/video.h"

/* Hand cases for [8,5,5,5]: z = 0 maps to q = 0 on every channel (for L = 8 the
 * shift makes bound(0) = 0 exactly: tanh(atanh(0.5/half)) * half - 0.5), so the
 * digits are [4,2,2,2] and the code 4 + 8*(2 + 5*(2 + 5*2)) = 500; saturated
 * z gives the extreme digits: [0,0,0,0] -> 0 and [7,4,4,4] -> 999. */
static void test_hand_cases(void **state) {
    (void)state;
    ds4_fsq f;
    const int lv[4] = {8, 5, 5, 5};
    assert_int_equal(ds4_fsq_init(&f, lv, 4), 0);
    assert_int_equal(f.n_codes, 1000);
    assert_int_equal(f.basis[0], 1);
    assert_int_equal(f.basis[1], 8);
    assert_int_equal(f.basis[2], 40);
    assert_int_equal(f.basis[3], 200);
    /* constants */
    assert_float_equal(f.half[0], 7 * 0.999 / 2, 1e-6);
    assert_float_equal(f.offset[0], 0.5, 0);
    assert_float_equal(f.half[1], 4 * 0.999 / 2, 1e-6);
    assert_float_equal(f.offset[1], 0.0, 0);
    assert_float_equal(f.shift[1], 0.0, 0);
    assert_float_equal(f.shift[0], atanh(0.5 / 3.4965), 1e-6);
    float z[4] = {0, 0, 0, 0}, q[4];
    int32_t code;
    ds4_fsq_forward(&f, z, q, &code, 1, 1);
    assert_int_equal(code, 500);
    for (int c = 0; c < 4; c++) assert_float_equal(q[c], 0.0f, 0);
    float zl[4] = {50, 50, 50, 50}, zs[4] = {-50, -50, -50, -50};
    ds4_fsq_forward(&f, zl, q, &code, 1, 1);
    assert_int_equal(code, 999);
    assert_float_equal(q[0], 0.75f, 0);          /* (7 - 4) / 4 */
    for (int c = 1; c < 4; c++) assert_float_equal(q[c], 1.0f, 0);
    ds4_fsq_forward(&f, zs, q, &code, 1, 1);
    assert_int_equal(code, 0);
    for (int c = 0; c < 4; c++) assert_float_equal(q[c], -1.0f, 0);
    /* one channel at a time: bound(z) = tanh(z) * 1.998 for L = 5; z = atanh(1.2/1.998)
     * gives bound 1.2 -> round 1 -> q 0.5, digit 3 -> code 3 * 8 = 24 on channel 1 */
    float z1[4] = {0, (float)atanh(1.2 / 1.998), 0, 0};
    ds4_fsq_forward(&f, z1, q, &code, 1, 1);
    assert_float_equal(q[1], 0.5f, 0);
    assert_int_equal(code, 500 - 2 * 8 + 3 * 8);
    /* the smooth path: q = bound / (L // 2) */
    ds4_fsq_forward(&f, z1, q, &code, 1, 0);
    assert_float_equal(q[1], 1.2f / 2.0f, 1e-5);
    assert_int_equal(code, 500 - 2 * 8 + 3 * 8);
    /* digits */
    int d[4];
    assert_int_equal(ds4_fsq_code_to_digits(&f, 500, d), 0);
    assert_int_equal(d[0], 4); assert_int_equal(d[1], 2); assert_int_equal(d[2], 2); assert_int_equal(d[3], 2);
    assert_int_equal(ds4_fsq_code_to_digits(&f, 1 + 8 * 3 + 40 * 4 + 200 * 1, d), 0);
    assert_int_equal(d[0], 1); assert_int_equal(d[1], 3); assert_int_equal(d[2], 4); assert_int_equal(d[3], 1);
    assert_int_equal(ds4_fsq_code_to_digits(&f, 1000, d), -1);
    assert_int_equal(ds4_fsq_code_to_digits(&f, -1, d), -1);
    int bad[4] = {8, 0, 0, 0};
    assert_int_equal(ds4_fsq_digits_to_code(&f, bad), -1);
    /* invalid level sets */
    /* L = 2: offset / half = 0.5 / 0.4995 > 1, atanh undefined under SPEC's (1 - 1e-3) */
    const int l2[2] = {2, 5};
    assert_int_equal(ds4_fsq_init(&f, l2, 2), -1);
    assert_non_null(strstr(ds4_error(), "levels[0]"));
    const int l1[1] = {1}, l9[9] = {3, 3, 3, 3, 3, 3, 3, 3, 3}, big[3] = {65536, 65536, 2};
    assert_int_equal(ds4_fsq_init(&f, l1, 1), -1);
    assert_int_equal(ds4_fsq_init(&f, l9, 9), -1);
    assert_int_equal(ds4_fsq_init(&f, big, 3), -1);
    assert_int_equal(ds4_fsq_init(&f, lv, 0), -1);
}

/* Every code of several level sets: code -> digits -> code, code -> q ->
 * (quantize the atanh pre-image of q) -> same code. */
static void test_round_trip_all_codes(void **state) {
    (void)state;
    const int sets[4][5] = {{4, 8, 5, 5, 5}, {3, 7, 6, 3}, {3, 4, 3, 16}, {1, 5}};
    for (int s = 0; s < 4; s++) {
        ds4_fsq f;
        assert_int_equal(ds4_fsq_init(&f, &sets[s][1], sets[s][0]), 0);
        int expect = 1;
        for (int c = 0; c < f.n; c++) expect *= f.levels[c];
        assert_int_equal(f.n_codes, expect);
        for (int32_t code = 0; code < f.n_codes; code++) {
            int d[DS4_VTOK_MAX_LEVELS];
            float q[DS4_VTOK_MAX_LEVELS], z[DS4_VTOK_MAX_LEVELS], q2[DS4_VTOK_MAX_LEVELS];
            assert_int_equal(ds4_fsq_code_to_digits(&f, code, d), 0);
            assert_int_equal(ds4_fsq_digits_to_code(&f, d), code);
            assert_int_equal(ds4_fsq_code_to_q(&f, code, q), 0);
            for (int c = 0; c < f.n; c++) {
                assert_true(q[c] >= -1.0f && q[c] <= 1.0f);
                /* z with bound(z) = q * (L // 2) moved 0.2 towards 0 (the extreme
                 * targets of odd L lie just outside bound()'s open range) */
                double target = q[c] * f.hl[c];
                target -= target > 0 ? 0.2 : target < 0 ? -0.2 : 0;
                z[c] = (float)(atanh((target + f.offset[c]) / f.half[c]) - f.shift[c]);
            }
            int32_t back;
            ds4_fsq_forward(&f, z, q2, &back, 1, 1);
            assert_int_equal(back, code);
            for (int c = 0; c < f.n; c++) assert_float_equal(q2[c], q[c], 0);
        }
    }
}

/* The PyTorch reference fixture. */
static void test_reference_fixture(void **state) {
    (void)state;
    FILE *fp = fopen("fixtures/video/fsq_ref.txt", "r");
    assert_non_null(fp);
    char line[4096];
    int sets = 0, rows_total = 0;
    ds4_fsq f;
    int rows_left = 0;
    while (fgets(line, sizeof line, fp)) {
        if (line[0] == '#') continue;
        if (!strncmp(line, "levels", 6)) {
            int lv[8], n = 0, off = 0, k;
            char *p = line + 6;
            assert_int_equal(sscanf(p, "%d%n", &n, &off), 1);
            p += off;
            for (int c = 0; c < n; c++) {
                assert_int_equal(sscanf(p, "%d%n", &lv[c], &k), 1);
                p += k;
            }
            assert_int_equal(ds4_fsq_init(&f, lv, n), 0);
            sets++;
            continue;
        }
        if (!strncmp(line, "rows", 4)) {
            rows_left = atoi(line + 4);
            assert_true(rows_left > 10);
            continue;
        }
        assert_true(rows_left > 0);
        rows_left--;
        double v[4 * 8 + 1];
        int n = 4 * f.n + 1, k;
        char *p = line;
        for (int i = 0; i < n; i++) {
            assert_int_equal(sscanf(p, "%lf%n", &v[i], &k), 1);
            p += k;
        }
        float z[8], q[8], dq[8], dz[8], qs[8];
        for (int c = 0; c < f.n; c++) { z[c] = (float)v[c]; dq[c] = 1.0f; }
        int32_t code;
        ds4_fsq_forward(&f, z, q, &code, 1, 1);
        assert_int_equal(code, (int32_t)v[3 * f.n]);
        ds4_fsq_forward(&f, z, qs, NULL, 1, 0);
        ds4_fsq_backward(&f, z, dq, dz, 1);
        for (int c = 0; c < f.n; c++) {
            assert_float_equal(ds4_fsq_bound(&f, c, z[c]), v[f.n + c], 1e-5);
            assert_float_equal(q[c], v[2 * f.n + c], 0);
            assert_float_equal(qs[c], v[f.n + c] / f.hl[c], 1e-5);
            assert_float_equal(dz[c], v[3 * f.n + 1 + c], 1e-5);
        }
        rows_total++;
    }
    fclose(fp);
    assert_int_equal(sets, 4);
    assert_true(rows_total >= 150);
}

/* bound'(z) / (L // 2), as used by the straight-through backward, against
 * central differences of bound() in double. */
static void test_ste_gradient_fd(void **state) {
    (void)state;
    const int lv[4] = {8, 5, 6, 3};
    ds4_fsq f;
    assert_int_equal(ds4_fsq_init(&f, lv, 4), 0);
    ds4_rng r;
    ds4_rng_seed(&r, 99);
    for (int i = 0; i < 400; i++) {
        float z[4], dq[4], dz[4];
        for (int c = 0; c < 4; c++) { z[c] = 2.5f * ds4_rng_normal(&r); dq[c] = ds4_rng_normal(&r); }
        ds4_fsq_backward(&f, z, dq, dz, 1);
        for (int c = 0; c < 4; c++) {
            double h = 1e-4;
            double bp = tanh((double)z[c] + h + f.shift[c]) * f.half[c] - f.offset[c];
            double bm = tanh((double)z[c] - h + f.shift[c]) * f.half[c] - f.offset[c];
            double fd = (bp - bm) / (2 * h) / f.hl[c] * dq[c];
            assert_float_equal(dz[c], fd, 1e-4 * (1 + fabs(fd)));
            /* and ds4_fsq_bound against the same formula */
            double b = tanh((double)z[c] + f.shift[c]) * f.half[c] - f.offset[c];
            assert_float_equal(ds4_fsq_bound(&f, c, z[c]), b, 1e-5);
            /* the smooth path's finite difference equals the STE gradient */
            float zp[4], zm[4], qp[4], qm[4];
            memcpy(zp, z, sizeof zp);
            memcpy(zm, z, sizeof zm);
            zp[c] += 1e-2f;
            zm[c] -= 1e-2f;
            ds4_fsq_forward(&f, zp, qp, NULL, 1, 0);
            ds4_fsq_forward(&f, zm, qm, NULL, 1, 0);
            double fd2 = (qp[c] - qm[c]) / 2e-2 * dq[c];
            assert_float_equal(dz[c], fd2, 2e-3 * (1 + fabs(fd2)));
        }
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hand_cases),
        cmocka_unit_test(test_round_trip_all_codes),
        cmocka_unit_test(test_reference_fixture),
        cmocka_unit_test(test_ste_gradient_fd),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
