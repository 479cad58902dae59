/* router_config.c - gemma-router settings: defaults, a libconfig file, then flags. */
#include <errno.h>
#include <libconfig.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/router.h"
#include "common/args.h"
#include "common/log.h"
#include "http/http.h"

void gc_router_config_defaults(gc_router_config *c)
{
    memset(c, 0, sizeof(*c));
    c->listen = strdup("tcp://127.0.0.1:5550");
    c->max_in_flight = 256;
    c->max_queue = 0;
    c->queue_timeout_ms = 10000;
    c->heartbeat_ms = 500;
    c->dead_ms = 2000;
    c->max_attempts = 3;
    c->forget_ms = 60000;
    c->shutdown_timeout_ms = 10000;
    c->log_level = GM_LOG_INFO;
    c->http_max_body = 8 << 20;
    c->http_max_connections = 4096;
}

static void free_list(char ***list, int32_t *n)
{
    for (int32_t i = 0; i < *n; i++)
        free((*list)[i]);
    free(*list);
    *list = NULL;
    *n = 0;
}

void gc_router_config_free(gc_router_config *c)
{
    free(c->listen);
    free(c->register_ep);
    free_list(&c->replicas, &c->n_replicas);
    free(c->curve_secret_key);
    free_list(&c->curve_allow, &c->n_curve_allow);
    free(c->curve_replica_key);
    free_list(&c->replica_allow, &c->n_replica_allow);
    free(c->config_path);
    free(c->http_listen);
    free(c->api_key);
    free(c->served_model_name);
    memset(c, 0, sizeof(*c));
}

static gm_status set_str(char **dst, const char *v)
{
    char *d = strdup(v);
    if (!d)
        return gm_fail(GM_ERR_NOMEM, "config string");
    free(*dst);
    *dst = d;
    return GM_OK;
}

static gm_status push_str(char ***list, int32_t *n, const char *v)
{
    char **l = realloc(*list, (size_t)(*n + 1) * sizeof(*l));
    if (!l)
        return gm_fail(GM_ERR_NOMEM, "config list");
    *list = l;
    l[*n] = strdup(v);
    if (!l[*n])
        return gm_fail(GM_ERR_NOMEM, "config string");
    (*n)++;
    return GM_OK;
}

/* The integer settings, by name (file key; the flag is --key-with-dashes). */
typedef struct int_opt {
    const char *key;
    size_t off;
    int32_t lo, hi;
} int_opt;

#define IOPT(k, lo, hi) {#k, offsetof(gc_router_config, k), lo, hi}
static const int_opt INT_OPTS[] = {
    IOPT(max_in_flight, 1, 1000000),     IOPT(max_queue, 0, 1000000),     IOPT(queue_timeout_ms, 0, 3600000),
    IOPT(heartbeat_ms, 10, 60000),       IOPT(dead_ms, 50, 600000),       IOPT(max_attempts, 1, 100),
    IOPT(forget_ms, 0, 86400000),        IOPT(shutdown_timeout_ms, 0, 3600000),
    IOPT(http_max_body, 1024, 1 << 30),  IOPT(http_max_requests, 0, 1000000), IOPT(http_max_connections, 1, 1000000),
};
#undef IOPT

static const int_opt *find_int_opt(const char *key)
{
    for (size_t i = 0; i < sizeof(INT_OPTS) / sizeof(INT_OPTS[0]); i++)
        if (strcmp(INT_OPTS[i].key, key) == 0)
            return &INT_OPTS[i];
    return NULL;
}

static gm_status set_int(gc_router_config *c, const int_opt *o, long long v, const char *where)
{
    if (v < o->lo || v > o->hi)
        return gm_fail(GM_ERR_INVALID_ARG, "%s: %s = %lld is outside [%d, %d]", where, o->key, v, o->lo, o->hi);
    *(int32_t *)((char *)c + o->off) = (int32_t)v;
    return GM_OK;
}

