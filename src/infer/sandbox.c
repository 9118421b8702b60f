/* sandbox.c — run an untrusted Python program (a model's code completion plus
 * its tests) in a child process under CPU, memory, process, file and
 * wall-clock limits, without network when the kernel lets us, and report
 * what happened and which isolation was really in place. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include "infer/evalh.h"

const char *ds4_sandbox_status_name(int status) {
    switch (status) {
    case DS4_SANDBOX_PASS:    return "pass";
    case DS4_SANDBOX_FAIL:    return "fail";
    case DS4_SANDBOX_TIMEOUT: return "timeout";
    case DS4_SANDBOX_ERROR:   return "error";
    }
    return "unknown";
}

void ds4_sandbox_limits_default(ds4_sandbox_limits *l) {
    memset(l, 0, sizeof *l);
    l->cpu_s = 5;
    l->wall_s = 10;
    l->mem_bytes = (size_t)1 << 30;
    l->nproc = 32;
    l->fsize_bytes = (size_t)16 << 20;
    l->nofile = 64;
    l->isolate_net = 1;
    l->drop_uid = 1;
    l->max_output = (size_t)64 << 10;
}

void ds4_sandbox_result_free(ds4_sandbox_result *r) {
    free(r->output);
    r->output = NULL;
    r->output_len = 0;
}

/* Tasks (threads count for RLIMIT_NPROC) owned by uid, from /proc/PID/task. */
static int count_tasks_of(uid_t uid) {
    DIR *d = opendir("/proc");
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        char path[300];
        struct stat st;
        snprintf(path, sizeof path, "/proc/%s", e->d_name);
        if (stat(path, &st) || st.st_uid != uid) continue;
        snprintf(path, sizeof path, "/proc/%s/task", e->d_name);
        DIR *t = opendir(path);
        if (!t) { n++; continue; }
        struct dirent *te;
        while ((te = readdir(t))) if (te->d_name[0] != '.') n++;
        closedir(t);
    }
    closedir(d);
    return n;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st; (void)flag; (void)ftw;
    remove(path);
    return 0;
}

/* Messages on the info pipe, child -> parent: {tag, value}. */
enum { MSG_FLAGS = 'F', MSG_PID_ERRNO = 'P', MSG_EXEC_ERRNO = 'E', MSG_WAIT = 'W' };
enum { FLAG_NET = 1, FLAG_PID = 2, FLAG_NET_TRIED = 4 };
typedef struct { int tag, value, err; } msg_t;

/* Everything the child needs, prepared before fork (no allocation after). */
typedef struct child_ctx {
    const char *python, *dir;
    char *const *argv, *const *envp;
    int out_w, info_w, devnull;
    int drop, uid, gid;
    struct rlimit cpu, as, nproc, fsize, nofile, core;
} child_ctx;

static void send_msg(int fd, int tag, int value, int err) {
    msg_t m = {tag, value, err};
    ssize_t w = write(fd, &m, sizeof m);
    (void)w;
}

/* The program itself (process B, or A when no PID namespace): only
 * async-signal-safe calls from here to execve. */
static void child_exec(const child_ctx *c) {
    int info = 3;
    dup2(c->devnull, 0);                   /* all pipes are >= 3: nothing is clobbered */
    dup2(c->out_w, 1);
    dup2(c->out_w, 2);
    if (c->info_w != info) dup2(c->info_w, info);
    fcntl(info, F_SETFD, FD_CLOEXEC);      /* dup2 cleared close-on-exec: set it again */
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 4u, ~0u, 0u))
#endif
        for (int fd = 4; fd < 1024; fd++) close(fd);
    int step = 0;
    if (chdir(c->dir)) goto fail;
    step = 1;
    if (setrlimit(RLIMIT_CPU, &c->cpu) || setrlimit(RLIMIT_AS, &c->as) ||
        setrlimit(RLIMIT_FSIZE, &c->fsize) || setrlimit(RLIMIT_NOFILE, &c->nofile) ||
        setrlimit(RLIMIT_CORE, &c->core) || setrlimit(RLIMIT_NPROC, &c->nproc)) goto fail;
    step = 2;
    if (c->drop && (setgroups(0, NULL) || setgid((gid_t)c->gid) || setuid((uid_t)c->uid))) goto fail;
    step = 3;
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    execve(c->python, c->argv, c->envp);
    step = 4;
fail:
    send_msg(info, MSG_EXEC_ERRNO, step, errno);
    _exit(127);
}

