/* world.h — the physics world of SPEC §3, independent of the model: a
 * deterministic 2D simulator (balls, poured water), its renderer with the fixed
 * palette, captions, the clip dataset (binary shards + JSON Lines annotations),
 * GIF/PNG/MP4 output and ball extraction from frames (for physics evaluation).
 *
 * Units are SI. The world's origin is its bottom-left corner, y points up.
 * Frames are RGB8, row-major, top row first: rgb[row][col][3]. A pixel's
 * centre is at ((col + 0.5) / px_per_m, (height_px - row - 0.5) / px_per_m). */
#ifndef DS4_WORLD_H
#define DS4_WORLD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- palette (SPEC §3) ---------------------------------------------------- */
enum {
    DS4_WC_BACKGROUND = 0, /* (16,16,24) */
    DS4_WC_WALL,           /* (96,96,96) floor and walls */
    DS4_WC_RED,            /* (230,50,50) */
    DS4_WC_GREEN,          /* (50,200,70) */
    DS4_WC_BLUE,           /* (60,100,240) */
    DS4_WC_YELLOW,         /* (240,210,50) */
    DS4_WC_WATER,          /* (70,170,255) */
    DS4_WC_COUNT
};
extern const uint8_t ds4_world_palette[DS4_WC_COUNT][3];
/* "background", "wall", "red", "green", "blue", "yellow", "water"; NULL if out of range. */
const char *ds4_world_color_name(int color);
/* Inverse of ds4_world_color_name; -1 if unknown. */
int ds4_world_color_from_name(const char *name);

/* ---- fixed world constants ------------------------------------------------ */
#define DS4_WORLD_WIDTH_M       4.0    /* world width; height = width * height_px / width_px */
#define DS4_WORLD_WALL_M        0.125  /* floor/wall thickness (2 px at 64 px wide) */
#define DS4_WORLD_BALL_DENSITY  1.0    /* kg/m^2: mass = density * pi * r^2 */
#define DS4_WORLD_MAX_BALLS     4
#define DS4_WORLD_MAX_PARTICLES 512
#define DS4_WORLD_WATER_RADIUS  0.07   /* drawn radius of a water particle, m */
#define DS4_WORLD_WATER_MASS    0.01   /* mass of one water particle, kg */
#define DS4_WORLD_BOUNCE_SPEED  1.5    /* wall impacts at least this fast (m/s) are bounce events */
#define DS4_WORLD_COLLIDE_SPEED 0.3    /* ball-ball approach speed for a collision event (m/s) */
#define DS4_WORLD_STICK_SPEED   0.25   /* floor rebounds slower than this come to rest (m/s) */

/* ---- scene: the initial conditions and constants of one clip --------------- */
typedef struct ds4_world_ball {
    int    color;            /* DS4_WC_RED .. DS4_WC_YELLOW */
    double r, m;             /* radius (m), mass (kg) */
    double x, y, vx, vy;     /* centre (m) and velocity (m/s) */
} ds4_world_ball;

typedef struct ds4_world_pour {
    int    enabled;
    double x, y;             /* nozzle centre (m) */
    double vx, vy;           /* exit velocity (m/s) */
    double width;            /* nozzle width (m) */
    double t_start, t_end;   /* pouring interval (s) */
    double rate;             /* particles per second */
    int    max_particles;    /* <= DS4_WORLD_MAX_PARTICLES */
} ds4_world_pour;

typedef struct ds4_world_scene {
    uint64_t seed;
    double   width_m, height_m, wall_m;
    double   g;              /* gravity, m/s^2, pointing down */
    double   restitution;    /* ball-wall and ball-ball */
    double   friction;       /* Coulomb coefficient of the tangential impulse at contacts */
    double   rolling;        /* rolling resistance: a ball resting on the floor decelerates by rolling*g */
    int      fps, substeps;  /* frame rate, physics substeps per frame */
    int      n_balls;
    ds4_world_ball balls[DS4_WORLD_MAX_BALLS];
    ds4_world_pour water;
} ds4_world_scene;

/* An empty scene (no balls, no water) of the given size with the default
 * constants: g 9.81, restitution 0.8, friction 0.1, rolling 0.02, 24 fps x 8. */
