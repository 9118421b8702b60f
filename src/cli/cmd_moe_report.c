/* cmd_moe_report.c — `ds4 moe-report`: expert load, utilization, MaxVio,
 * dead experts, coefficient of variation and expert-parallel communication
 * of a model on a text file (SPEC §1.2), as a table, a JSON report and a
 * load heatmap PNG (layers x experts, written here with libpng). The math
 * lives in src/model/moe_stats.c. */
#include <cjson/cJSON.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "model/moe.h"
#include "util/util.h"

static void help(void) {
    printf("usage: ds4 moe-report --model DIR --data TEXTFILE [options]\n\n"
           "Runs the model over held-out text (inference routing, dropless) and reports per MoE layer\n"
           "and overall: per-expert load, utilization = mean(load)/max(load), MaxVio, dead experts,\n"
           "coefficient of variation, and all-to-all bytes per token for R ranks against flat top-k\n"
           "routing of the same scores on the same placement (SPEC 1.2).\n\n"
           "  --model DIR        model directory (config.json, model.safetensors, tokenizer.json)\n"
           "  --data FILE        text to route (e.g. ../shared/data/brown/val.txt)\n"
           "  --ranks R[,R...]   expert-parallel ranks (default: 4,8 where they divide n_group)\n"
           "  --out FILE         JSON report\n"
           "  --png FILE         load heatmap: a row per MoE layer, a column per expert, colour =\n"
           "                     load / mean load (black: dead, teal: 1, yellow: >= 2); ticks mark groups\n"
           "  --max-tokens N     tokens of FILE to use (32768)\n"
           "  --seq T            window length, each window from position 0 (256, <= max positions)\n"
           "  --elem-bytes N     bytes per activation element on the wire (2: bf16)\n"
           "Placement: expert e on rank e/(E/R) (G/R contiguous groups per rank); token t on rank t mod R.\n");
}

/* ---- heatmap -------------------------------------------------------------- */

/* Colour for v = load / mean load: dead black, then dark blue -> teal (1) -> yellow (>= 2). */
static void colour(double v, unsigned char *rgb) {
    static const double stops[][4] = {
        {0.00, 20, 10, 40}, {0.50, 50, 60, 150}, {1.00, 30, 160, 150}, {1.50, 150, 200, 70}, {2.00, 250, 230, 40},
    };
    if (v <= 0) { rgb[0] = rgb[1] = rgb[2] = 0; return; }
    if (v >= 2) v = 2;
    int i = 0;
    while (i < 3 && v > stops[i + 1][0]) i++;
    const double f = (v - stops[i][0]) / (stops[i + 1][0] - stops[i][0]);
    for (int ch = 0; ch < 3; ch++) rgb[ch] = (unsigned char)lround(stops[i][ch + 1] + f * (stops[i + 1][ch + 1] - stops[i][ch + 1]));
}

static int write_heatmap(const char *path, const ds4_moe_report *r, int per_group) {
    int rows = 0;
    for (int l = 0; l < r->n_layers; l++) rows += r->is_moe[l];
    const int E = r->E, cw = E >= 512 ? 2 : 1024 / E, ch = 32, gap = 2, tick = 4;
    const int bar = 12, W = E * cw, H = tick + rows * (ch + gap) + gap + bar;
    unsigned char *img = calloc((size_t)W * H * 3, 1);              /* [H, W, 3] */
    if (!img) { fprintf(stderr, "ds4 moe-report: out of memory for the heatmap\n"); return -1; }
    for (int x = 0; x < W; x++)                                      /* group ticks on top */
        if ((x / cw) % per_group == 0 && x % cw == 0)
            for (int y = 0; y < tick; y++) memset(img + ((size_t)y * W + x) * 3, 200, 3);
    int row = 0;
    for (int l = 0; l < r->n_layers; l++) {
        if (!r->is_moe[l]) continue;
        const int64_t *load = r->load + (size_t)l * E;
        double mean = 0;
        for (int e = 0; e < E; e++) mean += (double)load[e];
        mean /= E;
        for (int e = 0; e < E; e++) {
            unsigned char rgb[3];
            colour(mean > 0 ? load[e] / mean : 0, rgb);
            for (int y = 0; y < ch; y++)
                for (int x = e * cw; x < (e + 1) * cw; x++) memcpy(img + ((size_t)(tick + row * (ch + gap) + y) * W + x) * 3, rgb, 3);
        }
        row++;
    }
    for (int x = 0; x < W; x++) {                                    /* colour bar: 0 .. 2 x mean */
        unsigned char rgb[3];
        colour(2.0 * (x + 0.5) / W, rgb);
        for (int y = H - bar; y < H; y++) memcpy(img + ((size_t)y * W + x) * 3, rgb, 3);
    }
    FILE *f = fopen(path, "wb");
    png_structp png = f ? png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL) : NULL;
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!f || !png || !info || setjmp(png_jmpbuf(png))) {
        fprintf(stderr, "ds4 moe-report: cannot write %s\n", path);
        if (png) png_destroy_write_struct(&png, info ? &info : NULL);
        if (f) fclose(f);
        free(img);
        return -1;
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)W, (png_uint_32)H, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < H; y++) png_write_row(png, img + (size_t)y * W * 3);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    fclose(f);
    free(img);
    return 0;
}

