/* gif.c — animated GIF output with giflib: one global 256-colour palette (the
 * SPEC §3 colours first, so rendered frames map exactly, then a 6x6x6 colour
 * cube and a grey ramp for arbitrary frames), delays from the frame rate,
 * looping forever. Written atomically. */
#include <stdlib.h>
#include <string.h>
#include <gif_lib.h>
#include "util/util.h"
#include "world/world.h"

static void gif_palette(GifColorType pal[256]) {
    int k = 0;
    for (int i = 0; i < DS4_WC_COUNT; i++, k++)
        pal[k] = (GifColorType){ds4_world_palette[i][0], ds4_world_palette[i][1], ds4_world_palette[i][2]};
    for (int r = 0; r < 6; r++)
        for (int g = 0; g < 6; g++)
            for (int b = 0; b < 6; b++, k++)
                pal[k] = (GifColorType){(GifByteType)(51 * r), (GifByteType)(51 * g), (GifByteType)(51 * b)};
    for (int i = 0; k < 256; i++, k++) {                  /* 33 greys */
        GifByteType v = (GifByteType)((i * 255 + 16) / 32);
        pal[k] = (GifColorType){v, v, v};
    }
}

static int nearest(const GifColorType *pal, int r, int g, int b) {
    int best = 0, bd = 1 << 30;
    for (int i = 0; i < 256; i++) {
        int dr = r - pal[i].Red, dg = g - pal[i].Green, db = b - pal[i].Blue, d = dr * dr + dg * dg + db * db;
        if (d < bd) { bd = d; best = i; }
    }
    return best;
}

static int gif_write_fn(GifFileType *gif, const GifByteType *data, int len) {
    ds4_atomic_file *af = gif->UserData;
    return fwrite(data, 1, (size_t)len, af->f) == (size_t)len ? len : 0;
}

int ds4_world_write_gif(const char *path, const uint8_t *rgb, int n_frames,
                        int width, int height, int fps, int scale) {
    if (n_frames < 1 || width < 1 || height < 1 || fps < 1 || scale < 1 ||
        (long)width * scale > 65535 || (long)height * scale > 65535) {
        ds4_set_error("%s: bad GIF request (%d frames of %dx%d at %d fps, scale %d)",
                      path, n_frames, width, height, fps, scale);
        return -1;
    }
    GifColorType pal[256];
    gif_palette(pal);
    size_t npix = (size_t)width * height;
    int W = width * scale, H = height * scale;
    uint8_t *idx = ds4_malloc(npix), *line = ds4_malloc((size_t)W), *lut = NULL;
    ColorMapObject *cmap = GifMakeMapObject(256, pal);
    ds4_atomic_file af;
    GifFileType *gif = NULL;
    int err = 0;
    if (!idx || !line || !cmap) goto oom;
    if (ds4_atomic_open(&af, path) != 0) { free(idx); free(line); GifFreeMapObject(cmap); return -1; }
    gif = EGifOpen(&af, gif_write_fn, &err);
    if (!gif) goto gif_fail;
    EGifSetGifVersion(gif, true);
    if (EGifPutScreenDesc(gif, W, H, 8, 0, cmap) == GIF_ERROR) goto gif_fail;
    static const GifByteType loop[3] = {1, 0, 0};          /* NETSCAPE2.0: loop forever */
    if (EGifPutExtensionLeader(gif, APPLICATION_EXT_FUNC_CODE) == GIF_ERROR ||
        EGifPutExtensionBlock(gif, 11, "NETSCAPE2.0") == GIF_ERROR ||
        EGifPutExtensionBlock(gif, 3, loop) == GIF_ERROR || EGifPutExtensionTrailer(gif) == GIF_ERROR)
        goto gif_fail;
    for (int f = 0; f < n_frames; f++) {
        const uint8_t *fr = rgb + (size_t)f * npix * 3;
        for (size_t p = 0; p < npix; p++) {
            const uint8_t *c = fr + 3 * p;
            int k = -1;
            for (int i = 0; i < DS4_WC_COUNT; i++)
                if (c[0] == pal[i].Red && c[1] == pal[i].Green && c[2] == pal[i].Blue) { k = i; break; }
            if (k < 0) {
                if (!lut) {   /* nearest palette entry for each 5-bit-per-channel cell, built on demand */
                    lut = ds4_malloc(32768);
                    if (!lut) goto oom_gif;
                    for (int q = 0; q < 32768; q++)
                        lut[q] = (uint8_t)nearest(pal, ((q >> 10) & 31) * 8 + 4, ((q >> 5) & 31) * 8 + 4, (q & 31) * 8 + 4);
                }
                k = lut[(c[0] >> 3) << 10 | (c[1] >> 3) << 5 | c[2] >> 3];
            }
            idx[p] = (uint8_t)k;
        }
        /* delays in 1/100 s, rounded cumulatively so the average rate is exact */
        int delay = (int)(((long)(f + 1) * 100 + fps / 2) / fps - ((long)f * 100 + fps / 2) / fps);
        GraphicsControlBlock gcb = {DISPOSAL_UNSPECIFIED, false, delay < 1 ? 1 : delay, NO_TRANSPARENT_COLOR};
        GifByteType ext[4];
        size_t elen = EGifGCBToExtension(&gcb, ext);
        if (EGifPutExtension(gif, GRAPHICS_EXT_FUNC_CODE, (int)elen, ext) == GIF_ERROR ||
            EGifPutImageDesc(gif, 0, 0, W, H, false, NULL) == GIF_ERROR)
            goto gif_fail;
        for (int y = 0; y < H; y++) {
            const uint8_t *src = idx + (size_t)(y / scale) * width;
            for (int x = 0; x < W; x++) line[x] = src[x / scale];
            if (EGifPutLine(gif, line, W) == GIF_ERROR) goto gif_fail;
        }
    }
    if (EGifCloseFile(gif, &err) == GIF_ERROR) { gif = NULL; goto gif_fail; }
    free(idx); free(line); free(lut);
    GifFreeMapObject(cmap);
    return ds4_atomic_commit(&af);
gif_fail:
    ds4_set_error("%s: giflib: %s", path, GifErrorString(gif ? gif->Error : err));
    if (gif) EGifCloseFile(gif, &err);
    ds4_atomic_abort(&af);
    free(idx); free(line); free(lut);
    GifFreeMapObject(cmap);
    return -1;
oom_gif:
    EGifCloseFile(gif, &err);
    ds4_atomic_abort(&af);
oom:
    free(idx); free(line); free(lut);
    if (cmap) GifFreeMapObject(cmap);
    ds4_set_error("%s: out of memory writing GIF", path);
    return -1;
}
