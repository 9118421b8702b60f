/* seq.c — the token layout of the world model (SPEC §3): special ids from the
 * tokenizer, code ids after the text vocabulary, and building / validating
 * <|bos|> caption <|video|> (codes <|frame|>)... <|eov|> sequences. */
#include <stdio.h>
#include <string.h>
#include "util/util.h"
#include "worldmodel/worldmodel.h"

static const char *const SPECIALS[6] = {"<|bos|>", "<|eos|>", "<|video|>", "<|eov|>", "<|frame|>", "<|pad|>"};

int ds4_wm_layout_init(ds4_wm_layout *L, const ds4_config *c, const ds4_tokenizer *tok) {
    memset(L, 0, sizeof *L);
    const ds4_video_config *v = &c->video;
    if (!v->enabled) {
        ds4_set_error("config.json: no \"video\" object: this is not a world model");
        return -1;
    }
    long codes = 1;
    for (int i = 0; i < v->n_levels; i++) codes *= v->levels[i];
    L->code_offset = v->code_offset;
    L->n_codes = (int)codes;
    L->patch = v->patch;
    L->tubelet = v->tubelet;
    L->fps = v->fps;
    L->width = v->width;
    L->height = v->height;
    L->gh = v->height / v->patch;
    L->gw = v->width / v->patch;
    L->cpf = L->gh * L->gw;
    L->text_vocab = tok ? ds4_tokenizer_vocab_size(tok) : v->code_offset;
    if (L->text_vocab > L->code_offset) {
        ds4_set_error("config.json: video.code_offset %d lies inside the tokenizer's %d text ids "
                      "(codes must follow the text vocabulary)", L->code_offset, L->text_vocab);
        return -1;
    }
    if ((long)L->code_offset + codes > c->vocab_size) {
        ds4_set_error("config.json: %ld codes from %d do not fit vocab_size %d", codes, L->code_offset,
                      c->vocab_size);
        return -1;
    }
    int *ids[6] = {&L->bos, &L->eos, &L->video, &L->eov, &L->frame, &L->pad};
    for (int i = 0; i < 6; i++) {
        int id = tok ? ds4_tokenizer_special(tok, SPECIALS[i]) : L->text_vocab - 6 + i;
        if (id < 0 || id >= L->text_vocab) {
            ds4_set_error("tokenizer: special token %s is missing", SPECIALS[i]);
            return -1;
        }
        *ids[i] = id;
    }
    return 0;
}

int ds4_wm_layout_check_vtok(const ds4_wm_layout *L, const ds4_vtok *vt) {
    const ds4_vtok_config *c = &vt->cfg;
    if (c->patch != L->patch || c->tubelet != L->tubelet) {
        ds4_set_error("video tokenizer: patch %d, tubelet %d but config.json says %d, %d", c->patch,
                      c->tubelet, L->patch, L->tubelet);
        return -1;
    }
    if (vt->fsq.n_codes != L->n_codes) {
        ds4_set_error("video tokenizer: %d codes but config.json's video.levels give %d",
                      (int)vt->fsq.n_codes, L->n_codes);
        return -1;
    }
    if (L->width % c->patch || L->height % c->patch) {
        ds4_set_error("config.json: video frame %dx%d is not a multiple of the tokenizer patch %d",
                      L->width, L->height, c->patch);
        return -1;
    }
    return 0;
}

int ds4_wm_seq_build(const ds4_wm_layout *L, const int *caption, int n_caption,
                     const int32_t *codes, int n_lat, int eov, int *out, int cap) {
    const int n = ds4_wm_seq_len(L, n_caption, n_lat, eov);
    if (n_caption < 0 || n_lat < 0 || n > cap) {
        ds4_set_error("world sequence: %d tokens (caption %d, %d latent frames) do not fit %d", n,
                      n_caption, n_lat, cap);
        return -1;
    }
    int k = 0;
    out[k++] = L->bos;
    for (int i = 0; i < n_caption; i++) {
        if (caption[i] < 0 || caption[i] >= L->text_vocab) {
            ds4_set_error("world sequence: caption token %d has id %d, not a text id", i, caption[i]);
            return -1;
        }
        out[k++] = caption[i];
    }
    out[k++] = L->video;
    for (int t = 0; t < n_lat; t++) {
        for (int j = 0; j < L->cpf; j++) {
            int32_t c = codes[(size_t)t * L->cpf + j];
            if (c < 0 || c >= L->n_codes) {
                ds4_set_error("world sequence: code %d at latent frame %d, index %d is outside [0, %d)",
                              (int)c, t, j, L->n_codes);
                return -1;
            }
            out[k++] = L->code_offset + c;
        }
        out[k++] = L->frame;
    }
    if (eov) out[k++] = L->eov;
    return k;
}

int ds4_wm_seq_parse(const ds4_wm_layout *L, const int *toks, int n, int *cap_start,
                     int *n_caption, int32_t *codes, int max_lat, int *n_lat, int *closed) {
    *n_lat = 0;
    *closed = 0;
    if (n < 2 || toks[0] != L->bos) {
        ds4_set_error("world sequence: token 0 is not <|bos|>");
        return -1;
    }
    int i = 1;
    while (i < n && toks[i] != L->video) {
        if (toks[i] < 0 || toks[i] >= L->text_vocab || toks[i] == L->bos || toks[i] == L->eov ||
            toks[i] == L->frame) {
            ds4_set_error("world sequence: token %d (id %d) is not caption text", i, toks[i]);
            return -1;
        }
        i++;
    }
    if (i == n) {
        ds4_set_error("world sequence: no <|video|> token");
        return -1;
    }
    *cap_start = 1;
    *n_caption = i - 1;
    i++;
    int in_frame = 0, lat = 0;
    for (; i < n; i++) {
        const int id = toks[i];
        if (ds4_wm_is_code(L, id)) {
            if (in_frame == L->cpf) {
                ds4_set_error("world sequence: token %d: code where <|frame|> belongs (after %d codes)", i,
                              L->cpf);
                return -1;
            }
            if (codes && lat < max_lat) codes[(size_t)lat * L->cpf + in_frame] = id - L->code_offset;
            in_frame++;
        } else if (id == L->frame) {
            if (in_frame != L->cpf) {
                ds4_set_error("world sequence: token %d: <|frame|> after %d codes (want %d)", i, in_frame,
                              L->cpf);
                return -1;
            }
            in_frame = 0;
            lat++;
        } else if (id == L->eov) {
            if (in_frame != 0) {
                ds4_set_error("world sequence: token %d: <|eov|> inside a latent frame", i);
                return -1;
            }
            *closed = 1;
            for (int j = i + 1; j < n; j++)
                if (toks[j] != L->pad) {
                    ds4_set_error("world sequence: token %d (id %d) after <|eov|> is not <|pad|>", j, toks[j]);
                    return -1;
                }
            break;
        } else {
            ds4_set_error("world sequence: token %d (id %d) is neither a code nor <|frame|>/<|eov|>", i, id);
            return -1;
        }
    }
    if (in_frame != 0) {
        ds4_set_error("world sequence: ends inside a latent frame (%d of %d codes)", in_frame, L->cpf);
        return -1;
    }
    if (codes && lat > max_lat) {
        ds4_set_error("world sequence: %d latent frames, more than the %d the buffer holds", lat, max_lat);
        return -1;
    }
    *n_lat = lat;
    return 0;
}
