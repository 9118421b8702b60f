/* extract.c — finds the balls in a frame for physics evaluation: classify each
 * pixel to the nearest palette colour within a tolerance, take the connected
 * components of each ball colour, and report centroid (pixels and metres, by
 * the SPEC pixel-centre rule), area and a radius estimate. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "util/util.h"
#include "world/world.h"

typedef struct { ds4_world_blob b; int first; } blob_tmp;

static int blob_cmp(const void *pa, const void *pb) {
    const blob_tmp *a = pa, *b = pb;
    if (a->b.color != b->b.color) return a->b.color - b->b.color;
    if (a->b.area != b->b.area) return b->b.area - a->b.area;
    return a->first - b->first;
}

static void finish_blob(ds4_world_blob *b, double sc, double sr, int height, double ppm) {
    b->col = sc / b->area;
    b->row = sr / b->area;
    b->x = b->col / ppm;
    b->y = (height - b->row) / ppm;
    b->r_px = sqrt(b->area / M_PI);
    b->r_m = b->r_px / ppm;
}

int ds4_world_extract(const uint8_t *rgb, int width, int height, double px_per_m,
                      int tolerance, int min_area, ds4_world_blob *out, int max_out,
                      ds4_world_blob *water) {
    if (width < 1 || height < 1 || !(px_per_m > 0) || tolerance < 0) {
        ds4_set_error("world extract: bad arguments (%dx%d, px_per_m %g, tolerance %d)",
                      width, height, px_per_m, tolerance);
        return -1;
    }
    size_t npix = (size_t)width * height;
    uint8_t *cls = ds4_malloc(npix);         /* [height][width] palette class, 255 = visited */
    int *stack = ds4_malloc(npix * sizeof(int));
    blob_tmp *blobs = NULL;
    int n_blobs = 0, cap_blobs = 0;
    if (!cls || !stack) { free(cls); free(stack); return -1; }
    int tol2 = tolerance * tolerance;
    double wsc = 0, wsr = 0;
    ds4_world_blob wb = {.color = DS4_WC_WATER, .col0 = width, .row0 = height, .col1 = -1, .row1 = -1};
    for (size_t p = 0; p < npix; p++) {
        const uint8_t *c = rgb + 3 * p;
        int best = DS4_WC_BACKGROUND, bd = 1 << 30;
        for (int k = 0; k < DS4_WC_COUNT; k++) {
            int dr = c[0] - ds4_world_palette[k][0], dg = c[1] - ds4_world_palette[k][1],
                db = c[2] - ds4_world_palette[k][2], d = dr * dr + dg * dg + db * db;
            if (d < bd) { bd = d; best = k; }
        }
        cls[p] = (uint8_t)(bd <= tol2 ? best : DS4_WC_BACKGROUND);
        if (cls[p] == DS4_WC_WATER) {
            int col = (int)(p % width), row = (int)(p / width);
            wb.area++;
            wsc += col + 0.5; wsr += row + 0.5;
            wb.col0 = DS4_MIN(wb.col0, col); wb.col1 = DS4_MAX(wb.col1, col);
            wb.row0 = DS4_MIN(wb.row0, row); wb.row1 = DS4_MAX(wb.row1, row);
        }
    }
    if (water) {
        if (wb.area > 0) {
            finish_blob(&wb, wsc, wsr, height, px_per_m);
        } else {
            memset(&wb, 0, sizeof wb);
            wb.color = DS4_WC_WATER;
        }
        *water = wb;
    }
    for (size_t p0 = 0; p0 < npix; p0++) {
        int color = cls[p0];
        if (color < DS4_WC_RED || color > DS4_WC_YELLOW) continue;
        /* flood fill the component of p0 (8-neighbour), marking pixels visited */
        ds4_world_blob b = {.color = color, .col0 = width, .row0 = height, .col1 = -1, .row1 = -1};
        double sc = 0, sr = 0;
        int top = 0;
        stack[top++] = (int)p0;
        cls[p0] = 255;
        while (top > 0) {
            int p = stack[--top], col = p % width, row = p / width;
            b.area++;
            sc += col + 0.5; sr += row + 0.5;
            b.col0 = DS4_MIN(b.col0, col); b.col1 = DS4_MAX(b.col1, col);
            b.row0 = DS4_MIN(b.row0, row); b.row1 = DS4_MAX(b.row1, row);
            for (int dy = -1; dy <= 1; dy++)
                for (int dx = -1; dx <= 1; dx++) {
                    int c2 = col + dx, r2 = row + dy;
                    if (c2 < 0 || c2 >= width || r2 < 0 || r2 >= height) continue;
                    int q = r2 * width + c2;
                    if (cls[q] != color) continue;
                    cls[q] = 255;
                    stack[top++] = q;
                }
        }
        if (b.area < min_area) continue;
        finish_blob(&b, sc, sr, height, px_per_m);
        if (n_blobs == cap_blobs) {
            cap_blobs = cap_blobs ? 2 * cap_blobs : 16;
            blob_tmp *nb = realloc(blobs, (size_t)cap_blobs * sizeof *nb);
            if (!nb) {
                free(blobs); free(cls); free(stack);
                ds4_set_error("world extract: out of memory");
                return -1;
            }
            blobs = nb;
        }
        blobs[n_blobs++] = (blob_tmp){b, (int)p0};
    }
    if (n_blobs > 1) qsort(blobs, (size_t)n_blobs, sizeof *blobs, blob_cmp);
    for (int i = 0; i < n_blobs && i < max_out; i++) out[i] = blobs[i].b;
    free(blobs);
    free(cls);
    free(stack);
    return n_blobs;
}