/* ---- report ------------------------------------------------------------------ */

static double bytes_of(const ds4_moe_comm *c, int hidden, int eb) { return ds4_moe_comm_dispatch_bytes(c, hidden, eb); }

static cJSON *comm_json(const ds4_moe_report *r, const ds4_moe_comm *cm, const ds4_moe_comm *fl, int i, int eb) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "ranks", r->ranks[i]);
    cJSON_AddNumberToObject(o, "remote_ranks_per_token", (double)cm->remote / (double)cm->tokens);
    cJSON_AddNumberToObject(o, "ranks_per_token", (double)cm->ranks / (double)cm->tokens);
    cJSON_AddNumberToObject(o, "dispatch_bytes_per_token", bytes_of(cm, r->hidden, eb));
    cJSON_AddNumberToObject(o, "flat_remote_ranks_per_token", (double)fl->remote / (double)fl->tokens);
    cJSON_AddNumberToObject(o, "flat_dispatch_bytes_per_token", bytes_of(fl, r->hidden, eb));
    cJSON_AddNumberToObject(o, "ratio_vs_flat", fl->remote ? (double)cm->remote / (double)fl->remote : 1.0);
    return o;
}

static void stats_json(cJSON *o, const ds4_moe_load_stats *st) {
    cJSON_AddNumberToObject(o, "utilization", st->utilization);
    cJSON_AddNumberToObject(o, "max_vio", st->max_vio);
    cJSON_AddNumberToObject(o, "dead", st->dead);
    cJSON_AddNumberToObject(o, "cv", st->cv);
    cJSON_AddNumberToObject(o, "min_load", st->min);
    cJSON_AddNumberToObject(o, "max_load", st->max);
    cJSON_AddNumberToObject(o, "mean_load", st->mean);
}

