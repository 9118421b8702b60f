/* data.c — the world model's training set: dataset clips encoded into video
 * codes by the video tokenizer, their captions tokenized, and training rows
 * <|bos|> [caption] <|video|> window of latent frames <|eov|> <|pad|>... */
#include <stdlib.h>
#include <string.h>
#include "util/util.h"
#include "world/world.h"
#include "worldmodel/worldmodel.h"

typedef struct caption_ctx {
    const ds4_tokenizer *tok;
    ds4_wm_clips *c;
    int caption_max;
    size_t cap_used, cap_cap;
} caption_ctx;

static int on_caption(void *user, const ds4_world_clip *clip, int index) {
    caption_ctx *x = user;
    ds4_wm_clips *c = x->c;
    if (index >= c->n_clips) return 1;          /* more lines than clips asked for */
    int *ids = NULL;
    size_t n = 0;
    if (ds4_tokenizer_encode(x->tok, clip->caption, strlen(clip->caption), &ids, &n) != 0) return -1;
    if ((int)n > x->caption_max) n = (size_t)x->caption_max;
    if (x->cap_used + n > x->cap_cap) {
        size_t nc = (x->cap_cap + n) * 2;
        int *p = realloc(c->cap_ids, nc * sizeof *p);
        if (!p) { free(ids); ds4_set_error("out of memory for captions"); return -1; }
        c->cap_ids = p;
        x->cap_cap = nc;
    }
    memcpy(c->cap_ids + x->cap_used, ids, n * sizeof *ids);
    c->cap_off[index] = (int)x->cap_used;
    c->cap_len[index] = (int)n;
    x->cap_used += n;
    free(ids);
    return 0;
}

int ds4_wm_clips_encode(ds4_wm_clips *c, const ds4_vtok *vt, const ds4_tokenizer *tok,
                        const ds4_wm_layout *L, const char *dir, const char *split,
                        int max_clips, int caption_max) {
    memset(c, 0, sizeof *c);
    char **paths = NULL;
    int n_shards = 0, rc = -1;
    if (ds4_world_dataset_shards(dir, split, &paths, &n_shards) != 0) return -1;
    if (n_shards == 0) {
        ds4_set_error("%s: no %s-*.ds4w shards", dir, split);
        goto out;
    }
    /* count the clips and check every shard has the model's frame size */
    int total = 0, n_frames = 0;
    for (int s = 0; s < n_shards; s++) {
        ds4_world_shard *sh = ds4_world_shard_open(paths[s], 0);
        if (!sh) goto out;
        if (sh->width != L->width || sh->height != L->height) {
            ds4_set_error("%s: %dx%d frames but the model uses %dx%d", paths[s], sh->width, sh->height,
                          L->width, L->height);
            ds4_world_shard_close(sh);
            goto out;
        }
        if (s == 0) n_frames = sh->n_frames;
        if (sh->n_frames != n_frames) {
            ds4_set_error("%s: %d frames per clip, the first shard has %d", paths[s], sh->n_frames, n_frames);
            ds4_world_shard_close(sh);
            goto out;
        }
        total += sh->n_clips;
        ds4_world_shard_close(sh);
    }
    if (max_clips > 0 && total > max_clips) total = max_clips;
    c->n_clips = total;
    c->n_lat = (n_frames + L->tubelet - 1) / L->tubelet;
    c->cpf = L->cpf;
    c->codes = ds4_malloc((size_t)total * c->n_lat * c->cpf * sizeof *c->codes);
    c->cap_off = ds4_calloc((size_t)total, sizeof *c->cap_off);
    c->cap_len = ds4_calloc((size_t)total, sizeof *c->cap_len);
    if (!c->codes || !c->cap_off || !c->cap_len) goto out;
    int k = 0;
    for (int s = 0; s < n_shards && k < total; s++) {
        ds4_world_shard *sh = ds4_world_shard_open(paths[s], 0);
        if (!sh) goto out;
        for (int i = 0; i < sh->n_clips && k < total; i++, k++) {
            const uint8_t *rgb = ds4_world_shard_clip(sh, i);
            if (!rgb || ds4_vtok_encode(vt, rgb, sh->n_frames, sh->height, sh->width,
                                        c->codes + (size_t)k * c->n_lat * c->cpf) != 0) {
                ds4_error_prefix("%s clip %d: ", paths[s], i);
                ds4_world_shard_close(sh);
                goto out;
            }
        }
        ds4_world_shard_close(sh);
    }
    char jpath[4096];
    snprintf(jpath, sizeof jpath, "%s/%s.jsonl", dir, split);
    caption_ctx x = {tok, c, caption_max, 0, 0};
    int frc = ds4_world_annotations_foreach(jpath, on_caption, &x);
    if (frc < 0) goto out;
    rc = 0;
out:
    for (int s = 0; s < n_shards; s++) free(paths[s]);
    free(paths);
    if (rc != 0) ds4_wm_clips_free(c);
    return rc;
}

void ds4_wm_clips_free(ds4_wm_clips *c) {
    free(c->codes);
    free(c->cap_ids);
    free(c->cap_off);
    free(c->cap_len);
    memset(c, 0, sizeof *c);
}

int ds4_wm_row_video(const ds4_wm_layout *L, const ds4_wm_clips *c, int clip, int start,
                     int window, int with_caption, int *row, int T1) {
    if (clip < 0 || clip >= c->n_clips || start < 0 || start >= c->n_lat) {
        ds4_set_error("world row: clip %d / start %d out of range", clip, start);
        return -1;
    }
    int nc = with_caption ? c->cap_len[clip] : 0;
    int n = window;
    if (n > c->n_lat - start) n = c->n_lat - start;
    while (n > 0 && ds4_wm_seq_len(L, nc, n, 1) > T1) n--;
    if (n < 1) {
        ds4_set_error("world row: %d tokens cannot hold one latent frame (caption %d)", T1, nc);
        return -1;
    }
    const int *cap = c->cap_ids ? c->cap_ids + c->cap_off[clip] : NULL;
    int len = ds4_wm_seq_build(L, cap, nc, c->codes + ((size_t)clip * c->n_lat + start) * c->cpf, n, 1,
                               row, T1);
    if (len < 0) return -1;
    for (int i = len; i < T1; i++) row[i] = L->pad;
    return 0;
}
