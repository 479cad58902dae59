/* test_daemon_util.h - helpers of the gemmad end-to-end tests: a private temp dir for
 * ipc:// endpoints, gemmad as a child process, running tools and capturing stdout. */
#ifndef GM_TEST_DAEMON_UTIL_H
#define GM_TEST_DAEMON_UTIL_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client/gemma_client.h"

static char td_dir[256];
static pid_t td_pids[64]; /* gemmad children not yet waited for (killed by td_kill_leftovers) */

static __attribute__((unused)) double td_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* A fresh private directory for sockets and logs; false on failure. */
static __attribute__((unused)) bool td_make_dir(void)
{
    snprintf(td_dir, sizeof td_dir, "/tmp/gd-test-XXXXXX");
    return mkdtemp(td_dir) != NULL;
}

static __attribute__((unused)) void td_remove_dir(void)
{
    if (!td_dir[0])
        return;
    DIR *d = opendir(td_dir);
    if (d) {
        struct dirent *e;
        char p[600];
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                snprintf(p, sizeof p, "%s/%s", td_dir, e->d_name);
                unlink(p);
            }
        closedir(d);
    }
    rmdir(td_dir);
}

static __attribute__((unused)) void td_endpoint(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "ipc://%s/%s", td_dir, name);
}

static __attribute__((unused)) bool td_have_tiny(void)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/config.json", TINY_MODEL_DIR);
    return access(p, R_OK) == 0;
}

/* Start gemmad with args (NULL-terminated, without argv[0]); its output goes to
 * td_dir/<log>. Returns the pid or -1. */
static __attribute__((unused)) pid_t td_spawn_gemmad(const char *const *args, const char *log)
{
    char logp[600];
    snprintf(logp, sizeof logp, "%s/%s", td_dir, log);
    const char *argv[64];
    int n = 0;
    argv[n++] = GEMMAD_BIN;
    for (; args[n - 1] && n < 63; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = open(logp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(GEMMAD_BIN, (char *const *)argv);
        _exit(127);
    }
    for (int i = 0; i < 64; i++)
        if (!td_pids[i]) {
            td_pids[i] = pid;
            break;
        }
    return pid;
}

/* Print a gemmad log (on failures, to see why). */
static __attribute__((unused)) void td_dump_log(const char *log)
{
    char p[600], line[1024];
    snprintf(p, sizeof p, "%s/%s", td_dir, log);
    FILE *f = fopen(p, "r");
    if (!f)
        return;
    fprintf(stderr, "---- %s ----\n", log);
    while (fgets(line, sizeof line, f))
        fputs(line, stderr);
    fclose(f);
}

static void td_forget(pid_t pid)
{
    for (int i = 0; i < 64; i++)
        if (td_pids[i] == pid)
            td_pids[i] = 0;
}

/* Wait until gemmad at endpoint answers a health probe as serving; false if
 * it exited or timeout_ms passed. */
static __attribute__((unused)) bool td_wait_ready(const char *endpoint, pid_t pid, int timeout_ms)
{
    double end = td_now_ms() + timeout_ms;
    while (td_now_ms() < end) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            td_forget(pid);
            return false;
        }
        gmc_client *c = NULL;
        if (gmc_connect(endpoint, 300, &c) == GMC_OK) {
            gmc_health h;
            bool ok = gmc_health_check(c, 1000, &h) == GMC_OK && h.serving;
            gmc_close(&c);
            if (ok)
                return true;
        }
        usleep(50000);
    }
    return false;
}

/* Wait for the child to exit (up to timeout_ms, then SIGKILL); its exit status,
 * or 128 + signal when killed, or -1. */
/* After a failed test: SIGKILL every gemmad still running (its workers die with it). */
static __attribute__((unused)) void td_kill_leftovers(void)
{
    for (int i = 0; i < 64; i++)
        if (td_pids[i] > 0) {
            kill(td_pids[i], SIGKILL);
            waitpid(td_pids[i], NULL, 0);
            td_pids[i] = 0;
        }
}

