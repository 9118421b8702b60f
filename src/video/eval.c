/* eval.c — how good a tokenizer round trip is (SPEC §3): PSNR of the
 * reconstruction and the error of ball centroids found by colour
 * (ds4_world_extract) in the original vs the reconstructed frames. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "ds4.h"
#include "util/util.h"
#include "video/video.h"
#include "world/world.h"

#define N_BALL_COLORS (DS4_WC_YELLOW - DS4_WC_RED + 1)

/* Largest blob of each ball colour in a frame: found[k], col/row centroid. */
static int find_balls(const uint8_t *rgb, int H, int W, int found[N_BALL_COLORS],
                      double col[N_BALL_COLORS], double row[N_BALL_COLORS]) {
    ds4_world_blob b[32];
    int n = ds4_world_extract(rgb, W, H, W / DS4_WORLD_WIDTH_M, DS4_VTOK_EVAL_TOL,
                              DS4_VTOK_EVAL_MIN_AREA, b, 32, NULL);
    if (n < 0) return -1;
    memset(found, 0, N_BALL_COLORS * sizeof(int));
    for (int i = 0; i < n && i < 32; i++) {
        int k = b[i].color - DS4_WC_RED;
        if (k < 0 || k >= N_BALL_COLORS || found[k]) continue;   /* largest first within a colour */
        found[k] = 1;
        col[k] = b[i].col;
        row[k] = b[i].row;
    }
    return 0;
}

/* Palette index of a pixel of exactly a palette colour, else -1. */
static int pixel_class(const uint8_t *px) {
    for (int k = 0; k < DS4_WC_COUNT; k++)
        if (px[0] == ds4_world_palette[k][0] && px[1] == ds4_world_palette[k][1] &&
            px[2] == ds4_world_palette[k][2])
            return k;
    return -1;
}

int ds4_vtok_eval_compare(const uint8_t *a, const uint8_t *b, int T, int H, int W,
                          ds4_vtok_eval_stats *st) {
    const size_t frame = (size_t)H * W * 3, nv = frame * T;
    double se = 0;
    int water = 0;
    for (size_t i = 0; i < nv; i += 3) {
        int k = pixel_class(a + i);
        double px = 0;
        for (int c = 0; c < 3; c++) {
            double d = (double)a[i + c] - b[i + c];
            px += d * d;
        }
        se += px;
        if (k >= 0) {
            st->class_sq_err[k] += px;
            st->class_n_values[k] += 3;
            water |= k == DS4_WC_WATER;
        }
    }
    st->sq_err += se;
    st->n_values += (double)nv;
    if (water) {
        st->sq_err_water += se;
        st->n_values_water += (double)nv;
        st->n_clips_water++;
    }
    double mse = se / (double)nv;
    st->psnr_sum += mse > 0 ? 10.0 * log10(255.0 * 255.0 / mse) : 100.0;
    st->n_clips++;
    st->n_frames += T;
    for (int t = 0; t < T; t++) {
        int fa[N_BALL_COLORS], fb[N_BALL_COLORS];
        double ca[N_BALL_COLORS], ra[N_BALL_COLORS], cb[N_BALL_COLORS], rb[N_BALL_COLORS];
        if (find_balls(a + frame * t, H, W, fa, ca, ra) != 0 ||
            find_balls(b + frame * t, H, W, fb, cb, rb) != 0)
            return -1;
        for (int k = 0; k < N_BALL_COLORS; k++) {
            if (fa[k] && fb[k]) {
                double e = hypot(ca[k] - cb[k], ra[k] - rb[k]);
                st->cent_sum += e;
                if (e > st->cent_max) st->cent_max = e;
                int bin = (int)(e / DS4_VTOK_CENT_BIN);
                st->cent_hist[bin < DS4_VTOK_CENT_BINS ? bin : DS4_VTOK_CENT_BINS - 1]++;
                st->n_matched++;
            } else if (fa[k]) {
                st->n_missed++;
            } else if (fb[k]) {
                st->n_spurious++;
            }
        }
    }
    return 0;
}

int ds4_vtok_eval_clip(const ds4_vtok *m, const uint8_t *rgb, int T, int H, int W,
                       ds4_vtok_eval_stats *st, uint8_t *recon) {
    int Tl, Gh, Gw;
    if (ds4_vtok_latent_shape(m, T, H, W, &Tl, &Gh, &Gw) != 0) return -1;
    size_t nc = (size_t)Tl * Gh * Gw, frame = (size_t)H * W * 3;
    int32_t *codes = ds4_malloc(nc * sizeof(int32_t));
    uint8_t *out = ds4_malloc(frame * Tl * m->cfg.tubelet);
    int rc = -1;
    if (!codes || !out) goto done;
    double t0 = ds4_time_s();
    if (ds4_vtok_encode(m, rgb, T, H, W, codes) != 0) goto done;
    double t1 = ds4_time_s();
    if (ds4_vtok_decode(m, codes, Tl, Gh, Gw, out) != 0) goto done;
    st->enc_s += t1 - t0;
    st->dec_s += ds4_time_s() - t1;
    if (ds4_vtok_eval_compare(rgb, out, T, H, W, st) != 0) goto done;
    if (recon) memcpy(recon, out, frame * T);
    rc = 0;
done:
    free(codes);
    free(out);
    return rc;
}