/* The HTTP API's string settings (file keys; the flags are --key-with-dashes); GM_ERR_NOT_FOUND for others. */
static gm_status set_http_str(gc_router_config *c, const char *key, const char *v)
{
    if (!strcmp(key, "http_listen"))
        return *v ? set_str(&c->http_listen, v) : GM_OK;
    if (!strcmp(key, "api_key"))
        return *v ? set_str(&c->api_key, v) : GM_OK;
    if (!strcmp(key, "served_model_name"))
        return *v ? set_str(&c->served_model_name, v) : GM_OK;
    if (!strcmp(key, "api_key_file")) {
        char *k = NULL;
        gm_status st = *v ? http_read_key_file(v, &k) : GM_OK;
        if (st == GM_OK && k) {
            free(c->api_key);
            c->api_key = k;
        }
        return st;
    }
    return GM_ERR_NOT_FOUND;
}

/* A string or a list of strings into list. */
static gm_status load_str_list(config_setting_t *s, char ***list, int32_t *n, const char *path)
{
    if (config_setting_type(s) == CONFIG_TYPE_STRING)
        return push_str(list, n, config_setting_get_string(s));
    if (config_setting_type(s) != CONFIG_TYPE_ARRAY && config_setting_type(s) != CONFIG_TYPE_LIST)
        return gm_fail(GM_ERR_INVALID_ARG, "%s:%d: %s must be a string or a list of strings", path,
                       config_setting_source_line(s), config_setting_name(s));
    for (int i = 0; i < config_setting_length(s); i++) {
        const char *v = config_setting_get_string_elem(s, i);
        if (!v)
            return gm_fail(GM_ERR_INVALID_ARG, "%s:%d: %s[%d] is not a string", path,
                           config_setting_source_line(s), config_setting_name(s), i);
        gm_status st = push_str(list, n, v);
        if (st != GM_OK)
            return st;
    }
    return GM_OK;
}

gm_status gc_router_config_load_file(gc_router_config *c, const char *path)
{
    config_t cf;
    config_init(&cf);
    if (!config_read_file(&cf, path)) {
        gm_status st;
        if (config_error_type(&cf) == CONFIG_ERR_FILE_IO)
            st = gm_fail(GM_ERR_IO, "cannot read config file '%s'", path);
        else
            st = gm_fail(GM_ERR_FORMAT, "%s:%d: %s", path, config_error_line(&cf), config_error_text(&cf));
        config_destroy(&cf);
        return st;
    }
    gm_status st = set_str(&c->config_path, path);
    config_setting_t *root = config_root_setting(&cf);
    for (int i = 0; st == GM_OK && i < config_setting_length(root); i++) {
        config_setting_t *s = config_setting_get_elem(root, (unsigned)i);
        const char *k = config_setting_name(s);
        int line = config_setting_source_line(s);
        char where[PATH_MAX + 16];
        snprintf(where, sizeof(where), "%s:%d", path, line);
        const int_opt *io = find_int_opt(k);
        int t = config_setting_type(s);
        if (io) {
            if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
                st = gm_fail(GM_ERR_INVALID_ARG, "%s: %s must be an integer", where, k);
            else
                st = set_int(c, io, config_setting_get_int64(s), where);
        } else if (!strcmp(k, "listen") || !strcmp(k, "register") || !strcmp(k, "curve_secret_key") ||
                   !strcmp(k, "curve_replica_key") || !strcmp(k, "log_level")) {
            const char *v = config_setting_get_string(s);
            if (!v)
                st = gm_fail(GM_ERR_INVALID_ARG, "%s: %s must be a string", where, k);
            else if (!strcmp(k, "listen"))
                st = set_str(&c->listen, v);
            else if (!strcmp(k, "register"))
                st = set_str(&c->register_ep, v);
            else if (!strcmp(k, "curve_secret_key"))
                st = set_str(&c->curve_secret_key, v);
            else if (!strcmp(k, "curve_replica_key"))
                st = set_str(&c->curve_replica_key, v);
            else {
                int lv = gm_log_parse_level(v);
                if (lv < 0)
                    st = gm_fail(GM_ERR_INVALID_ARG, "%s: log_level '%s' is not debug|info|warn|error|off", where, v);
                else
                    c->log_level = lv;
            }
        } else if (!strcmp(k, "http_listen") || !strcmp(k, "api_key") || !strcmp(k, "api_key_file") ||
                   !strcmp(k, "served_model_name")) {
            const char *v = config_setting_get_string(s);
            st = v ? set_http_str(c, k, v) : gm_fail(GM_ERR_INVALID_ARG, "%s: %s must be a string", where, k);
            if (st != GM_OK && v) {
                char msg[512];
                snprintf(msg, sizeof msg, "%s", gm_last_error());
                st = gm_fail(st, "%s: %s", where, msg);
            }
        } else if (!strcmp(k, "replicas")) {
            st = load_str_list(s, &c->replicas, &c->n_replicas, path);
        } else if (!strcmp(k, "curve_allow")) {
            st = load_str_list(s, &c->curve_allow, &c->n_curve_allow, path);
        } else if (!strcmp(k, "replica_allow")) {
            st = load_str_list(s, &c->replica_allow, &c->n_replica_allow, path);
        } else if (!strcmp(k, "curve") || !strcmp(k, "insecure_register")) {
            if (t != CONFIG_TYPE_BOOL)
                st = gm_fail(GM_ERR_INVALID_ARG, "%s: %s must be true or false", where, k);
            else if (!strcmp(k, "curve"))
                c->curve = config_setting_get_bool(s);
            else
                c->insecure_register = config_setting_get_bool(s);
        } else {
            st = gm_fail(GM_ERR_INVALID_ARG, "%s: unknown setting '%s'", where, k);
        }
    }
    config_destroy(&cf);
    return st;
}

