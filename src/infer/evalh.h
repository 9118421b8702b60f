/* evalh.h — the evaluation harness beyond perplexity: multiple-choice sets
 * scored by log-likelihood (eval_mc.c), code problems whose completions run
 * against their tests (eval_code.c) inside a resource-limited sandbox
 * (sandbox.c). The CLI front end is src/cli/cmd_eval.c. */
#ifndef DS4_EVALH_H
#define DS4_EVALH_H

#include <stddef.h>
#include <stdint.h>
#include "infer/infer.h"

/* ---- multiple choice (eval_mc.c) -------------------------------------------
 * Data: JSON Lines in the MMLU layout, one object per line:
 *   {"question": "...", "choices": ["...", ...], "answer": 2}
 * "answer" is the 0-based index of the right choice, or a letter "A".."Z".
 * "subject" (string) is optional and kept for per-subject accuracy.
 *
 * Template (fixed, so numbers are comparable between runs):
 *   context      = [<|bos|> when asked] + encode("Question: " + question + "\nAnswer:")
 *   continuation = encode(" " + choice)
 * The two are encoded separately and concatenated (the pre-tokenizer splits
 * before a space anyway, so this is what encoding the joined text gives for
 * byte-level BPE except in rare merges across the boundary).
 * Score of a choice: ll = sum_j log p(cont[j] | context, cont[<j]); the
 * length-normalised score is ll / len(cont) (mean log-probability per token).
 * Accuracy is reported for both (argmax of each, ties to the lower index). */
#define DS4_MC_MAX_CHOICES 26

typedef struct ds4_mc_item {
    char  *question;
    char **choices;        /* [n_choices] */
    int    n_choices;
    int    answer;         /* 0-based index of the right choice */
    char  *subject;        /* NULL when the line has none */
} ds4_mc_item;

/* Parse a JSON Lines file; blank lines are skipped. Errors name the file,
 * the line and the field. */
int  ds4_mc_load(const char *path, ds4_mc_item **items, int *n);
void ds4_mc_free(ds4_mc_item *items, int n);
/* The context text of an item (malloc'd): "Question: <q>\nAnswer:". */
char *ds4_mc_context(const ds4_mc_item *it);

/* Scores the choices of one question: the context is prefilled once into
 * cache slot 0, the slot is copied to the other choices' slots, and all
 * continuations go through one ds4_forward call. */
typedef struct ds4_mc_scorer {
    const ds4_model *m;
    ds4_kv_cache *kv;          /* [max_choices slots, capacity tokens] */
    int    max_choices, capacity;
    int   *tok, *seq, *rows;   /* [cap_rows] batch scratch */
    float *logits;             /* [cap_rows, V] */
    int    cap_rows;
} ds4_mc_scorer;

ds4_mc_scorer *ds4_mc_scorer_create(const ds4_model *m, int max_choices, int capacity);
void ds4_mc_scorer_free(ds4_mc_scorer *s);
/* ll_sum[c] = sum over j of log p(choice[c][j] | ctx, choice[c][<j]) for the
 * n_choices continuations choice[c] of choice_len[c] >= 1 tokens; n_ctx >= 1
 * and n_ctx + choice_len[c] - 1 <= capacity. */
int ds4_mc_score_tokens(ds4_mc_scorer *s, const int *ctx, int n_ctx,
                        const int *const *choice, const int *choice_len,
                        int n_choices, double *ll_sum);

/* Per-item report for a callback (arrays have n_choices entries). */
typedef struct ds4_mc_item_result {
    const double *ll_sum, *ll_mean;
    const int    *n_tokens;       /* continuation tokens per choice */
    int pred_sum, pred_mean;      /* argmax of each score */
    int truncated;                /* the context was cut from the left to fit */
} ds4_mc_item_result;
typedef void (*ds4_mc_item_fn)(int index, const ds4_mc_item *it,
                               const ds4_mc_item_result *r, void *user);

typedef struct ds4_mc_result {
    int    n_items;
    int    correct_sum, correct_mean;
    double acc, acc_norm;         /* by ll_sum, by ll_mean */
    int    truncated;             /* items whose context was cut */
    long   tokens;                /* tokens fed to the model */
    double seconds;
} ds4_mc_result;

/* Score every item. A context too long for max_position_embeddings is cut
 * from the left (after <|bos|>) and counted; a choice that alone does not fit
 * is an error. fn (may be NULL) sees every item. */
int ds4_mc_eval(const ds4_model *m, const ds4_tokenizer *tok, const ds4_mc_item *items,
                int n, int add_bos, ds4_mc_item_fn fn, void *user, ds4_mc_result *r);

/* ---- sandbox (sandbox.c) ---------------------------------------------------
 * Runs a Python program in a child process:
 *   - a fresh temporary working directory (removed afterwards);
 *   - python3 -I (isolated mode: no user site, no PYTHON* variables), a
 *     minimal environment, stdin from /dev/null, stdout+stderr captured;
 *   - setrlimit: RLIMIT_CPU (then SIGXCPU), RLIMIT_AS (memory), RLIMIT_NPROC
 *     (fork bombs), RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE = 0;
 *   - when run as root: the child drops to user nobody (root ignores
 *     RLIMIT_NPROC), and gets new network and PID namespaces (unshare): no
 *     network interface but a downed loopback, and every process it starts
 *     dies with it. Whether each step happened is in the result; nothing is
 *     claimed that did not happen;
 *   - a wall-clock timeout in the parent kills the child's process group;
 *     leftover processes of the group are killed when the program ends. */
