/* cluster_glue.h - gemmad's cluster settings and their effect on the client socket:
 * CurveZMQ (server key pair + allow-list served by a ZAP handler), registration
 * with a gemma-router, and listen / device / names expanded for Slurm or mpirun
 * (cluster/launch.h). Everything gemmad does for cluster/ lives here so that
 * server.c only calls four functions:
 *
 *     glue_new(zctx, &cfg->cluster, router_sock, &g);   before zmq_bind
 *     glue_start(g, router_sock);                        after zmq_bind (registers)
 *     glue_unregister(g, "shutdown");                    on SIGTERM, before draining
 *     glue_destroy(&g);                                  before zmq_ctx_term
 *
 * Settings (config file keys; flags are the same with '-' for '_'):
 *   router = "tcp://HOST:5551";      register with this gemma-router endpoint
 *   advertise = "tcp://HOST:5555";   endpoint the router uses (default: the bound
 *                                    listen endpoint, a wildcard host -> host name)
 *   replica_name = "NAME";           default "<host>:<pid>"
 *   curve = true;                    CurveZMQ on the client socket (and towards the router)
 *   curve_secret_key = "F";          this gemmad's NAME.key_secret (gemma-keygen)
 *   curve_allow = ["F", "DIR"];      allowed client public keys (.key files, a directory
 *                                    of them, or a file of Z85 lines); repeatable flag
 *   curve_router_key = "F";          the router's NAME.key (with router + curve)
 * listen, device, advertise and replica_name may hold launcher templates such as
 * "tcp://0.0.0.0:{5555+local_rank}" or device = "{local_rank}" (gc_launch_expand). */
#ifndef GM_DAEMON_CLUSTER_GLUE_H
#define GM_DAEMON_CLUSTER_GLUE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "cluster/launch.h"
#include "common/status.h"

typedef struct glue_config {
    char *router;           /* NULL = don't register */
    char *advertise;        /* NULL = derived from the bound endpoint */
    char *replica_name;     /* NULL = "<host>:<pid>" */
    bool curve;
    char *curve_secret_key; /* path */
    char **curve_allow;     /* [n_curve_allow] paths, owned */
    int32_t n_curve_allow;
    char *curve_router_key; /* path */
    char *device_tmpl;      /* device given as a template; expanded by glue_config_finish */
    gc_launch_info launch;  /* filled by glue_config_finish */
} glue_config;

/* A zeroed glue_config is the default (no router, no curve). Frees the strings and zeroes it. */
void glue_config_free(glue_config *g);

/* Set one key from a string. GM_ERR_NOT_FOUND when key is not a cluster key (the
 * caller handles it); "device" is taken only when v holds a template ('{'). */
gm_status glue_config_set(glue_config *g, const char *key, const char *v);

/* Set a list-valued key (curve_allow) from a libconfig array or list setting
 * (a const config_setting_t *; void * keeps libconfig out of this header). */
gm_status glue_config_set_list(glue_config *g, const void *setting);

/* After all settings are read: detect the launcher, expand the templates in
 * *listen (replaced, malloc'd), *device, advertise and replica_name, and check
 * the CurveZMQ settings are complete. */
gm_status glue_config_finish(glue_config *g, char **listen, int32_t *device);

/* The cluster settings, as config-file lines (only those set). */
void glue_config_print(const glue_config *g, FILE *f);

/* The --help lines of the cluster flags. */
void glue_config_usage(FILE *f);

typedef struct glue glue;

/* Before zmq_bind of the client socket sock on zctx: with curve, load the key
 * pair and the allow-list, start the ZAP handler on zctx and make sock a CURVE
 * server. Caller owns *out (also without curve or router: then it does nothing). */
gm_status glue_new(void *zctx, const glue_config *cfg, void *sock, glue **out);

/* After zmq_bind: start registering with the router (its own thread). */
gm_status glue_start(glue *g, void *sock);

/* Tell the router this replica leaves (Unregister; blocks up to ~0.5 s). Idempotent. */
void glue_unregister(glue *g, const char *reason);

/* Unregister if still registered, stop the ZAP handler. Accepts NULL; nulls *g.
 * Call before zmq_ctx_term of the context given to glue_new. */
void glue_destroy(glue **g);

#endif
