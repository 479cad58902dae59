/* gemmad.c - the serving daemon's main: settings, signals, the server loop. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "daemon/config.h"
#include "daemon/server.h"

static int g_sig_pipe[2] = {-1, -1};

/* Async-signal-safe: one byte per signal into the self-pipe the loop polls. */
static void on_signal(int sig)
{
    int e = errno;
    unsigned char b = (unsigned char)sig;
    if (write(g_sig_pipe[1], &b, 1) < 0) {
        /* pipe full: the loop has plenty to read already */
    }
    errno = e;
}

static int install_signals(void)
{
    if (pipe2(g_sig_pipe, O_NONBLOCK | O_CLOEXEC) != 0)
        return -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGTERM, &sa, NULL) || sigaction(SIGINT, &sa, NULL) || sigaction(SIGCHLD, &sa, NULL))
        return -1;
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

int main(int argc, char **argv)
{
    gd_config cfg;
    gd_action action;
    gm_status st = gd_config_from_args(argc, argv, &cfg, &action);
    if (action == GD_ACTION_HELP) {
        gd_config_usage(stdout);
        gd_config_free(&cfg);
        return 0;
    }
    if (st != GM_OK) {
        fprintf(stderr, "gemmad: %s\n", gm_last_error());
        gd_config_free(&cfg);
        return 2;
    }
    if (action == GD_ACTION_CHECK) {
        st = gd_config_check_model(&cfg, stderr);
        if (st != GM_OK) {
            fprintf(stderr, "gemmad: %s\n", gm_last_error());
            gd_config_free(&cfg);
            return 1;
        }
        printf("# gemmad settings%s%s: valid\n", cfg.config_path ? " from " : "",
               cfg.config_path ? cfg.config_path : "");
        gd_config_print(&cfg, stdout);
        gd_config_free(&cfg);
        return 0;
    }
    gm_log_init("gemmad", (gm_log_level)cfg.log_level);
    if (install_signals() != 0) {
        fprintf(stderr, "gemmad: cannot install signal handlers: %s\n", strerror(errno));
        gd_config_free(&cfg);
        return 1;
    }
    gd_server *s = NULL;
    st = gd_server_new(&cfg, &s);
    if (st != GM_OK) {
        GM_ERROR("cannot start: %s: %s", gm_status_str(st), gm_last_error());
        gd_config_free(&cfg);
        return 1;
    }
    st = gd_server_run(s, g_sig_pipe[0]);
    if (st != GM_OK)
        GM_ERROR("%s: %s", gm_status_str(st), gm_last_error());
    gd_server_destroy(&s);
    gd_config_free(&cfg);
    return st == GM_OK ? 0 : 1;
}
