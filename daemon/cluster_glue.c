/* cluster_glue.c - gemmad's cluster settings, CurveZMQ on the client socket, registration. */
#include "daemon/cluster_glue.h"

#include <errno.h>
#include <libconfig.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/curve.h"
#include "cluster/register.h"
#include "common/log.h"
#include "daemon/config.h"

struct glue {
    const glue_config *cfg; /* borrowed (the daemon's settings outlive the server) */
    void *zctx;
    gc_keypair kp;          /* this gemmad's key pair when curve */
    gc_zap *zap;
    gc_register *reg;
};

/* ---- settings ---- */

static gm_status set_dup(char **dst, const char *v)
{
    char *d = strdup(v);
    if (!d)
        return gm_fail(GM_ERR_NOMEM, "setting");
    free(*dst);
    *dst = d;
    return GM_OK;
}

void glue_config_free(glue_config *g)
{
    free(g->router);
    free(g->advertise);
    free(g->replica_name);
    free(g->curve_secret_key);
    for (int32_t i = 0; i < g->n_curve_allow; i++)
        free(g->curve_allow[i]);
    free(g->curve_allow);
    free(g->curve_router_key);
    free(g->device_tmpl);
    memset(g, 0, sizeof(*g));
}

static gm_status allow_add(glue_config *g, const char *v)
{
    if (!*v)
        return gm_fail(GM_ERR_INVALID_ARG, "curve_allow: empty path");
    char **n = realloc(g->curve_allow, (size_t)(g->n_curve_allow + 1) * sizeof(*n));
    if (!n)
        return gm_fail(GM_ERR_NOMEM, "curve_allow");
    g->curve_allow = n;
    if (!(n[g->n_curve_allow] = strdup(v)))
        return gm_fail(GM_ERR_NOMEM, "curve_allow");
    g->n_curve_allow++;
    return GM_OK;
}

gm_status glue_config_set(glue_config *g, const char *key, const char *v)
{
    if (!strcmp(key, "device")) {
        if (!strchr(v, '{')) { /* a plain number: config.c parses it; a later number beats an earlier template */
            free(g->device_tmpl);
            g->device_tmpl = NULL;
            return GM_ERR_NOT_FOUND;
        }
        return set_dup(&g->device_tmpl, v);
    }
    if (!strcmp(key, "curve")) {
        if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "on"))
            g->curve = true;
        else if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "off"))
            g->curve = false;
        else
            return gm_fail(GM_ERR_INVALID_ARG, "curve: '%s' is not true or false", v);
        return GM_OK;
    }
    if (!strcmp(key, "curve_allow"))
        return allow_add(g, v);
    struct {
        const char *k;
        char **dst;
    } sk[] = {
        {"router", &g->router},
        {"advertise", &g->advertise},
        {"replica_name", &g->replica_name},
        {"curve_secret_key", &g->curve_secret_key},
        {"curve_router_key", &g->curve_router_key},
    };
    for (size_t i = 0; i < sizeof(sk) / sizeof(sk[0]); i++)
        if (!strcmp(key, sk[i].k)) {
            if (!*v)
                return gm_fail(GM_ERR_INVALID_ARG, "%s: empty value", key);
            return set_dup(sk[i].dst, v);
        }
    return GM_ERR_NOT_FOUND;
}

gm_status glue_config_set_list(glue_config *g, const void *setting)
{
    const config_setting_t *s = setting;
    const char *name = config_setting_name(s);
    if (!name || strcmp(name, "curve_allow"))
        return gm_fail(GM_ERR_FORMAT, "setting '%s' must be a string or a number", name ? name : "?");
    for (int i = 0; i < config_setting_length(s); i++) {
        const char *v = config_setting_get_string_elem(s, i);
        if (!v)
            return gm_fail(GM_ERR_FORMAT, "curve_allow: element %d is not a string", i);
        gm_status st = allow_add(g, v);
        if (st != GM_OK)
            return st;
    }
    return GM_OK;
}

/* Expand the launcher templates of *s in place (no '{': left as it is). */
static gm_status expand(const glue_config *g, const char *what, char **s)
{
    if (!*s || !strchr(*s, '{'))
        return GM_OK;
    char buf[1024];
    gm_status st = gc_launch_expand(*s, &g->launch, buf, sizeof(buf));
    if (st != GM_OK) {
        char msg[512];
        snprintf(msg, sizeof(msg), "%s", gm_last_error());
        return gm_fail(st, "%s: '%s': %s", what, *s, msg);
    }
    return set_dup(s, buf);
}