void ds4_world_scene_init(ds4_world_scene *s, double width_m, double height_m);
/* The random scene of a seed (SPEC §3): 1-3 balls of distinct colours, radius
 * 0.15-0.40 m, g in [6,14], restitution in [0.6,0.95], water in about a
 * quarter of scenes. width_px/height_px only set the aspect ratio. All drawn
 * values are rounded to 1e-3 so the annotations state them exactly. */
int ds4_world_scene_random(ds4_world_scene *s, uint64_t seed, int width_px, int height_px);
int ds4_world_scene_validate(const ds4_world_scene *s);
/* Add a ball (mass from the density); returns its id or -1. */
int ds4_world_scene_add_ball(ds4_world_scene *s, int color, double r,
                             double x, double y, double vx, double vy);

/* ---- simulator ------------------------------------------------------------ */
enum { DS4_WEV_BOUNCE = 0, DS4_WEV_COLLISION, DS4_WEV_POUR };
enum { DS4_WSURF_NONE = 0, DS4_WSURF_FLOOR, DS4_WSURF_LEFT, DS4_WSURF_RIGHT, DS4_WSURF_CEILING };

typedef struct ds4_world_event {
    int    frame;            /* first frame showing the state after the event */
    int    type;             /* DS4_WEV_* */
    int    n_ids, ids[2];    /* balls (ascending), or the water object */
    int    surface;          /* DS4_WSURF_* for bounces */
    double speed;            /* impact / approach speed, m/s */
} ds4_world_event;

/* The state is public for reading; change it only through the functions. */
typedef struct ds4_world_sim {
    ds4_world_scene sc;      /* constants; sc.balls holds the current ball state */
    int     frame;           /* the state is that of frame `frame` (t = frame / fps) */
    int     n_particles;
    double *px, *py;         /* [max_particles] water particle positions */
    double *pvx, *pvy;       /* [max_particles] velocities */
    ds4_world_event *events; /* [n_events] in time order */
    int     n_events, cap_events;
    /* private scratch */
    double *qx, *qy;         /* [max_particles] positions before the substep */
    int    *cell_start;      /* [n_cells + 1] spatial hash */
    int    *cell_items;      /* [max_particles] */
    int    *cell_of;         /* [max_particles] */
    int     grid_w, grid_h;
    int    *pairs;           /* [max_pairs][2] neighbour pairs (i < j) of the last fluid step */
    int     n_pairs, max_pairs;
    double *fscratch;        /* [4][max_particles] densities and displacements */
    double  emit_acc;
    int     emitted;         /* particles emitted so far */
} ds4_world_sim;

ds4_world_sim *ds4_world_sim_new(const ds4_world_scene *s);
void ds4_world_sim_free(ds4_world_sim *s);
/* Advance one frame (1/fps seconds in sc.substeps substeps). Returns 0, or -1
 * if recording an event ran out of memory. */
int ds4_world_sim_step(ds4_world_sim *s);
/* Kinetic + potential energy of the balls (J), potential measured from y = 0. */
double ds4_world_sim_energy(const ds4_world_sim *s);
/* Water summary: particle count, centroid and mean velocity (zeros if none). */
void ds4_world_sim_water(const ds4_world_sim *s, int *n, double *x, double *y,
                         double *vx, double *vy);

/* ---- rendering ------------------------------------------------------------ */
/* Draw the current state into rgb [height][width][3] with px_per_m =
 * width / sc.width_m: background, water particles, balls (pixel-centre rule,
 * no anti-aliasing), then floor and walls. */
void ds4_world_render(const ds4_world_sim *s, uint8_t *rgb, int width, int height);
/* Fill every pixel whose centre lies in the disc (x, y, r) (metres). */
void ds4_world_draw_disc(uint8_t *rgb, int width, int height, double px_per_m,
                         double x, double y, double r, const uint8_t color[3]);

/* ---- clips: simulation + rendering + annotations -------------------------- */
typedef struct ds4_world_state {
    double x, y, vx, vy;     /* ball centre / water centroid and mean velocity */
    int    n;                /* 1 for a ball, particle count for water */
} ds4_world_state;

