/* router_main.c - gemma-router: flags/config, signals, run. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "common/curve.h"
#include "cluster/router.h"
#include "common/log.h"

static gc_router *g_router;

static void on_signal(int sig)
{
    (void)sig;
    gc_router_stop(g_router);
}

/* Write PREFIX.key / PREFIX.key_secret. */
static int keygen(const char *prefix, bool force)
{
    gc_keypair kp;
    if (gc_curve_generate(&kp) != GM_OK || gc_curve_write_keypair(&kp, prefix, force) != GM_OK) {
        fprintf(stderr, "gemma-router: %s\n", gm_last_error());
        return 1;
    }
    printf("wrote %s.key (public) and %s.key_secret (secret, mode 0600)\npublic key: %s\n", prefix, prefix,
           kp.public_z85);
    memset(&kp, 0, sizeof(kp));
    return 0;
}

int main(int argc, char **argv)
{
    gc_router_config cfg;
    gc_router_action act;
    const char *prefix;
    bool force;
    if (gc_router_config_from_args(argc, argv, &cfg, &act, &prefix, &force) != GM_OK) {
        fprintf(stderr, "gemma-router: %s\n", gm_last_error());
        gc_router_config_free(&cfg);
        return 2;
    }
    if (act == GC_ROUTER_HELP) {
        gc_router_usage(stdout);
        gc_router_config_free(&cfg);
        return 0;
    }
    if (act == GC_ROUTER_KEYGEN) {
        int rc = keygen(prefix, force);
        gc_router_config_free(&cfg);
        return rc;
    }
    gm_log_init("gemma-router", (gm_log_level)cfg.log_level);
    if (gc_router_new(&cfg, NULL, &g_router) != GM_OK) {
        fprintf(stderr, "gemma-router: %s\n", gm_last_error());
        gc_router_config_free(&cfg);
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    gm_status st = gc_router_run(g_router);
    if (st != GM_OK)
        fprintf(stderr, "gemma-router: %s\n", gm_last_error());
    gc_router_destroy(&g_router);
    gc_router_config_free(&cfg);
    return st == GM_OK ? 0 : 1;
}