static __attribute__((unused)) int td_wait_exit(pid_t pid, int timeout_ms)
{
    double end = td_now_ms() + timeout_ms;
    int st;
    for (;;) {
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid)
            td_forget(pid);
        if (w == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : -1;
        if (w < 0)
            return -1;
        if (td_now_ms() > end) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            td_forget(pid);
            return -1;
        }
        usleep(10000);
    }
}

/* SIGTERM and wait. */
static __attribute__((unused)) int td_stop(pid_t pid)
{
    kill(pid, SIGTERM);
    return td_wait_exit(pid, 60000);
}

/* Run argv (NULL-terminated), return its stdout (malloc'd, NUL-terminated);
 * *status receives the exit status. stderr is discarded. */
static __attribute__((unused)) char *td_run_capture(const char *const *argv, int *status, size_t *len_out)
{
    int pfd[2];
    if (pipe(pfd) != 0)
        return NULL;
    pid_t pid = fork();
    if (pid < 0)
        return NULL;
    if (pid == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]);
        close(pfd[1]);
        int dn = open("/dev/null", O_WRONLY);
        if (dn >= 0)
            dup2(dn, 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(pfd[1]);
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (len + 1024 > cap)
            buf = realloc(buf, cap *= 2);
        ssize_t r = read(pfd[0], buf + len, cap - len - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(pfd[0]);
    buf[len] = 0;
    int st;
    waitpid(pid, &st, 0);
    if (status)
        *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    if (len_out)
        *len_out = len;
    return buf;
}

/* Submit p n times (at most 64; ids[n] get the request ids) and wait until each has streamed a token;
 * false when one finishes first or nothing comes for 10 s. */
static __attribute__((unused)) bool td_submit_started(gmc_client *c, const gmc_params *p, int n, uint64_t *ids)
{
    if (n > 64)
        return false;
    for (int i = 0; i < n; i++)
        if (gmc_submit(c, p, NULL, &ids[i]) != GMC_OK)
            return false;
    bool got[64] = {0};
    for (int seen = 0; seen < n;) {
        gmc_event ev[256];
        int k = gmc_poll(c, ev, 256, 10000);
        if (k <= 0)
            return false;
        for (int i = 0; i < k; i++)
            for (int j = 0; j < n; j++)
                if (ev[i].request_id == ids[j] && !got[j]) {
                    if (ev[i].finished)
                        return false;
                    got[j] = true;
                    seen++;
                }
    }
    return true;
}

/* pid of the gemma-worker child of gemmad with --rank rank, or -1. */
static __attribute__((unused)) pid_t td_worker_pid(pid_t gemmad, int rank)
{
    char want[32];
    snprintf(want, sizeof want, "%d", rank);
    DIR *d = opendir("/proc");
    if (!d)
        return -1;
    struct dirent *e;
    pid_t found = -1;
    while ((e = readdir(d)) && found < 0) {
        pid_t p = (pid_t)atoi(e->d_name);
        if (p <= 0)
            continue;
        char path[64], buf[4096];
        snprintf(path, sizeof path, "/proc/%d/stat", p);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        int ppid = -1;
        char comm[256];
        char state;
        int ok = fscanf(f, "%*d (%255[^)]) %c %d", comm, &state, &ppid);
        fclose(f);
        if (ok != 3 || ppid != gemmad)
            continue;
        snprintf(path, sizeof path, "/proc/%d/cmdline", p);
        f = fopen(path, "r");
        if (!f)
            continue;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        /* args are NUL-separated: look for "--rank" followed by want */
        bool is_worker = strstr(buf, "gemma-worker") != NULL;
        for (size_t i = 0; i < n && is_worker; i += strlen(buf + i) + 1)
            if (!strcmp(buf + i, "--rank") && i + 7 < n && !strcmp(buf + i + 7, want))
                found = p;
    }
    closedir(d);
    return found;
}

#endif
