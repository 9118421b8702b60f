/* render.c — draws a world state into an RGB8 frame with the fixed SPEC §3
 * palette: no anti-aliasing, a pixel takes an object's colour iff its centre
 * ((col+0.5)/px_per_m, (height-row-0.5)/px_per_m) lies inside the object. */
#include <math.h>
#include <string.h>
#include "world/world.h"

const uint8_t ds4_world_palette[DS4_WC_COUNT][3] = {
    {16, 16, 24},    /* background */
    {96, 96, 96},    /* floor and walls */
    {230, 50, 50},   /* red */
    {50, 200, 70},   /* green */
    {60, 100, 240},  /* blue */
    {240, 210, 50},  /* yellow */
    {70, 170, 255},  /* water */
};

static const char *const COLOR_NAMES[DS4_WC_COUNT] = {
    "background", "wall", "red", "green", "blue", "yellow", "water"};

const char *ds4_world_color_name(int color) {
    return color >= 0 && color < DS4_WC_COUNT ? COLOR_NAMES[color] : NULL;
}

int ds4_world_color_from_name(const char *name) {
    for (int i = 0; i < DS4_WC_COUNT; i++)
        if (name && !strcmp(name, COLOR_NAMES[i])) return i;
    return -1;
}

void ds4_world_draw_disc(uint8_t *rgb, int width, int height, double px_per_m,
                         double x, double y, double r, const uint8_t color[3]) {
    /* pixel centres inside the disc: col+0.5 in [ (x-r)*ppm, (x+r)*ppm ] */
    int c0 = (int)floor((x - r) * px_per_m - 0.5), c1 = (int)ceil((x + r) * px_per_m - 0.5);
    int r0 = (int)floor(height - (y + r) * px_per_m - 0.5), r1 = (int)ceil(height - (y - r) * px_per_m - 0.5);
    if (c0 < 0) c0 = 0;
    if (r0 < 0) r0 = 0;
    if (c1 > width - 1) c1 = width - 1;
    if (r1 > height - 1) r1 = height - 1;
    double r2 = r * r;
    for (int row = r0; row <= r1; row++) {
        double cy = (height - row - 0.5) / px_per_m - y;
        for (int col = c0; col <= c1; col++) {
            double cx = (col + 0.5) / px_per_m - x;
            if (cx * cx + cy * cy <= r2) memcpy(rgb + ((size_t)row * width + col) * 3, color, 3);
        }
    }
}

void ds4_world_render(const ds4_world_sim *s, uint8_t *rgb, int width, int height) {
    const ds4_world_scene *sc = &s->sc;
    const double ppm = width / sc->width_m;
    const uint8_t *bg = ds4_world_palette[DS4_WC_BACKGROUND];
    const size_t row_bytes = (size_t)width * 3;
    for (int col = 0; col < width; col++) memcpy(rgb + 3 * col, bg, 3);
    for (int row = 1; row < height; row++) memcpy(rgb + row * row_bytes, rgb, row_bytes);
    for (int i = 0; i < s->n_particles; i++)
        ds4_world_draw_disc(rgb, width, height, ppm, s->px[i], s->py[i], DS4_WORLD_WATER_RADIUS,
                            ds4_world_palette[DS4_WC_WATER]);
    for (int i = 0; i < sc->n_balls; i++) {
        const ds4_world_ball *b = &sc->balls[i];
        ds4_world_draw_disc(rgb, width, height, ppm, b->x, b->y, b->r, ds4_world_palette[b->color]);
    }
    /* floor and walls: pixels whose centre is inside the wall band; the
     * centres grow with col and fall with row, so the bands are contiguous */
    const uint8_t *wall = ds4_world_palette[DS4_WC_WALL];
    int left = 0, right = width;      /* wall columns: [0, left) and [right, width) */
    while (left < width && (left + 0.5) / ppm < sc->wall_m) left++;
    while (right > 0 && (right - 0.5) / ppm > sc->width_m - sc->wall_m) right--;
    for (int row = 0; row < height; row++) {
        int floor_row = (height - row - 0.5) / ppm < sc->wall_m;
        uint8_t *line = rgb + row * row_bytes;
        for (int col = 0; col < width; col++) {
            if (!floor_row && col == left && right > left) col = right;   /* skip the interior */
            if (col < width) memcpy(line + 3 * col, wall, 3);
        }
    }
}
