/* fvd.c — the FVD-proxy of SPEC §3: the Fréchet distance between Gaussian
 * fits of video-tokenizer encoder features (per latent frame, averaged over
 * its spatial tokens) of real and generated clips. Not FVD: no I3D network. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "util/util.h"
#include "worldmodel/worldmodel.h"

/* Cyclic Jacobi rotations until the off-diagonal mass is negligible. */
void ds4_wm_eigh(double *A, int n, double *w, double *V) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) V[(size_t)i * n + j] = i == j;
    for (int sweep = 0; sweep < 60; sweep++) {
        double off = 0, diag = 0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                double a = A[(size_t)i * n + j];
                if (i == j) diag += a * a; else off += a * a;
            }
        if (off <= 1e-24 * (diag + 1e-300)) break;
        for (int p = 0; p < n - 1; p++)
            for (int q = p + 1; q < n; q++) {
                const double apq = A[(size_t)p * n + q];
                if (fabs(apq) < 1e-300) continue;
                const double app = A[(size_t)p * n + p], aqq = A[(size_t)q * n + q];
                const double theta = (aqq - app) / (2 * apq);
                const double t = (theta >= 0 ? 1 : -1) / (fabs(theta) + sqrt(theta * theta + 1));
                const double c = 1 / sqrt(t * t + 1), s = t * c;
                for (int k = 0; k < n; k++) {          /* columns p, q */
                    double akp = A[(size_t)k * n + p], akq = A[(size_t)k * n + q];
                    A[(size_t)k * n + p] = c * akp - s * akq;
                    A[(size_t)k * n + q] = s * akp + c * akq;
                }
                for (int k = 0; k < n; k++) {          /* rows p, q */
                    double apk = A[(size_t)p * n + k], aqk = A[(size_t)q * n + k];
                    A[(size_t)p * n + k] = c * apk - s * aqk;
                    A[(size_t)q * n + k] = s * apk + c * aqk;
                }
                for (int k = 0; k < n; k++) {
                    double vkp = V[(size_t)k * n + p], vkq = V[(size_t)k * n + q];
                    V[(size_t)k * n + p] = c * vkp - s * vkq;
                    V[(size_t)k * n + q] = s * vkp + c * vkq;
                }
            }
    }
    for (int i = 0; i < n; i++) w[i] = A[(size_t)i * n + i];
}

/* mean [d] and covariance [d][d] (n - 1 normalised) of x [n][d]. */
static void moments(const float *x, int n, int d, double *mu, double *S) {
    memset(mu, 0, sizeof(double) * (size_t)d);
    memset(S, 0, sizeof(double) * (size_t)d * d);
    for (int i = 0; i < n; i++)
        for (int a = 0; a < d; a++) mu[a] += x[(size_t)i * d + a];
    for (int a = 0; a < d; a++) mu[a] /= n;
    for (int i = 0; i < n; i++)
        for (int a = 0; a < d; a++) {
            const double da = x[(size_t)i * d + a] - mu[a];
            for (int b = a; b < d; b++) S[(size_t)a * d + b] += da * (x[(size_t)i * d + b] - mu[b]);
        }
    const double den = n > 1 ? n - 1 : 1;
    for (int a = 0; a < d; a++)
        for (int b = a; b < d; b++) S[(size_t)b * d + a] = S[(size_t)a * d + b] /= den;
}

double ds4_wm_frechet(const float *a, int na, const float *b, int nb, int d) {
    if (na < 2 || nb < 2 || d < 1) return NAN;
    const size_t dd = (size_t)d * d;
    double *mu_a = ds4_malloc(sizeof(double) * d), *mu_b = ds4_malloc(sizeof(double) * d);
    double *Sa = ds4_malloc(sizeof(double) * dd), *Sb = ds4_malloc(sizeof(double) * dd);
    double *V = ds4_malloc(sizeof(double) * dd), *R = ds4_malloc(sizeof(double) * dd);
    double *T = ds4_malloc(sizeof(double) * dd), *w = ds4_malloc(sizeof(double) * d);
    double fd = NAN;
    if (!mu_a || !mu_b || !Sa || !Sb || !V || !R || !T || !w) goto out;
    moments(a, na, d, mu_a, Sa);
    moments(b, nb, d, mu_b, Sb);
    double tr = 0, dm = 0;
    for (int i = 0; i < d; i++) {
        dm += (mu_a[i] - mu_b[i]) * (mu_a[i] - mu_b[i]);
        tr += Sa[(size_t)i * d + i] + Sb[(size_t)i * d + i];
    }
    /* R = Sa^1/2 = V diag(sqrt(w)) V^T */
    memcpy(T, Sa, sizeof(double) * dd);
    ds4_wm_eigh(T, d, w, V);
    for (int i = 0; i < d; i++) w[i] = w[i] > 0 ? sqrt(w[i]) : 0;
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) {
            double s = 0;
            for (int k = 0; k < d; k++) s += V[(size_t)i * d + k] * w[k] * V[(size_t)j * d + k];
            R[(size_t)i * d + j] = s;
        }
    /* M = R Sb R (symmetric PSD); tr sqrt(M) = sum sqrt(eig(M)) */
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) {
            double s = 0;
            for (int k = 0; k < d; k++) s += R[(size_t)i * d + k] * Sb[(size_t)k * d + j];
            T[(size_t)i * d + j] = s;
        }
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) {
            double s = 0;
            for (int k = 0; k < d; k++) s += T[(size_t)i * d + k] * R[(size_t)k * d + j];
            Sa[(size_t)i * d + j] = s;
        }
    for (int i = 0; i < d; i++)              /* symmetrise against rounding */
        for (int j = i + 1; j < d; j++) {
            double s = 0.5 * (Sa[(size_t)i * d + j] + Sa[(size_t)j * d + i]);
            Sa[(size_t)i * d + j] = Sa[(size_t)j * d + i] = s;
        }
    ds4_wm_eigh(Sa, d, w, V);
    double trs = 0;
    for (int i = 0; i < d; i++) trs += w[i] > 0 ? sqrt(w[i]) : 0;
    fd = dm + tr - 2 * trs;
    if (fd < 0 && fd > -1e-9 * (tr + 1)) fd = 0;
out:
    free(mu_a); free(mu_b); free(Sa); free(Sb); free(V); free(R); free(T); free(w);
    return fd;
}

int ds4_wm_clip_features(const ds4_vtok *vt, const uint8_t *rgb, int T, int H, int W, float *feat) {
    int Tl, Gh, Gw;
    if (ds4_vtok_latent_shape(vt, T, H, W, &Tl, &Gh, &Gw) != 0) return -1;
    const int C = vt->cfg.hidden, S = Gh * Gw;
    float *f = ds4_malloc(sizeof(float) * (size_t)Tl * S * C);
    if (!f) return -1;
    if (ds4_vtok_features(vt, rgb, T, H, W, f) != 0) { free(f); return -1; }
    for (int t = 0; t < Tl; t++)
        for (int c = 0; c < C; c++) {
            double s = 0;
            for (int j = 0; j < S; j++) s += f[((size_t)t * S + j) * C + c];
            feat[(size_t)t * C + c] = (float)(s / S);
        }
    free(f);
    return 0;
}