gm_status glue_config_finish(glue_config *g, char **listen, int32_t *device)
{
    bool need = g->router || g->device_tmpl || (*listen && strchr(*listen, '{')) ||
                (g->advertise && strchr(g->advertise, '{')) || (g->replica_name && strchr(g->replica_name, '{'));
    gm_status st = gc_launch_detect(&g->launch);
    if (st != GM_OK) {
        if (need)
            return st; /* the message names the bad variable */
        memset(&g->launch, 0, sizeof(g->launch));
        g->launch.size = g->launch.local_size = 1;
        g->launch.node_id = g->launch.num_nodes = -1;
    }
    if ((st = expand(g, "listen", listen)) != GM_OK || (st = expand(g, "advertise", &g->advertise)) != GM_OK ||
        (st = expand(g, "replica_name", &g->replica_name)) != GM_OK)
        return st;
    if (g->device_tmpl) {
        char *d = strdup(g->device_tmpl);
        if (!d)
            return gm_fail(GM_ERR_NOMEM, "device");
        st = expand(g, "device", &d);
        char *end = NULL;
        long v = st == GM_OK ? strtol(d, &end, 10) : 0;
        if (st == GM_OK && (end == d || *end || v < 0 || v > 1024))
            st = gm_fail(GM_ERR_INVALID_ARG, "device: '%s' expands to '%s', not a device number", g->device_tmpl, d);
        free(d);
        if (st != GM_OK)
            return st;
        *device = (int32_t)v;
    }
    if (g->curve) {
        if (!g->curve_secret_key)
            return gm_fail(GM_ERR_INVALID_ARG, "curve = true needs curve_secret_key (NAME.key_secret from gemma-keygen)");
        if (g->n_curve_allow == 0)
            return gm_fail(GM_ERR_INVALID_ARG, "curve = true needs curve_allow: the public keys of the clients "
                                               "(and of the router) that may connect");
        if (g->router && !g->curve_router_key)
            return gm_fail(GM_ERR_INVALID_ARG, "curve = true with router needs curve_router_key (the router's NAME.key)");
    }
    if (g->router && strncmp(g->router, "tcp://", 6) && strncmp(g->router, "ipc://", 6))
        return gm_fail(GM_ERR_INVALID_ARG, "router: '%s' is not a tcp:// or ipc:// endpoint", g->router);
    return GM_OK;
}

void glue_config_print(const glue_config *g, FILE *f)
{
    if (g->router)
        gd_config_print_str(f, "router", g->router);
    if (g->advertise)
        gd_config_print_str(f, "advertise", g->advertise);
    if (g->replica_name)
        gd_config_print_str(f, "replica_name", g->replica_name);
    if (!g->curve && !g->curve_secret_key && !g->n_curve_allow && !g->curve_router_key)
        return;
    fprintf(f, "curve = %s;\n", g->curve ? "true" : "false");
    if (g->curve_secret_key)
        gd_config_print_str(f, "curve_secret_key", g->curve_secret_key);
    if (g->curve_router_key)
        gd_config_print_str(f, "curve_router_key", g->curve_router_key);
    if (g->n_curve_allow) {
        fprintf(f, "curve_allow = [");
        for (int32_t i = 0; i < g->n_curve_allow; i++) {
            fprintf(f, "%s\"", i ? ", " : "");
            for (const char *p = g->curve_allow[i]; *p; p++) {
                if (*p == '"' || *p == '\\')
                    fputc('\\', f);
                fputc(*p, f);
            }
            fputc('"', f);
        }
        fprintf(f, "];\n");
    }
}

void glue_config_usage(FILE *f)
{
    fprintf(f,
            "cluster (see docs/CLUSTER.md):\n"
            "  --router ENDPOINT         register with this gemma-router (its --register endpoint)\n"
            "  --advertise ENDPOINT      endpoint the router should use (default: listen, wildcard host\n"
            "                            replaced by the host name)\n"
            "  --replica-name NAME       name at the router (default <host>:<pid>)\n"
            "  --curve B                 CurveZMQ on the client socket: true | false (default false)\n"
            "  --curve-secret-key F      this gemmad's NAME.key_secret (gemma-keygen)\n"
            "  --curve-allow P           allowed client public keys: NAME.key, a directory of them,\n"
            "                            or a file of Z85 keys (repeatable; list in the config file)\n"
            "  --curve-router-key F      the router's NAME.key (with --router and --curve true)\n"
            "  listen, device, advertise and replica-name may use launcher templates (Slurm, mpirun):\n"
            "  {rank} {local_rank} {size} {local_size} {node_id} {job_id} {host} {N+local_rank} ...,\n"
            "  e.g. --listen 'tcp://0.0.0.0:{5555+local_rank}' --device '{local_rank}'\n");
}