void gc_router_usage(FILE *f)
{
    fprintf(f,
            "usage: gemma-router [options]\n"
            "Spread gemma.proto clients over several gemmad replicas (same API as gemmad).\n"
            "\n"
            "  --listen E             client endpoint (default tcp://127.0.0.1:5550)\n"
            "  --replica E            a gemmad endpoint (repeatable)\n"
            "  --register E           accept replicas that register themselves on E (loopback or ipc://\n"
            "                         unless --curve, or --insecure-register)\n"
            "  --config FILE          libconfig file; its keys are these flags with '_' (replicas = [..])\n"
            "  --max-in-flight N      requests the router keeps on one replica (default 256)\n"
            "  --max-queue N          requests held when every replica is full (default 0: OVERLOADED at once)\n"
            "  --queue-timeout-ms MS  how long a held request waits for room (default 10000)\n"
            "  --heartbeat-ms MS      Health/Stats probe interval (default 500)\n"
            "  --dead-ms MS           a replica silent this long is taken out (default 2000)\n"
            "  --max-attempts N       replicas one request may be tried on (default 3)\n"
            "  --forget-ms MS         a registered replica down this long is forgotten (default 60000)\n"
            "  --shutdown-timeout-ms MS  on SIGTERM, time given to requests in flight (default 10000)\n"
            "  --log-level L          debug|info|warn|error|off (default info)\n"
            "  --http-listen HOST:PORT  also serve the OpenAI-compatible HTTP API (/v1/completions,\n"
            "                         /v1/chat/completions, /v1/models, /health, /metrics) there, in front\n"
            "                         of the replicas (off by default)\n"
            "  --api-key KEY          require 'Authorization: Bearer KEY' on the HTTP /v1/ paths\n"
            "  --api-key-file F       the same, the key read from F's first line\n"
            "  --served-model-name N  the HTTP API's model name (default: the replicas' model directory)\n"
            "  --http-max-body BYTES  largest HTTP request body (default 8388608; 413 beyond)\n"
            "  --http-max-requests N  generation requests in flight over HTTP (default 0: no own limit;\n"
            "                         429 beyond)\n"
            "  --http-max-connections N  open HTTP connections (default 4096)\n"
            "  --curve                CurveZMQ on the client and register endpoints\n"
            "  --curve-secret-key F   the router's key pair (NAME.key_secret from gemma-keygen)\n"
            "  --curve-allow P        allowed client public keys: a .key file, a directory of them,\n"
            "                         or a file of Z85 keys one per line (repeatable)\n"
            "  --curve-replica-key F  the replicas' server public key (for --replica endpoints)\n"
            "  --replica-allow P      public keys that may register as replicas (same forms as\n"
            "                         --curve-allow; needed with --curve and --register)\n"
            "  --insecure-register    let --register bind where other hosts reach it without CURVE:\n"
            "                         anyone there can add replicas (a trusted network only)\n"
            "  --keygen PREFIX        write PREFIX.key and PREFIX.key_secret and exit (--force overwrites)\n"
            "  --help                 this text\n");
}

