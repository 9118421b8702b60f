/* clipio.c — files around the tokenizer: the codes file (DS4VCODE, see
 * video.h), reading animated GIFs back into RGB8 frames, and the integer
 * downscale that undoes a GIF's --scale. */
#include <gif_lib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ds4.h"
#include "util/util.h"
#include "video/video.h"
#include "world/world.h"

/* ---- codes file -------------------------------------------------------------- */

static void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int ds4_vtok_codes_write(const char *path, const ds4_vtok_codes *c) {
    if (c->tl < 1 || c->gh < 1 || c->gw < 1 || c->n_codes < 1 || c->n_frames < 1 ||
        c->n_frames > c->tl * c->tubelet) {
        ds4_set_error("%s: bad codes shape (%d frames, %dx%dx%d latents, tubelet %d, %d codes)", path,
                      c->n_frames, c->tl, c->gh, c->gw, c->tubelet, c->n_codes);
        return -1;
    }
    size_t n = (size_t)c->tl * c->gh * c->gw, len = 64 + 4 * n;
    uint8_t *buf = ds4_calloc(len, 1);
    if (!buf) return -1;
    for (size_t i = 0; i < n; i++) {
        if (c->codes[i] < 0 || c->codes[i] >= c->n_codes) {
            ds4_set_error("%s: code %d at index %zu out of range [0, %d)", path, (int)c->codes[i], i,
                          c->n_codes);
            free(buf);
            return -1;
        }
        put_u32(buf + 64 + 4 * i, (uint32_t)c->codes[i]);
    }
    memcpy(buf, DS4_VTOK_CODES_MAGIC, 8);
    const uint32_t hdr[] = {1, (uint32_t)c->n_frames, (uint32_t)c->tl, (uint32_t)c->gh, (uint32_t)c->gw,
                            (uint32_t)c->n_codes, (uint32_t)c->tubelet, (uint32_t)c->patch,
                            (uint32_t)c->fps, ds4_world_crc32(0, buf + 64, 4 * n)};
    for (int i = 0; i < 10; i++) put_u32(buf + 8 + 4 * i, hdr[i]);
    int rc = ds4_write_file_atomic(path, buf, len);
    free(buf);
    return rc;
}

int ds4_vtok_codes_read(const char *path, ds4_vtok_codes *c) {
    memset(c, 0, sizeof *c);
    char *data = NULL;
    size_t len;
    if (ds4_read_file(path, &data, &len) != 0) return -1;
    const uint8_t *b = (const uint8_t *)data;
    int rc = -1;
    if (len < 64 || memcmp(b, DS4_VTOK_CODES_MAGIC, 8) != 0) {
        ds4_set_error("%s: not a ds4 codes file (magic %s expected)", path, DS4_VTOK_CODES_MAGIC);
        goto done;
    }
    if (get_u32(b + 8) != 1) {
        ds4_set_error("%s: unsupported codes version %u", path, get_u32(b + 8));
        goto done;
    }
    uint32_t v[9];
    for (int i = 0; i < 9; i++) v[i] = get_u32(b + 12 + 4 * i);
    const uint32_t n_frames = v[0], tl = v[1], gh = v[2], gw = v[3], n_codes = v[4], tub = v[5],
                   patch = v[6], fps = v[7], crc = v[8];
    if (tl < 1 || gh < 1 || gw < 1 || tl > (1u << 20) || gh > 4096 || gw > 4096 || tub < 1 ||
        tub > 64 || patch < 1 || patch > 64 || n_codes < 1 || n_codes > (uint32_t)INT32_MAX ||
        n_frames < 1 || n_frames > tl * tub) {
        ds4_set_error("%s: bad header (%u frames, %ux%ux%u latents, tubelet %u, patch %u, %u codes)",
                      path, n_frames, tl, gh, gw, tub, patch, n_codes);
        goto done;
    }
    size_t n = (size_t)tl * gh * gw;
    if (len != 64 + 4 * n) {
        ds4_set_error("%s: file is %zu bytes, header says %zu", path, len, 64 + 4 * n);
        goto done;
    }
    if (ds4_world_crc32(0, b + 64, 4 * n) != crc) {
        ds4_set_error("%s: codes CRC mismatch (file corrupted)", path);
        goto done;
    }
    c->codes = ds4_malloc(n * sizeof(int32_t));
    if (!c->codes) goto done;
    for (size_t i = 0; i < n; i++) {
        uint32_t x = get_u32(b + 64 + 4 * i);
        if (x >= n_codes) {
            ds4_set_error("%s: code %u at index %zu out of range [0, %u)", path, x, i, n_codes);
            free(c->codes);
            c->codes = NULL;
            goto done;
        }
        c->codes[i] = (int32_t)x;
    }
    c->n_frames = (int)n_frames; c->tl = (int)tl; c->gh = (int)gh; c->gw = (int)gw;
    c->n_codes = (int)n_codes; c->tubelet = (int)tub; c->patch = (int)patch; c->fps = (int)fps;
    rc = 0;
done:
    free(data);
    return rc;
}

void ds4_vtok_codes_free(ds4_vtok_codes *c) {
    free(c->codes);
    c->codes = NULL;
}