enum {
    DS4_SANDBOX_PASS = 0,      /* exit status 0 */
    DS4_SANDBOX_FAIL,          /* nonzero exit or killed by a signal (not a limit) */
    DS4_SANDBOX_TIMEOUT,       /* wall clock or CPU limit */
    DS4_SANDBOX_ERROR,         /* could not run the program at all */
};
const char *ds4_sandbox_status_name(int status);   /* "pass", "fail", ... */

typedef struct ds4_sandbox_limits {
    const char *python;        /* interpreter path (NULL: ds4_sandbox_find_python) */
    double cpu_s;              /* RLIMIT_CPU seconds, rounded up (default 5) */
    double wall_s;             /* wall-clock timeout (default 10) */
    size_t mem_bytes;          /* RLIMIT_AS (default 1 GiB) */
    int    nproc;              /* processes the program may add (default 32) */
    size_t fsize_bytes;        /* RLIMIT_FSIZE (default 16 MiB) */
    int    nofile;             /* RLIMIT_NOFILE (default 64) */
    int    isolate_net;        /* 1 (default): try a new network namespace */
    int    drop_uid;           /* 1 (default): as root, run as nobody */
    size_t max_output;         /* bytes of output kept (default 64 KiB) */
} ds4_sandbox_limits;

void ds4_sandbox_limits_default(ds4_sandbox_limits *l);

typedef struct ds4_sandbox_result {
    int    status;             /* DS4_SANDBOX_* */
    int    exit_code;          /* when it exited, else -1 */
    int    signal;             /* when a signal ended it, else 0 */
    int    wall_timeout, cpu_timeout;
    int    net_isolated;       /* 1: the program ran in a new network namespace */
    int    pid_isolated;       /* 1: ... and in a new PID namespace */
    int    uid;                /* uid the program ran as */
    int    pgid;               /* process group it ran in (gone when this returns) */
    double wall_s, cpu_s;
    char  *output;             /* NUL-terminated stdout+stderr (first max_output bytes) */
    size_t output_len;
    int    output_truncated;
    char   note[512];          /* why isolation was not available, exec errors */
} ds4_sandbox_result;

/* Returns 0 when the program ran (whatever its status), -1 when the sandbox
 * itself failed (temporary directory, fork: ds4_error says why; status is
 * then DS4_SANDBOX_ERROR). */
int  ds4_sandbox_run_python(const ds4_sandbox_limits *l, const char *program, size_t len,
                            ds4_sandbox_result *r);
void ds4_sandbox_result_free(ds4_sandbox_result *r);
/* The first python3 on PATH that runs inside the sandbox under these limits
 * (a pyenv shim under /root, say, cannot run as nobody): its path into
 * out[cap]. -1 with ds4_error when none does. */
int  ds4_sandbox_find_python(const ds4_sandbox_limits *l, char *out, size_t cap);

/* ---- code problems (eval_code.c) -------------------------------------------
 * Data: JSON Lines in the HumanEval layout:
 *   {"task_id", "prompt", "canonical_solution", "test", "entry_point"}
 * Program run for a completion:
 *   prompt + completion + "\n" + test + "\ncheck(" + entry_point + ")\n"
 * pass@k per problem is the unbiased estimator of Chen et al. 2021 with n
 * samples of which c pass: 1 - C(n-c, k) / C(n, k); the overall figure is the
 * mean over problems. */
typedef struct ds4_code_problem {
    char *task_id, *prompt, *canonical_solution, *test, *entry_point;
} ds4_code_problem;

int  ds4_code_load(const char *path, ds4_code_problem **p, int *n);
void ds4_code_free(ds4_code_problem *p, int n);
char *ds4_code_program(const ds4_code_problem *p, const char *completion);   /* malloc'd */
/* 1 - C(n-c, k)/C(n, k), as a product (no big binomials); 1 when n - c < k.
 * NaN when k < 1, k > n, c < 0 or c > n. */
double ds4_pass_at_k(int n, int c, int k);

/* The stop strings that end a completion at the next top-level statement. */
extern const char *const ds4_code_stops[];
extern const int ds4_code_n_stops;

/* n completions of one prompt, run as one batch of sequences on the engine
 * (n <= e->n_slots). gp: sampling (temperature 0 = greedy), max_tokens,
 * add_bos; its stop strings are replaced by ds4_code_stops. Sample i uses
 * seed gp->sampler.seed + i. A prompt too long for the context is cut from
 * the left (*truncated = 1). completions[i] is malloc'd. */
int ds4_code_generate(ds4_engine *e, const char *prompt, int n, const ds4_gen_params *gp,
                      char **completions, int *truncated);

#endif
