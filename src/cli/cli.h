/* cli.h — the ds4 command line: one function per subcommand (one file each,
 * src/cli/cmd_*.c) and small argument helpers. Commands print and return an
 * exit status; they call the library API and never do math themselves. */
#ifndef DS4_CLI_H
#define DS4_CLI_H

int ds4_cli_main(int argc, char **argv);

/* Each takes argv starting at the subcommand name (argv[0] = "train"). */
int cmd_train(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_tokenizer(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_world(int argc, char **argv);
int cmd_vtok(int argc, char **argv);
int cmd_video(int argc, char **argv);
int cmd_simulate(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_export_gguf(int argc, char **argv);
int cmd_finetune(int argc, char **argv);
int cmd_lora(int argc, char **argv);
int cmd_moe_report(int argc, char **argv);

/* Argument helpers. cli_is_help: argv[i] is -h/--help.
 * cli_value: returns argv[i+1] for option argv[i] and advances *i, or prints
 * "ds4 CMD: OPT needs a value" and returns NULL. */
int         cli_is_help(const char *a);
const char *cli_value(int argc, char **argv, int *i);
int         cli_int(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out);
int         cli_float(const char *cmd, const char *opt, const char *s, double *out);
/* Print "ds4 CMD: unknown option OPT (see ds4 CMD --help)" and return 2. */
int         cli_unknown(const char *cmd, const char *opt);
/* Print "ds4 CMD: <ds4_error()>" and return 1. */
int         cli_fail(const char *cmd);
/* Options of ds4 video and ds4 simulate (wm_opts.c): --out --scale --png --mp4 --json and
 * --temp --top-k --top-p --seed --window --keep. 1: `a` was one (taken), 0: it was not,
 * -1: its value is bad (printed). */
struct ds4_wm_gen_params;
struct ds4_wm_output;
int         cli_wm_option(const char *cmd, const char *a, const char *v, struct ds4_wm_gen_params *gp,
                          struct ds4_wm_output *oo);

#endif
