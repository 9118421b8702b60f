/* png.c — PNG frames with libpng: write RGB8 (atomically), read any 8/16-bit
 * PNG back as RGB8, and write a clip as numbered frame files. */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <png.h>
#include "util/util.h"
#include "world/world.h"

typedef struct { const char *path; } png_ctx;

static void png_err(png_structp p, png_const_charp msg) {
    png_ctx *ctx = png_get_error_ptr(p);
    ds4_set_error("%s: libpng: %s", ctx ? ctx->path : "png", msg);
    png_longjmp(p, 1);
}

static void png_warn(png_structp p, png_const_charp msg) { (void)p; (void)msg; }

int ds4_world_write_png(const char *path, const uint8_t *rgb, int width, int height) {
    if (width < 1 || height < 1) { ds4_set_error("%s: bad PNG size %dx%d", path, width, height); return -1; }
    ds4_atomic_file af;
    if (ds4_atomic_open(&af, path) != 0) return -1;
    png_ctx ctx = {path};
    png_structp p = png_create_write_struct(PNG_LIBPNG_VER_STRING, &ctx, png_err, png_warn);
    png_infop info = p ? png_create_info_struct(p) : NULL;
    if (!p || !info) {
        png_destroy_write_struct(&p, &info);
        ds4_atomic_abort(&af);
        ds4_set_error("%s: libpng: out of memory", path);
        return -1;
    }
    if (setjmp(png_jmpbuf(p))) {
        png_destroy_write_struct(&p, &info);
        ds4_atomic_abort(&af);
        return -1;
    }
    png_init_io(p, af.f);
    png_set_IHDR(p, info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(p, info);
    for (int y = 0; y < height; y++) png_write_row(p, rgb + (size_t)y * width * 3);
    png_write_end(p, NULL);
    png_destroy_write_struct(&p, &info);
    return ds4_atomic_commit(&af);
}

int ds4_world_read_png(const char *path, uint8_t **rgb, int *width, int *height) {
    *rgb = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) { ds4_set_error("%s: cannot open", path); return -1; }
    uint8_t sig[8];
    if (fread(sig, 1, 8, f) != 8 || png_sig_cmp(sig, 0, 8) != 0) {
        fclose(f);
        ds4_set_error("%s: not a PNG file", path);
        return -1;
    }
    png_ctx ctx = {path};
    png_structp p = png_create_read_struct(PNG_LIBPNG_VER_STRING, &ctx, png_err, png_warn);
    png_infop info = p ? png_create_info_struct(p) : NULL;
    uint8_t *volatile buf = NULL;
    png_bytep *volatile rows = NULL;
    if (!p || !info) {
        png_destroy_read_struct(&p, &info, NULL);
        fclose(f);
        ds4_set_error("%s: libpng: out of memory", path);
        return -1;
    }
    if (setjmp(png_jmpbuf(p))) {
        png_destroy_read_struct(&p, &info, NULL);
        fclose(f);
        free(buf);
        free(rows);
        return -1;
    }
    png_init_io(p, f);
    png_set_sig_bytes(p, 8);
    png_read_info(p, info);
    png_uint_32 w = png_get_image_width(p, info), h = png_get_image_height(p, info);
    int ct = png_get_color_type(p, info);
    if (w < 1 || h < 1 || w > 16384 || h > 16384) png_error(p, "image size out of range");
    png_set_strip_16(p);
    if (ct == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(p);
    if (ct == PNG_COLOR_TYPE_GRAY || ct == PNG_COLOR_TYPE_GRAY_ALPHA) {
        png_set_expand_gray_1_2_4_to_8(p);
        png_set_gray_to_rgb(p);
    }
    png_set_strip_alpha(p);
    png_set_packing(p);
    png_set_interlace_handling(p);
    png_read_update_info(p, info);
    if (png_get_rowbytes(p, info) != (size_t)w * 3) png_error(p, "cannot convert to RGB8");
    buf = malloc((size_t)w * h * 3);
    if (!buf) png_error(p, "out of memory");
    rows = malloc(h * sizeof(png_bytep));
    if (!rows) png_error(p, "out of memory");
    for (png_uint_32 y = 0; y < h; y++) rows[y] = buf + (size_t)y * w * 3;
    png_read_image(p, rows);
    free(rows);
    rows = NULL;
    png_read_end(p, NULL);
    png_destroy_read_struct(&p, &info, NULL);
    fclose(f);
    *rgb = buf;
    *width = (int)w;
    *height = (int)h;
    return 0;
}

int ds4_world_write_png_frames(const char *dir, const uint8_t *rgb, int n_frames,
                               int width, int height) {
    if (ds4_mkdir_p(dir) != 0) return -1;
    char path[4200];
    for (int f = 0; f < n_frames; f++) {
        snprintf(path, sizeof path, "%s/frame_%04d.png", dir, f);
        if (ds4_world_write_png(path, rgb + (size_t)f * width * height * 3, width, height) != 0) return -1;
    }
    return 0;
}