/* ---- runtime ---- */

gm_status glue_new(void *zctx, const glue_config *cfg, void *sock, glue **out)
{
    *out = NULL;
    glue *g = calloc(1, sizeof(*g));
    if (!g)
        return gm_fail(GM_ERR_NOMEM, "cluster glue");
    g->cfg = cfg;
    g->zctx = zctx;
    if (cfg->launch.launcher != GC_LAUNCHER_NONE)
        GM_INFO("started by %s: rank %d of %d, local rank %d of %d%s%s", gc_launcher_name(cfg->launch.launcher),
                cfg->launch.rank, cfg->launch.size, cfg->launch.local_rank, cfg->launch.local_size,
                cfg->launch.job_id[0] ? ", job " : "", cfg->launch.job_id);
    if (!cfg->curve) {
        *out = g;
        return GM_OK;
    }
    gm_status st = gc_curve_load_secret(cfg->curve_secret_key, &g->kp);
    gc_allowlist *al = st == GM_OK ? gc_allowlist_new() : NULL;
    if (st == GM_OK && !al)
        st = gm_fail(GM_ERR_NOMEM, "allow-list");
    for (int32_t i = 0; st == GM_OK && i < cfg->n_curve_allow; i++)
        st = gc_allowlist_add_path(al, cfg->curve_allow[i]);
    if (st == GM_OK && gc_allowlist_count(al) == 0)
        st = gm_fail(GM_ERR_INVALID_ARG, "curve_allow: no public keys found in the %d path(s) given",
                     cfg->n_curve_allow);
    if (st == GM_OK)
        st = gc_zap_start(zctx, al, &g->zap);
    if (st == GM_OK)
        st = gc_curve_set_server(sock, &g->kp, "gemmad");
    if (st == GM_OK)
        GM_INFO("CURVE on: server key %s, %d allowed client key(s)", g->kp.public_z85, gc_allowlist_count(al));
    gc_allowlist_destroy(&al);
    if (st != GM_OK) {
        glue_destroy(&g);
        return st;
    }
    *out = g;
    return GM_OK;
}

gm_status glue_start(glue *g, void *sock)
{
    const glue_config *c = g->cfg;
    if (!c->router)
        return GM_OK;
    char bound[512] = "", adv[512];
    size_t len = sizeof(bound) - 1;
    if (zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, bound, &len) != 0 || !bound[0])
        return gm_fail(GM_ERR_ZMQ, "cannot read the bound endpoint: %s", zmq_strerror(errno));
    gm_status st = gc_register_advertised(bound, adv, sizeof(adv));
    if (st != GM_OK)
        return st;
    gc_keypair rk;
    memset(&rk, 0, sizeof(rk));
    if (c->curve && (st = gc_curve_load(c->curve_router_key, &rk)) != GM_OK)
        return st;
    gc_register_opts o;
    memset(&o, 0, sizeof(o));
    o.router = c->router;
    o.endpoint = c->advertise ? c->advertise : adv;
    o.name = c->replica_name;
    o.rank = c->launch.launcher != GC_LAUNCHER_NONE ? c->launch.rank : -1;
    o.key = c->curve ? &g->kp : NULL;
    o.router_key = c->curve ? rk.public_z85 : NULL;
    o.server_key = c->curve ? g->kp.public_z85 : NULL;
    st = gc_register_start(g->zctx, &o, &g->reg);
    if (st == GM_OK)
        GM_INFO("registering with gemma-router %s as %s", c->router, o.endpoint);
    return st;
}

void glue_unregister(glue *g, const char *reason)
{
    if (g && g->reg) {
        gc_register_stop(&g->reg, reason);
        GM_INFO("unregistered from gemma-router %s", g->cfg->router);
    }
}

void glue_destroy(glue **pg)
{
    if (!pg || !*pg)
        return;
    glue *g = *pg;
    glue_unregister(g, "shutdown");
    gc_zap_destroy(&g->zap);
    memset(&g->kp, 0, sizeof(g->kp));
    free(g);
    *pg = NULL;
}