/* Process A: its own process group, namespaces, then the program. */
static void child_main(const child_ctx *c, int isolate_net) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    int flags = 0, net_err = 0, pid_err = 0;
    if (isolate_net) {
        flags |= FLAG_NET_TRIED;
        if (unshare(CLONE_NEWNET) == 0) flags |= FLAG_NET;
        else net_err = errno;
    }
    if (unshare(CLONE_NEWPID) == 0) flags |= FLAG_PID;
    else pid_err = errno;
    send_msg(c->info_w, MSG_FLAGS, flags, net_err);
    send_msg(c->info_w, MSG_PID_ERRNO, 0, pid_err);
    if (!(flags & FLAG_PID)) child_exec(c);            /* no namespace: A is the program */
    pid_t b = fork();                                   /* pid 1 of the new namespace */
    if (b < 0) { send_msg(c->info_w, MSG_EXEC_ERRNO, 5, errno); _exit(127); }
    if (b == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        child_exec(c);
    }
    close(c->out_w);
    int st = 0;
    while (waitpid(b, &st, 0) < 0 && errno == EINTR) {}
    send_msg(c->info_w, MSG_WAIT, st, 0);
    _exit(0);
}

static void note_add(ds4_sandbox_result *r, const char *fmt, const char *a, int err) {
    size_t used = strlen(r->note);
    if (used + 2 >= sizeof r->note) return;
    int w = snprintf(r->note + used, sizeof r->note - used, "%s%.100s%.200s%s%.100s", used ? "; " : "", fmt,
                     a ? a : "", err ? ": " : "", err ? strerror(err) : "");
    (void)w;                                  /* a long note is cut: fine */
}