int ds4_vtok_eval_dir(const ds4_vtok *m, const char *dir, const char *split, int max_clips,
                      ds4_vtok_eval_stats *st) {
    char **paths = NULL;
    int n = 0, done = 0, rc = 0;
    if (ds4_world_dataset_shards(dir, split, &paths, &n) != 0) return -1;
    if (n == 0) {
        ds4_set_error("%s: no %s-*.ds4w shards", dir, split);
        free(paths);
        return -1;
    }
    for (int i = 0; i < n && rc == 0 && (max_clips <= 0 || done < max_clips); i++) {
        ds4_world_shard *sh = ds4_world_shard_open(paths[i], 0);
        if (!sh) { rc = -1; break; }
        for (int k = 0; k < sh->n_clips && (max_clips <= 0 || done < max_clips); k++, done++) {
            const uint8_t *clip = ds4_world_shard_clip(sh, k);
            if (!clip || ds4_vtok_eval_clip(m, clip, sh->n_frames, sh->height, sh->width, st, NULL) != 0) {
                ds4_error_prefix("%s clip %d", paths[i], k);
                rc = -1;
                break;
            }
        }
        ds4_world_shard_close(sh);
    }
    for (int i = 0; i < n; i++) free(paths[i]);
    free(paths);
    return rc;
}

double ds4_vtok_eval_psnr(const ds4_vtok_eval_stats *st) {
    if (st->n_values <= 0) return NAN;
    double mse = st->sq_err / st->n_values;
    return mse > 0 ? 10.0 * log10(255.0 * 255.0 / mse) : 100.0;
}

static double psnr_of(double se, double n) {
    if (n <= 0) return NAN;
    return se > 0 ? 10.0 * log10(255.0 * 255.0 * n / se) : 100.0;
}

double ds4_vtok_eval_psnr_scenes(const ds4_vtok_eval_stats *st, int water) {
    return water ? psnr_of(st->sq_err_water, st->n_values_water)
                 : psnr_of(st->sq_err - st->sq_err_water, st->n_values - st->n_values_water);
}

double ds4_vtok_eval_psnr_class(const ds4_vtok_eval_stats *st, int k) {
    if (k < 0 || k >= DS4_VTOK_EVAL_CLASSES) return NAN;
    return psnr_of(st->class_sq_err[k], st->class_n_values[k]);
}

double ds4_vtok_eval_centroid(const ds4_vtok_eval_stats *st) {
    return st->n_matched > 0 ? st->cent_sum / (double)st->n_matched : NAN;
}

double ds4_vtok_eval_centroid_quantile(const ds4_vtok_eval_stats *st, double q) {
    if (st->n_matched <= 0) return NAN;
    double want = q * (double)st->n_matched;
    long seen = 0;
    for (int i = 0; i < DS4_VTOK_CENT_BINS; i++) {
        seen += st->cent_hist[i];
        if ((double)seen >= want && seen > 0) return (i + 1) * DS4_VTOK_CENT_BIN;
    }
    return DS4_VTOK_CENT_BINS * DS4_VTOK_CENT_BIN;
}

int ds4_vtok_water_blur(const uint8_t *rgb, int T, int H, int W, int tubelet, int block,
                        uint8_t *out) {
    if (T < 1 || tubelet < 1 || block < 1 || H < block || W < block || H % block || W % block) {
        ds4_set_error("water blur: %d frames of %dx%d do not fit tubelet %d / block %d", T, W, H,
                      tubelet, block);
        return -1;
    }
    const size_t frame = (size_t)H * W * 3;
    memcpy(out, rgb, frame * T);
    const uint8_t *wc = ds4_world_palette[DS4_WC_WATER];
    for (int t0 = 0; t0 < T; t0 += tubelet) {
        const int nf = T - t0 < tubelet ? T - t0 : tubelet;
        for (int by = 0; by < H; by += block)
            for (int bx = 0; bx < W; bx += block) {
                int wet = 0;
                for (int f = 0; f < nf && !wet; f++)
                    for (int y = by; y < by + block && !wet; y++)
                        for (int x = bx; x < bx + block && !wet; x++) {
                            const uint8_t *px = rgb + (t0 + f) * frame + ((size_t)y * W + x) * 3;
                            wet = px[0] == wc[0] && px[1] == wc[1] && px[2] == wc[2];
                        }
                if (!wet) continue;
                for (int y = by; y < by + block; y++)
                    for (int x = bx; x < bx + block; x++)
                        for (int c = 0; c < 3; c++) {
                            const size_t o = ((size_t)y * W + x) * 3 + c;
                            int sum = 0;
                            for (int f = 0; f < nf; f++) sum += rgb[(t0 + f) * frame + o];
                            uint8_t v = (uint8_t)((2 * sum + nf) / (2 * nf));
                            for (int f = 0; f < nf; f++) out[(t0 + f) * frame + o] = v;
                        }
            }
    }
    return 0;
}

void ds4_vtok_eval_merge(ds4_vtok_eval_stats *a, const ds4_vtok_eval_stats *b) {
    a->sq_err += b->sq_err;
    a->n_values += b->n_values;
    a->psnr_sum += b->psnr_sum;
    a->n_clips += b->n_clips;
    a->cent_sum += b->cent_sum;
    if (b->cent_max > a->cent_max) a->cent_max = b->cent_max;
    for (int i = 0; i < DS4_VTOK_CENT_BINS; i++) a->cent_hist[i] += b->cent_hist[i];
    a->n_matched += b->n_matched;
    a->n_missed += b->n_missed;
    a->n_spurious += b->n_spurious;
    a->enc_s += b->enc_s;
    a->dec_s += b->dec_s;
    a->n_frames += b->n_frames;
    a->sq_err_water += b->sq_err_water;
    a->n_values_water += b->n_values_water;
    a->n_clips_water += b->n_clips_water;
    for (int k = 0; k < DS4_VTOK_EVAL_CLASSES; k++) {
        a->class_sq_err[k] += b->class_sq_err[k];
        a->class_n_values[k] += b->class_n_values[k];
    }
}