typedef struct ds4_world_clip {
    ds4_world_scene scene;   /* initial conditions */
    int      width_px, height_px, fps, n_frames;
    double   px_per_m;
    int      n_objects;      /* balls have ids 0..n_balls-1, water (if any) n_balls */
    ds4_world_state *states; /* [n_frames][n_objects] */
    ds4_world_event *events; /* [n_events] */
    int      n_events;
    char     caption[512];
    uint8_t *rgb;            /* [n_frames][height_px][width_px][3], NULL if not rendered */
} ds4_world_clip;

/* Simulate (and render when `render`) n_frames frames of a scene. */
int ds4_world_clip_simulate(ds4_world_clip *c, const ds4_world_scene *sc,
                            int width_px, int height_px, int n_frames, int render);
/* The clip of a seed: ds4_world_scene_random + ds4_world_clip_simulate. */
int ds4_world_clip_make(ds4_world_clip *c, uint64_t seed, int width_px, int height_px,
                        int fps, int n_frames, int render);
void ds4_world_clip_free(ds4_world_clip *c);
/* Number of bounce events of ball `id`. */
int ds4_world_clip_bounces(const ds4_world_clip *c, int id);

/* The caption of a simulated clip, from its annotations (deterministic). */
int ds4_world_caption(const ds4_world_clip *c, char *out, size_t cap);

/* One annotation line (SPEC §3 fields, no newline), malloc'd. */
char *ds4_world_clip_to_json(const ds4_world_clip *c);
/* Parse an annotation line back (no frames rendered; the water source is not
 * in the annotations so scene.water stays disabled). origin names the input. */
int ds4_world_clip_from_json(ds4_world_clip *c, const char *json, const char *origin);
/* Call fn for each line of a JSON Lines annotation file; fn returning
 * non-zero stops the loop with that value. */
int ds4_world_annotations_foreach(const char *path,
                                  int (*fn)(void *user, const ds4_world_clip *c, int index),
                                  void *user);

/* ---- dataset: shards of raw frames --------------------------------------- *
 * File "<split>-<NNNNN>.ds4w", little-endian:
 *   0  char[8]  magic "DS4WCLIP"
 *   8  u32      version (1)
 *  12  u32      n_clips
 *  16  u32      frames per clip
 *  20  u32      width
 *  24  u32      height
 *  28  u32      channels (3)
 *  32  u32      fps
 *  36  u32      header crc32 (of bytes 0..35 and the clip table)
 *  40  u64      bytes per clip (frames * height * width * 3)
 *  48  u8[16]   zero
 *  64  n_clips x { u64 seed; u32 crc32 of the clip's bytes; u32 zero }
 *  then n_clips clips of [frames][height][width][3] RGB8, top row first. */
#define DS4_WORLD_SHARD_MAGIC   "DS4WCLIP"
#define DS4_WORLD_SHARD_VERSION 1
#define DS4_WORLD_SHARD_HEADER  64

typedef struct ds4_world_shard {
    int       n_clips, n_frames, width, height, fps;
    size_t    clip_bytes;
    uint64_t *seeds;         /* [n_clips] */
    uint32_t *crcs;          /* [n_clips] */
    const uint8_t *data;     /* [n_clips][clip_bytes], inside the mapping */
    void     *map;
    size_t    map_len;
    char      path[1024];
} ds4_world_shard;

/* Open (mmap) and validate a shard: magic, version, sane sizes, header CRC,
 * exact file length; verify != 0 also checks every clip's CRC. */
ds4_world_shard *ds4_world_shard_open(const char *path, int verify);
/* Pointer to clip i: [n_frames][height][width][3]; NULL (with error) if out of range. */
const uint8_t *ds4_world_shard_clip(const ds4_world_shard *s, int i);
/* Check clip i against its CRC. */
int ds4_world_shard_verify_clip(const ds4_world_shard *s, int i);
void ds4_world_shard_close(ds4_world_shard *s);

typedef struct ds4_world_shard_writer ds4_world_shard_writer;
/* Atomic writer for a shard of exactly n_clips clips. */
ds4_world_shard_writer *ds4_world_shard_create(const char *path, int n_clips, int n_frames,
                                               int width, int height, int fps);