/* args_parse's fallback for the router's --name VALUE options (the config keys, '-' for '_'). */
typedef struct router_args {
    gc_router_config *c;
    gc_router_action action;
    const char *keygen_prefix;
} router_args;

static gm_status router_set_flag(void *ctx, const char *name, const char *v)
{
    router_args *x = ctx;
    gc_router_config *c = x->c;
    gm_status st = GM_OK;
    char key[64], flag[80];
    snprintf(key, sizeof(key), "%s", name);
    snprintf(flag, sizeof(flag), "--%s", name);
    for (char *p = key; *p; p++)
        if (*p == '-')
            *p = '_';
    const int_opt *io = find_int_opt(key);
    if (io) {
        char *end;
        errno = 0;
        long long n = strtoll(v, &end, 10);
        if (errno || end == v || *end)
            return gm_fail(GM_ERR_INVALID_ARG, "'%s' is not an integer", v);
        st = set_int(c, io, n, flag);
    } else if (!strcmp(key, "config")) {
        /* read above */
    } else if (!strcmp(key, "listen")) {
        st = set_str(&c->listen, v);
    } else if (!strcmp(key, "register")) {
        st = set_str(&c->register_ep, v);
    } else if (!strcmp(key, "replica")) {
        st = push_str(&c->replicas, &c->n_replicas, v);
    } else if (!strcmp(key, "curve_secret_key")) {
        st = set_str(&c->curve_secret_key, v);
    } else if (!strcmp(key, "curve_allow")) {
        st = push_str(&c->curve_allow, &c->n_curve_allow, v);
    } else if (!strcmp(key, "curve_replica_key")) {
        st = set_str(&c->curve_replica_key, v);
    } else if (!strcmp(key, "replica_allow")) {
        st = push_str(&c->replica_allow, &c->n_replica_allow, v);
    } else if (!strcmp(key, "log_level")) {
        int lv = gm_log_parse_level(v);
        if (lv < 0)
            return gm_fail(GM_ERR_INVALID_ARG, "'%s' is not debug|info|warn|error|off", v);
        c->log_level = lv;
    } else if (!strncmp(key, "http_", 5) || !strncmp(key, "api_key", 7) || !strcmp(key, "served_model_name")) {
        st = set_http_str(c, key, v);
        if (st == GM_ERR_NOT_FOUND)
            return GM_ERR_NOT_FOUND;
    } else if (!strcmp(key, "keygen")) {
        x->action = GC_ROUTER_KEYGEN;
        x->keygen_prefix = v;
    } else {
        return GM_ERR_NOT_FOUND;
    }
    return st;
}

