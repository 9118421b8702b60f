/* load.c — open a model directory for inference: check that the files are
 * there (so the error names the missing one), then load the model and,
 * when asked, its tokenizer. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include "infer/infer.h"
#include "model/quantized.h"

int ds4_open_model_dir(const char *dir, ds4_model **m, ds4_tokenizer **tok) {
    *m = NULL;
    if (tok) *tok = NULL;
    struct stat st;
    if (stat(dir, &st) != 0) {
        ds4_set_error("model directory %s: %s", dir, strerror(errno));
        return -1;
    }
    if (S_ISREG(st.st_mode) && ds4_gguf_is_gguf(dir)) return ds4_model_open_gguf(dir, m, tok);
    if (!S_ISDIR(st.st_mode)) {
        ds4_set_error("model directory %s: not a directory", dir);
        return -1;
    }
    const char *need[3] = {"config.json", "model.safetensors", "tokenizer.json"};
    char path[4200];
    for (int i = 0; i < (tok ? 3 : 2); i++) {
        snprintf(path, sizeof path, "%s/%s", dir, need[i]);
        if (!ds4_file_exists(path)) {
            ds4_set_error("model directory %s has no %s", dir, need[i]);
            return -1;
        }
    }
    *m = ds4_model_load(dir);
    if (!*m) return -1;
    if (tok) {
        snprintf(path, sizeof path, "%s/tokenizer.json", dir);
        *tok = ds4_tokenizer_load(path);
        if (!*tok) {
            ds4_model_free(*m);
            *m = NULL;
            return -1;
        }
    }
    return 0;
}