int  ds4_world_shard_add(ds4_world_shard_writer *w, uint64_t seed, const uint8_t *rgb);
/* Write the table, fsync, rename into place; frees w. Fails if clips are missing. */
int  ds4_world_shard_finish(ds4_world_shard_writer *w);
void ds4_world_shard_abort(ds4_world_shard_writer *w);

uint32_t ds4_world_crc32(uint32_t crc, const void *data, size_t len);

/* ---- dataset generation --------------------------------------------------- *
 * Split seed ranges: clip k of split train has seed seed+k, val 1000000+seed+k,
 * test 2000000+seed+k (so n must stay <= 1000000). */
#define DS4_WORLD_SPLIT_STRIDE 1000000ULL

typedef struct ds4_world_gen_opts {
    const char *out_dir;
    const char *split;       /* "train", "val" or "test" */
    int      n_clips;
    int      width, height, fps, n_frames;
    uint64_t seed;
    int      clips_per_shard; /* default 64 */
    int      threads;         /* 0: OpenMP default */
} ds4_world_gen_opts;

/* First seed of a split; -1 for an unknown split name. */
int ds4_world_split_seed(const char *split, uint64_t seed, uint64_t *first);
/* Writes <out>/<split>-NNNNN.ds4w and <out>/<split>.jsonl (clip order).
 * progress (may be NULL) is called from the calling thread. */
int ds4_world_gen_dataset(const ds4_world_gen_opts *o,
                          void (*progress)(void *user, int done, int total), void *user);
/* Paths of <dir>/<split>-00000.ds4w, -00001, ... up to the first missing one. */
int ds4_world_dataset_shards(const char *dir, const char *split, char ***paths, int *n);

/* ---- output --------------------------------------------------------------- */
/* Animated GIF (looping) of n frames; delays follow fps; each pixel is
 * upscaled scale x scale. Palette frames map exactly; others are quantized to
 * a fixed 256-colour palette (SPEC colours + 6x6x6 cube + greys). */
int ds4_world_write_gif(const char *path, const uint8_t *rgb, int n_frames,
                        int width, int height, int fps, int scale);
int ds4_world_write_png(const char *path, const uint8_t *rgb, int width, int height);
/* Read any 8-bit PNG as RGB8 (malloc'd). */
int ds4_world_read_png(const char *path, uint8_t **rgb, int *width, int *height);
/* <dir>/frame_0000.png ... (dir is created). */
int ds4_world_write_png_frames(const char *dir, const uint8_t *rgb, int n_frames,
                               int width, int height);
/* 1 if an executable ffmpeg is on PATH. */
int ds4_world_ffmpeg_available(void);
/* H.264 MP4 through an ffmpeg subprocess; a clear error when ffmpeg is absent. */
int ds4_world_write_mp4(const char *path, const uint8_t *rgb, int n_frames,
                        int width, int height, int fps);

/* ---- extraction (physics evaluation) -------------------------------------- */
typedef struct ds4_world_blob {
    int    color;            /* DS4_WC_* */
    int    area;             /* pixels */
    double col, row;         /* centroid in pixel units (a pixel's centre is col+0.5, row+0.5) */
    double x, y;             /* centroid in metres (SPEC pixel-centre rule) */
    double r_px, r_m;        /* radius estimate sqrt(area / pi) */
    int    col0, row0, col1, row1; /* bounding box, inclusive */
} ds4_world_blob;

/* Classify each pixel to the nearest palette colour (if within `tolerance`
 * RGB Euclidean distance, else background), then connected components
 * (8-neighbour) of each ball colour with at least min_area pixels. Blobs go to
 * out (up to max_out, largest first within a colour, colours in palette
 * order); returns their total count (may exceed max_out) or -1. water (may be
 * NULL) receives all water pixels as one blob (area 0 if none). */
int ds4_world_extract(const uint8_t *rgb, int width, int height, double px_per_m,
                      int tolerance, int min_area, ds4_world_blob *out, int max_out,
                      ds4_world_blob *water);

#ifdef __cplusplus
}
#endif
#endif