gm_status gc_router_config_from_args(int argc, char **argv, gc_router_config *c, gc_router_action *action,
                                     const char **keygen_prefix, bool *force)
{
    gc_router_config_defaults(c);
    *action = GC_ROUTER_RUN;
    *force = false;
    *keygen_prefix = NULL;
    for (int i = 1; i < argc; i++) { /* the file first: the flags override it */
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            *action = GC_ROUTER_HELP;
            return GM_OK;
        }
        if (!strcmp(argv[i], "--config") || !strncmp(argv[i], "--config=", 9)) {
            const char *f = argv[i][8] == '=' ? argv[i] + 9 : i + 1 < argc ? argv[++i] : NULL;
            if (!f)
                return gm_fail(GM_ERR_INVALID_ARG, "--config needs a file");
            gm_status st = gc_router_config_load_file(c, f);
            if (st != GM_OK)
                return st;
        }
    }
    const char *config_file = NULL;
    router_args x = {c, GC_ROUTER_RUN, NULL};
    args_opt opts[] = {
        {"config", ARGS_STRING, &config_file}, /* read above */
        {"curve", ARGS_FLAG, &c->curve},
        {"force", ARGS_FLAG, force},
        {"insecure-register", ARGS_FLAG, &c->insecure_register},
        {NULL},
    };
    args_spec spec = {"gemma-router", opts, .unknown = router_set_flag, .unknown_ctx = &x, .quiet = true};
    int rc = args_parse(&spec, argc, argv);
    if (rc == ARGS_HELP) {
        *action = GC_ROUTER_HELP;
        return GM_OK;
    }
    if (rc != ARGS_OK)
        return GM_ERR_INVALID_ARG; /* gm_last_error() says why */
    *action = x.action;
    *keygen_prefix = x.keygen_prefix;
    return GM_OK;
}

gm_status gc_router_config_validate(const gc_router_config *c)
{
    if (!c->listen || !*c->listen)
        return gm_fail(GM_ERR_INVALID_ARG, "listen endpoint is empty");
    if (c->dead_ms <= c->heartbeat_ms)
        return gm_fail(GM_ERR_INVALID_ARG, "dead_ms (%d) must be larger than heartbeat_ms (%d)", c->dead_ms,
                       c->heartbeat_ms);
    if (c->http_listen && (!strchr(c->http_listen, ':') || strstr(c->http_listen, "://")))
        return gm_fail(GM_ERR_INVALID_ARG, "http_listen: '%s' is not HOST:PORT (like 127.0.0.1:8000)", c->http_listen);
    if (c->n_replicas == 0 && !c->register_ep)
        return gm_fail(GM_ERR_INVALID_ARG, "no replicas: give --replica E (repeatable) or --register E");
    for (int i = 0; i < c->n_replicas; i++)
        if (!c->replicas[i][0])
            return gm_fail(GM_ERR_INVALID_ARG, "replica %d has an empty endpoint", i);
    if (c->curve) {
        if (!c->curve_secret_key)
            return gm_fail(GM_ERR_INVALID_ARG, "curve = true needs curve_secret_key (make one with gemma-keygen)");
        if (c->n_curve_allow == 0)
            return gm_fail(GM_ERR_INVALID_ARG, "curve = true needs curve_allow (client public keys); "
                                               "with none every client would be refused");
        if (c->register_ep && c->n_replica_allow == 0)
            return gm_fail(GM_ERR_INVALID_ARG, "curve = true with a register endpoint needs replica_allow: the "
                                               "public keys of the replicas that may register (client keys cannot)");
    } else if (c->curve_secret_key || c->n_curve_allow || c->curve_replica_key || c->n_replica_allow) {
        return gm_fail(GM_ERR_INVALID_ARG, "curve_* or replica_allow keys are set but curve is off "
                                           "(add --curve / curve = true)");
    }
    if (c->register_ep && !c->curve && !c->insecure_register && !gc_router_endpoint_local(c->register_ep))
        return gm_fail(GM_ERR_INVALID_ARG,
                       "register endpoint '%s' can be reached from other hosts but CURVE is off: anyone there "
                       "could add replicas or take over their names. Turn on curve (with replica_allow), bind it "
                       "to loopback or ipc://, or pass --insecure-register (insecure_register = true) on a "
                       "network you trust",
                       c->register_ep);
    return GM_OK;
}