int cmd_moe_report(int argc, char **argv) {
    const char *model_dir = NULL, *data = NULL, *out = NULL, *png = NULL, *ranks_arg = NULL;
    long max_tokens = 32768, seq = 256, eb = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_is_help(a)) { help(); return 0; }
        if (!(v = cli_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--model")) model_dir = v;
        else if (!strcmp(a, "--data")) data = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--png")) png = v;
        else if (!strcmp(a, "--ranks")) ranks_arg = v;
        else if (!strcmp(a, "--max-tokens")) { if (cli_int("moe-report", a, v, 2, 1L << 30, &max_tokens)) return 2; }
        else if (!strcmp(a, "--seq")) { if (cli_int("moe-report", a, v, 1, 1 << 20, &seq)) return 2; }
        else if (!strcmp(a, "--elem-bytes")) { if (cli_int("moe-report", a, v, 1, 8, &eb)) return 2; }
        else return cli_unknown("moe-report", a);
    }
    if (!model_dir || !data) {
        fprintf(stderr, "ds4 moe-report: --model and --data are required (see --help)\n");
        return 2;
    }
    ds4_model *m = ds4_model_load(model_dir);
    if (!m) return cli_fail("moe-report");
    const ds4_config *c = &m->cfg;
    if (c->n_routed_experts <= 0) {
        fprintf(stderr, "ds4 moe-report: %s is a dense model (n_routed_experts = 0)\n", model_dir);
        ds4_model_free(m);
        return 1;
    }
    ds4_moe_report rep;
    memset(&rep, 0, sizeof rep);
    if (ranks_arg) {
        const char *p = ranks_arg;
        while (*p) {
            char *end;
            long R = strtol(p, &end, 10);
            if (end == p || R < 1 || R > 1024 || (*end && *end != ',') || rep.n_ranks == DS4_MOE_MAX_RANKS) {
                fprintf(stderr, "ds4 moe-report: --ranks expects up to %d comma-separated counts, got '%s'\n",
                        DS4_MOE_MAX_RANKS, ranks_arg);
                ds4_model_free(m);
                return 2;
            }
            if (ds4_moe_placement_check(c, (int)R) != 0) { ds4_model_free(m); return cli_fail("moe-report"); }
            rep.ranks[rep.n_ranks++] = (int)R;
            p = *end ? end + 1 : end;
        }
    } else {
        for (int R = 4; R <= 8; R *= 2)
            if (ds4_moe_placement_check(c, R) == 0) rep.ranks[rep.n_ranks++] = R;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", model_dir);
    ds4_tokenizer *tok = ds4_tokenizer_load(path);
    char *text = NULL;
    size_t len = 0, n = 0;
    int *ids = NULL;
    if (!tok || ds4_read_file(data, &text, &len) != 0 || ds4_tokenizer_encode(tok, text, len, &ids, &n) != 0) {
        int rc = cli_fail("moe-report");
        ds4_tokenizer_free(tok);
        free(text);
        ds4_model_free(m);
        return rc;
    }
    ds4_tokenizer_free(tok);
    free(text);
    if (n > (size_t)max_tokens) n = (size_t)max_tokens;
    if (seq > c->max_position_embeddings) seq = c->max_position_embeddings;
    const double t0 = ds4_time_s();
    if (ds4_moe_measure(m, ids, n, (int)seq, &rep) != 0) {
        free(ids);
        ds4_model_free(m);
        return cli_fail("moe-report");
    }
    free(ids);
    const int E = rep.E, k = rep.k, per_group = E / c->n_group;

    /* table */
    printf("ds4 moe-report: %s on %s: %lld tokens (windows of %ld), %.1f s, loss %.4f\n", model_dir, data,
           (long long)rep.tokens, seq, ds4_time_s() - t0, rep.loss);
    printf("  %d experts in %d groups, k %d (%s), scoring %s; bytes: dispatch per token, %ld B/elem, hidden %d\n",
           E, c->n_group, k, c->topk_per_group > 0 ? "hierarchical" : "DeepSeek-V3 / flat",
           c->scoring_func == DS4_SCORE_SOFTMAX ? "softmax" : "sigmoid", eb, rep.hidden);
    printf("  %-7s %7s %7s %5s %6s %8s %8s", "layer", "util", "MaxVio", "dead", "CV", "min", "max");
    for (int i = 0; i < rep.n_ranks; i++) printf("  R=%-2d B/tok (flat) ratio", rep.ranks[i]);
    printf("\n");
    cJSON *root = cJSON_CreateObject(), *layers = cJSON_AddArrayToObject(root, "layers");
    cJSON_AddStringToObject(root, "model", model_dir);
    cJSON_AddStringToObject(root, "data", data);
    cJSON_AddNumberToObject(root, "tokens", (double)rep.tokens);
    cJSON_AddNumberToObject(root, "loss", rep.loss);
    cJSON_AddNumberToObject(root, "experts", E);
    cJSON_AddNumberToObject(root, "n_group", c->n_group);
    cJSON_AddNumberToObject(root, "k", k);
    cJSON_AddNumberToObject(root, "elem_bytes", (double)eb);
    cJSON_AddStringToObject(root, "placement", "expert e on rank e/(E/R); token t on rank t mod R");
    int64_t *pooled = calloc((size_t)E, sizeof(int64_t));
    double mean_util = 0, mean_vio = 0, mean_cv = 0;
    int n_moe = 0, dead = 0;
    ds4_moe_comm tot[DS4_MOE_MAX_RANKS], ftot[DS4_MOE_MAX_RANKS];
    memset(tot, 0, sizeof tot);
    memset(ftot, 0, sizeof ftot);
    for (int l = 0; l < rep.n_layers; l++) {
        if (!rep.is_moe[l]) continue;
        const int64_t *load = rep.load + (size_t)l * E;
        ds4_moe_load_stats st;
        ds4_moe_load_stats_of(load, E, &st);
        printf("  %-7d %6.1f%% %7.3f %5d %6.3f %8.0f %8.0f", l, 100 * st.utilization, st.max_vio, st.dead, st.cv,
               st.min, st.max);
        cJSON *lo = cJSON_CreateObject();
        cJSON_AddNumberToObject(lo, "layer", l);
        stats_json(lo, &st);
        cJSON *la = cJSON_AddArrayToObject(lo, "load");
        for (int e = 0; e < E; e++) { cJSON_AddItemToArray(la, cJSON_CreateNumber((double)load[e])); pooled[e] += load[e]; }
        cJSON *ca = cJSON_AddArrayToObject(lo, "comm");
        for (int i = 0; i < rep.n_ranks; i++) {
            const ds4_moe_comm *cm = &rep.comm[l][i], *fl = &rep.flat_comm[l][i];
            printf("  %6.0f (%6.0f) %5.3f", bytes_of(cm, rep.hidden, (int)eb), bytes_of(fl, rep.hidden, (int)eb),
                   fl->remote ? (double)cm->remote / fl->remote : 1.0);
            cJSON_AddItemToArray(ca, comm_json(&rep, cm, fl, i, (int)eb));
            tot[i].tokens += cm->tokens; tot[i].ranks += cm->ranks; tot[i].remote += cm->remote;
            ftot[i].tokens += fl->tokens; ftot[i].ranks += fl->ranks; ftot[i].remote += fl->remote;
        }
        printf("\n");
        cJSON_AddItemToArray(layers, lo);
        mean_util += st.utilization; mean_vio += st.max_vio; mean_cv += st.cv; dead += st.dead; n_moe++;
    }
    mean_util /= n_moe; mean_vio /= n_moe; mean_cv /= n_moe;
    printf("  %-7s %6.1f%% %7.3f %5d %6.3f %8s %8s", "mean", 100 * mean_util, mean_vio, dead, mean_cv, "", "");
    cJSON *ov = cJSON_AddObjectToObject(root, "overall");
    cJSON_AddNumberToObject(ov, "moe_layers", n_moe);
    cJSON_AddNumberToObject(ov, "utilization", mean_util);
    cJSON_AddNumberToObject(ov, "max_vio", mean_vio);
    cJSON_AddNumberToObject(ov, "cv", mean_cv);
    cJSON_AddNumberToObject(ov, "dead", dead);
    cJSON *oc = cJSON_AddArrayToObject(ov, "comm");
    for (int i = 0; i < rep.n_ranks; i++) {
        /* per layer averages; the all-to-all of every MoE layer adds up */
        printf("  %6.0f (%6.0f) %5.3f", bytes_of(&tot[i], rep.hidden, (int)eb) * n_moe,
               bytes_of(&ftot[i], rep.hidden, (int)eb) * n_moe,
               ftot[i].remote ? (double)tot[i].remote / ftot[i].remote : 1.0);
        cJSON *o = comm_json(&rep, &tot[i], &ftot[i], i, (int)eb);
        cJSON_AddNumberToObject(o, "dispatch_bytes_per_token_all_layers", bytes_of(&tot[i], rep.hidden, (int)eb) * n_moe);
        cJSON_AddNumberToObject(o, "flat_dispatch_bytes_per_token_all_layers", bytes_of(&ftot[i], rep.hidden, (int)eb) * n_moe);
        cJSON_AddItemToArray(oc, o);
    }
    printf("\n  (mean: utilization, MaxVio and CV averaged over MoE layers, dead summed; bytes summed over layers)\n");
    ds4_moe_load_stats pst;
    ds4_moe_load_stats_of(pooled, E, &pst);
    cJSON *po = cJSON_AddObjectToObject(ov, "pooled_over_layers");
    stats_json(po, &pst);
    int rc = 0;
    if (out) {
        char *txt = cJSON_Print(root);
        if (!txt || ds4_write_file_atomic(out, txt, strlen(txt)) != 0) rc = cli_fail("moe-report");
        else printf("wrote %s\n", out);
        free(txt);
    }
    if (png && rc == 0) {
        if (write_heatmap(png, &rep, per_group) != 0) rc = 1;
        else printf("wrote %s (%d MoE layers x %d experts)\n", png, n_moe, E);
    }
    cJSON_Delete(root);
    free(pooled);
    ds4_moe_report_free(&rep);
    ds4_model_free(m);
    return rc;
}
