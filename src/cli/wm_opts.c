/* wm_opts.c — the options `ds4 video` and `ds4 simulate` share: where the
 * clip goes (GIF, PNG frames, MP4, trajectories) and how codes are sampled. */
#include <stdint.h>
#include <string.h>
#include "cli/cli.h"
#include "worldmodel/worldmodel.h"

int cli_wm_option(const char *cmd, const char *a, const char *v, ds4_wm_gen_params *gp, ds4_wm_output *oo) {
    long n;
    double x;
    if (!strcmp(a, "--out")) oo->gif = v;
    else if (!strcmp(a, "--scale")) { if (cli_int(cmd, a, v, 1, 64, &n)) return -1; oo->scale = (int)n; }
    else if (!strcmp(a, "--png")) oo->png_dir = v;
    else if (!strcmp(a, "--mp4")) oo->mp4 = v;
    else if (!strcmp(a, "--json")) oo->json = v;
    else if (!strcmp(a, "--temp")) { if (cli_float(cmd, a, v, &x)) return -1; gp->sampler.temperature = (float)x; }
    else if (!strcmp(a, "--top-k")) { if (cli_int(cmd, a, v, 0, 1 << 20, &n)) return -1; gp->sampler.top_k = (int)n; }
    else if (!strcmp(a, "--top-p")) { if (cli_float(cmd, a, v, &x)) return -1; gp->sampler.top_p = (float)x; }
    else if (!strcmp(a, "--seed")) { if (cli_int(cmd, a, v, 0, 1L << 62, &n)) return -1; gp->sampler.seed = (uint64_t)n; }
    else if (!strcmp(a, "--window")) { if (cli_int(cmd, a, v, 2, 4096, &n)) return -1; gp->window = (int)n; }
    else if (!strcmp(a, "--keep")) { if (cli_int(cmd, a, v, 1, 4096, &n)) return -1; gp->keep = (int)n; }
    else return 0;
    return 1;
}
