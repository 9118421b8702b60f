/* mp4.c — MP4 (H.264) output through an ffmpeg subprocess fed raw RGB24 on
 * its stdin; only when ffmpeg is on PATH, otherwise a clear error. The frames
 * go through a socket pair so a dying ffmpeg cannot kill us with SIGPIPE. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>
#include "util/util.h"
#include "world/world.h"

int ds4_world_ffmpeg_available(void) {
    const char *path = getenv("PATH");
    if (!path) return 0;
    char buf[4200];
    while (*path) {
        const char *end = strchr(path, ':');
        size_t n = end ? (size_t)(end - path) : strlen(path);
        if (n > 0 && n < 4000) {
            snprintf(buf, sizeof buf, "%.*s/ffmpeg", (int)n, path);
            if (access(buf, X_OK) == 0) return 1;
        }
        if (!end) break;
        path = end + 1;
    }
    return 0;
}

int ds4_world_write_mp4(const char *path, const uint8_t *rgb, int n_frames,
                        int width, int height, int fps) {
    if (!ds4_world_ffmpeg_available()) {
        ds4_set_error("%s: MP4 output needs ffmpeg, which is not on PATH (write a GIF or PNG frames instead)", path);
        return -1;
    }
    if (n_frames < 1 || width < 1 || height < 1 || fps < 1) {
        ds4_set_error("%s: bad MP4 request (%d frames of %dx%d at %d fps)", path, n_frames, width, height, fps);
        return -1;
    }
    char tmp[4200], size[32], rate[16];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    snprintf(size, sizeof size, "%dx%d", width, height);
    snprintf(rate, sizeof rate, "%d", fps);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        ds4_set_error("%s: socketpair: %s", path, strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        close(sv[0]); close(sv[1]);
        ds4_set_error("%s: fork: %s", path, strerror(errno));
        return -1;
    }
    if (pid == 0) {
        dup2(sv[1], 0);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) dup2(devnull, 1);
        close(sv[0]); close(sv[1]);
        char *argv[] = {"ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
                        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", size, "-r", rate, "-i", "-",
                        "-an", "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2:flags=neighbor",
                        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-f", "mp4", tmp, NULL};
        execvp("ffmpeg", argv);
        _exit(127);
    }
    close(sv[1]);
    size_t total = (size_t)n_frames * width * height * 3, off = 0;
    int werr = 0;
    while (off < total) {
        ssize_t k = send(sv[0], rgb + off, total - off, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) { werr = errno; break; }
        off += (size_t)k;
    }
    close(sv[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        unlink(tmp);
        ds4_set_error("%s: ffmpeg failed (%s %d)", path, WIFEXITED(status) ? "exit status" : "signal",
                      WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
        return -1;
    }
    if (off < total) {
        unlink(tmp);
        ds4_set_error("%s: writing frames to ffmpeg failed: %s", path, strerror(werr));
        return -1;
    }
    if (rename(tmp, path) != 0) {
        unlink(tmp);
        ds4_set_error("%s: rename failed: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}