/* ---- GIF --------------------------------------------------------------------- */

int ds4_vtok_read_gif(const char *path, uint8_t **rgb, int *n_frames, int *width, int *height,
                      int *fps) {
    int err = 0;
    *rgb = NULL;
    GifFileType *gif = DGifOpenFileName(path, &err);
    if (!gif) {
        ds4_set_error("%s: cannot open GIF (%s)", path, GifErrorString(err));
        return -1;
    }
    int rc = -1;
    uint8_t *out = NULL, *canvas = NULL;
    if (DGifSlurp(gif) != GIF_OK) {
        ds4_set_error("%s: bad GIF (%s)", path, GifErrorString(gif->Error));
        goto done;
    }
    const int W = gif->SWidth, H = gif->SHeight, n = gif->ImageCount;
    if (W < 1 || H < 1 || W > 8192 || H > 8192 || n < 1) {
        ds4_set_error("%s: GIF of %dx%d with %d frames", path, W, H, n);
        goto done;
    }
    const size_t fb = (size_t)W * H * 3;
    out = ds4_malloc(fb * (size_t)n);
    canvas = ds4_malloc(fb);
    if (!out || !canvas) goto done;
    /* the canvas starts as the background colour of the global map (or black) */
    uint8_t bg[3] = {0, 0, 0};
    if (gif->SColorMap && gif->SBackGroundColor < gif->SColorMap->ColorCount) {
        GifColorType cc = gif->SColorMap->Colors[gif->SBackGroundColor];
        bg[0] = cc.Red; bg[1] = cc.Green; bg[2] = cc.Blue;
    }
    for (size_t p = 0; p < (size_t)W * H; p++) memcpy(canvas + 3 * p, bg, 3);
    int delay = 0;
    for (int i = 0; i < n; i++) {
        SavedImage *im = &gif->SavedImages[i];
        GraphicsControlBlock gcb = {.DisposalMode = DISPOSAL_UNSPECIFIED, .TransparentColor = NO_TRANSPARENT_COLOR};
        DGifSavedExtensionToGCB(gif, i, &gcb);
        if (i == 0) delay = gcb.DelayTime;
        const ColorMapObject *cm = im->ImageDesc.ColorMap ? im->ImageDesc.ColorMap : gif->SColorMap;
        const int L = im->ImageDesc.Left, T = im->ImageDesc.Top, w = im->ImageDesc.Width,
                  h = im->ImageDesc.Height;
        if (!cm || L < 0 || T < 0 || w < 0 || h < 0 || L + w > W || T + h > H) {
            ds4_set_error("%s: frame %d: %s", path, i, cm ? "image outside the screen" : "no colour map");
            goto done;
        }
        uint8_t *prev = NULL;
        if (gcb.DisposalMode == DISPOSE_PREVIOUS) {
            prev = ds4_malloc(fb);
            if (!prev) goto done;
            memcpy(prev, canvas, fb);
        }
        for (int r = 0; r < h; r++)
            for (int c = 0; c < w; c++) {
                int idx = im->RasterBits[(size_t)r * w + c];
                if (idx == gcb.TransparentColor) continue;
                if (idx >= cm->ColorCount) {
                    ds4_set_error("%s: frame %d: colour index %d outside the map", path, i, idx);
                    free(prev);
                    goto done;
                }
                uint8_t *px = canvas + (((size_t)(T + r) * W) + L + c) * 3;
                px[0] = cm->Colors[idx].Red; px[1] = cm->Colors[idx].Green; px[2] = cm->Colors[idx].Blue;
            }
        memcpy(out + fb * i, canvas, fb);
        if (gcb.DisposalMode == DISPOSE_BACKGROUND) {
            for (int r = 0; r < h; r++)
                for (int c = 0; c < w; c++) memcpy(canvas + (((size_t)(T + r) * W) + L + c) * 3, bg, 3);
        } else if (prev) {
            memcpy(canvas, prev, fb);
        }
        free(prev);
    }
    *rgb = out;
    out = NULL;
    *n_frames = n;
    *width = W;
    *height = H;
    *fps = delay > 0 ? (int)(100.0 / delay + 0.5) : 0;
    rc = 0;
done:
    free(out);
    free(canvas);
    DGifCloseFile(gif, &err);
    return rc;
}

int ds4_vtok_downscale(const uint8_t *rgb, int T, int H, int W, int factor, uint8_t **out) {
    if (factor < 1 || H % factor || W % factor) {
        ds4_set_error("video: cannot downscale %dx%d by %d", W, H, factor);
        return -1;
    }
    const int h = H / factor, w = W / factor, c0 = factor / 2;
    uint8_t *o = ds4_malloc((size_t)T * h * w * 3);
    if (!o) return -1;
    for (int t = 0; t < T; t++)
        for (int r = 0; r < h; r++)
            for (int c = 0; c < w; c++)
                memcpy(o + (((size_t)t * h + r) * w + c) * 3,
                       rgb + (((size_t)t * H + r * factor + c0) * W + c * factor + c0) * 3, 3);
    *out = o;
    return 0;
}