int ds4_sandbox_run_python(const ds4_sandbox_limits *lim, const char *program, size_t len,
                           ds4_sandbox_result *r) {
    memset(r, 0, sizeof *r);
    r->status = DS4_SANDBOX_ERROR;
    r->exit_code = -1;
    r->uid = (int)geteuid();
    ds4_sandbox_limits l = *lim;
    char python[PATH_MAX];
    if (!l.python) {
        if (ds4_sandbox_find_python(&l, python, sizeof python)) return -1;
        l.python = python;
    }
    size_t max_out = l.max_output ? l.max_output : ((size_t)64 << 10);
    r->output = ds4_malloc(max_out + 1);
    if (!r->output) return -1;
    r->output[0] = 0;

    /* the working directory and the program file */
    const char *base = getenv("TMPDIR");
    char dir[PATH_MAX], file[PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%s/ds4-sandbox-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(dir)) {
        ds4_set_error("sandbox: temporary directory %s: %s", dir, strerror(errno));
        return -1;
    }
    int drop = l.drop_uid && geteuid() == 0;
    int uid = (int)geteuid(), gid = (int)getegid();
    if (drop) {
        struct passwd *pw = getpwnam("nobody");
        uid = pw ? (int)pw->pw_uid : 65534;
        gid = pw ? (int)pw->pw_gid : 65534;
    }
    snprintf(file, sizeof file, "%s/prog.py", dir);
    int rc = -1, out_p[2] = {-1, -1}, info_p[2] = {-1, -1}, devnull = -1;
    pid_t a = -1;
    FILE *f = fopen(file, "wb");
    if (!f || fwrite(program, 1, len, f) != len || fclose(f)) {
        if (f) fclose(f);
        ds4_set_error("sandbox: writing %s: %s", file, strerror(errno));
        goto cleanup;
    }
    if (drop && (chown(dir, (uid_t)uid, (gid_t)gid) || chmod(file, 0644))) {
        ds4_set_error("sandbox: giving %s to uid %d: %s", dir, uid, strerror(errno));
        goto cleanup;
    }
    r->uid = uid;

    /* limits: CPU soft at cpu_s (SIGXCPU), hard one second later (SIGKILL) */
    child_ctx c;
    memset(&c, 0, sizeof c);
    rlim_t cpu = (rlim_t)ceil(l.cpu_s > 0 ? l.cpu_s : 1);
    c.cpu = (struct rlimit){cpu, cpu + 1};
    c.as = (struct rlimit){l.mem_bytes, l.mem_bytes};
    c.fsize = (struct rlimit){l.fsize_bytes, l.fsize_bytes};
    c.nofile = (struct rlimit){(rlim_t)l.nofile, (rlim_t)l.nofile};
    c.core = (struct rlimit){0, 0};
    /* RLIMIT_NPROC counts every task of the user, so allow what it already runs */
    rlim_t np = (rlim_t)(count_tasks_of((uid_t)uid) + (l.nproc > 0 ? l.nproc : 1));
    c.nproc = (struct rlimit){np, np};
    char home[PATH_MAX + 8], tmp[PATH_MAX + 8];
    snprintf(home, sizeof home, "HOME=%s", dir);
    snprintf(tmp, sizeof tmp, "TMPDIR=%s", dir);
    char *envp[] = {"PATH=/usr/local/bin:/usr/bin:/bin", home, tmp, "LANG=C.UTF-8", NULL};
    char *argv[] = {"python3", "-I", "prog.py", NULL};
    c.python = l.python; c.dir = dir; c.argv = argv; c.envp = envp;
    c.drop = drop; c.uid = uid; c.gid = gid;

    if (pipe2(out_p, O_CLOEXEC) || pipe2(info_p, O_CLOEXEC) ||
        (devnull = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) {
        ds4_set_error("sandbox: pipes: %s", strerror(errno));
        goto cleanup;
    }
    c.out_w = out_p[1]; c.info_w = info_p[1]; c.devnull = devnull;

    double t0 = ds4_time_s();
    a = fork();
    if (a < 0) {
        ds4_set_error("sandbox: fork: %s", strerror(errno));
        goto cleanup;
    }
    if (a == 0) child_main(&c, l.isolate_net);
    setpgid(a, a);                           /* also in the parent: no race with kill(-a) */
    r->pgid = (int)a;
    close(out_p[1]); out_p[1] = -1;
    close(info_p[1]); info_p[1] = -1;

    /* collect output and messages until the program ends or time runs out */
    int flags = -1, flags_err = 0, pid_err = 0, wait_st = -1, have_wait = 0, exec_step = -1, exec_err = 0;
    int a_done = 0, killed = 0;
    double wall = l.wall_s > 0 ? l.wall_s : 10, t_end = 0;
    char buf[4096];
    for (;;) {
        struct pollfd pf[2];
        int np_ = 0;
        if (out_p[0] >= 0) pf[np_++] = (struct pollfd){out_p[0], POLLIN, 0};
        if (info_p[0] >= 0) pf[np_++] = (struct pollfd){info_p[0], POLLIN, 0};
        if (np_ && poll(pf, (nfds_t)np_, 20) < 0 && errno != EINTR) break;
        if (!np_) usleep(20000);
        for (int i = 0; i < np_; i++) {
            if (!(pf[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            ssize_t got = read(pf[i].fd, buf, sizeof buf);
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) {
                close(pf[i].fd);
                if (pf[i].fd == out_p[0]) out_p[0] = -1; else info_p[0] = -1;
                continue;
            }
            if (pf[i].fd == out_p[0]) {
                size_t take = DS4_MIN((size_t)got, max_out - r->output_len);
                memcpy(r->output + r->output_len, buf, take);
                r->output_len += take;
                if (take < (size_t)got) r->output_truncated = 1;
            } else {
                for (size_t o = 0; o + sizeof(msg_t) <= (size_t)got; o += sizeof(msg_t)) {
                    msg_t m;
                    memcpy(&m, buf + o, sizeof m);
                    if (m.tag == MSG_FLAGS) { flags = m.value; flags_err = m.err; }
                    else if (m.tag == MSG_PID_ERRNO) pid_err = m.err;
                    else if (m.tag == MSG_EXEC_ERRNO) { exec_step = m.value; exec_err = m.err; }
                    else if (m.tag == MSG_WAIT) { wait_st = m.value; have_wait = 1; }
                }
            }
        }
        double now = ds4_time_s();
        if (!a_done) {
            siginfo_t si;
            memset(&si, 0, sizeof si);
            if (waitid(P_PID, (id_t)a, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == a) {
                a_done = 1;
                kill(-a, SIGKILL);           /* stragglers; A is a zombie so the group still exists */
                t_end = now;
            }
        }
        if (a_done && out_p[0] < 0 && info_p[0] < 0) break;
        if (a_done && now - t_end > 2) break;  /* something odd holds a pipe */
        if (!killed && now - t0 > wall) {
            kill(-a, SIGKILL);
            killed = 1;
            r->wall_timeout = 1;
            t_end = now;
        }
        if (killed && now - t_end > 2) break;
    }
    kill(-a, SIGKILL);
    int st = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    while (wait4(a, &st, 0, &ru) < 0 && errno == EINTR) {}
    a = -1;
    r->wall_s = ds4_time_s() - t0;
    r->cpu_s = ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
               1e-6 * (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
    r->output[r->output_len] = 0;

    if (flags >= 0) {
        r->net_isolated = (flags & FLAG_NET) != 0;
        r->pid_isolated = (flags & FLAG_PID) != 0;
        if ((flags & FLAG_NET_TRIED) && !(flags & FLAG_NET))
            note_add(r, "network NOT isolated: unshare(CLONE_NEWNET)", NULL, flags_err);
        if (!(flags & FLAG_PID))
            note_add(r, "no PID namespace: unshare(CLONE_NEWPID)", NULL, pid_err);
    }
    if (r->pid_isolated) {
        if (have_wait) st = wait_st;                   /* the program's status, from A */
        else if (!r->wall_timeout) { note_add(r, "lost the program's status", NULL, 0); st = -1; }
    }
    if (exec_step >= 0) {
        static const char *what[] = {"chdir to the sandbox directory", "setrlimit",
                                     "dropping to user nobody", "execve ", "execve ", "fork"};
        note_add(r, what[DS4_MIN(exec_step, 5)], exec_step >= 3 && exec_step <= 4 ? l.python : NULL,
                 exec_err);
        r->status = DS4_SANDBOX_ERROR;
    } else if (r->wall_timeout) {
        r->status = DS4_SANDBOX_TIMEOUT;
    } else if (st != -1 && WIFEXITED(st)) {
        r->exit_code = WEXITSTATUS(st);
        r->status = r->exit_code == 0 ? DS4_SANDBOX_PASS : DS4_SANDBOX_FAIL;
    } else if (st != -1 && WIFSIGNALED(st)) {
        r->signal = WTERMSIG(st);
        /* SIGXCPU at the soft limit, SIGKILL at the hard one */
        r->cpu_timeout = r->signal == SIGXCPU || (r->signal == SIGKILL && r->cpu_s >= (double)cpu - 0.05);
        r->status = r->cpu_timeout ? DS4_SANDBOX_TIMEOUT : DS4_SANDBOX_FAIL;
    } else {
        r->status = DS4_SANDBOX_ERROR;
    }
    rc = 0;
cleanup:
    if (a > 0) { kill(-a, SIGKILL); waitpid(a, NULL, 0); }
    if (out_p[0] >= 0) close(out_p[0]);
    if (out_p[1] >= 0) close(out_p[1]);
    if (info_p[0] >= 0) close(info_p[0]);
    if (info_p[1] >= 0) close(info_p[1]);
    if (devnull >= 0) close(devnull);
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return rc;
}

int ds4_sandbox_find_python(const ds4_sandbox_limits *lim, char *out, size_t cap) {
    const char *path = getenv("PATH");
    if (!path || !*path) path = "/usr/local/bin:/usr/bin:/bin";
    char *copy = strdup(path);
    if (!copy) { ds4_set_error("sandbox: out of memory"); return -1; }
    char tried[2048] = "";
    char last_note[512] = "";
    int found = -1;
    char *save = NULL;
    for (char *d = strtok_r(copy, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        if (d[0] != '/') continue;
        char cand[PATH_MAX];
        snprintf(cand, sizeof cand, "%s/python3", d);
        if (access(cand, X_OK)) continue;
        size_t tl = strlen(tried);
        int w = snprintf(tried + tl, sizeof tried - tl, "%s%.300s", tl ? ", " : "", cand);
        (void)w;
        ds4_sandbox_limits l = *lim;
        l.python = cand;
        l.cpu_s = 5; l.wall_s = 10;
        if (l.mem_bytes < ((size_t)256 << 20)) l.mem_bytes = (size_t)256 << 20;
        ds4_sandbox_result r;
        static const char probe[] = "import sys\nprint(sys.version_info[0])\n";
        int ok = ds4_sandbox_run_python(&l, probe, sizeof probe - 1, &r) == 0 &&
                 r.status == DS4_SANDBOX_PASS && r.output_len >= 1 && r.output[0] == '3';
        if (!ok) snprintf(last_note, sizeof last_note, "%s", r.note[0] ? r.note : (r.output ? r.output : ""));
        ds4_sandbox_result_free(&r);
        if (ok) {
            if (strlen(cand) + 1 > cap) break;
            memcpy(out, cand, strlen(cand) + 1);
            found = 0;
            break;
        }
    }
    free(copy);
    if (found)
        ds4_set_error("sandbox: no python3 on PATH runs in the sandbox (tried: %s)%s%s",
                      tried[0] ? tried : "none", last_note[0] ? "; last: " : "", last_note);
    return found;
}
