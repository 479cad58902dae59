/* front_http_int.h - what the HTTP front door's files share (not a public header; server_int.h has
 * what the rest of gemmad calls).
 *
 *   front_http.c         exchanges (generation requests), streaming, the lifecycle
 *   front_http_routes.c  /v1/models, /health, /version, /metrics, /tokenize, /detokenize, and routing */
#ifndef GM_FRONT_HTTP_INT_H
#define GM_FRONT_HTTP_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "http/http.h"
#include "http/oai.h"
#include "daemon/server_int.h"

typedef struct hx hx; /* one generation request over HTTP (front_http.c) */
typedef struct gd_http gd_http;

struct gd_http {
    http_server *srv;
    char model[256];       /* the served model name */
    int64_t created;       /* unix time gemmad started */
    int32_t n_live;
    double next_run_ms;    /* pacing: the socket work waits until then while steps are in flight */
    jsonw w;               /* formatting scratch, reused by every answer */
    oai_lpbuf lp;          /* log-probabilities scratch, the same way */
    hx *live, *to_free;
};

/* ---- front_http.c ---- */

void gd_http_respond_json(gd_server *s, http_req *h, int status); /* answer with s->http->w's JSON */
void gd_http_respond_err(http_req *h, const oai_error *e);         /* answer with e, in OpenAI's shape */
bool gd_http_model_ok(const gd_server *s, const char *model);      /* model is absent or the served one */
void gd_http_on_generate(gd_server *s, http_req *h, oai_endpoint ep); /* /v1/completions, /v1/chat/completions */

/* ---- front_http_routes.c ---- */

void gd_http_on_request(void *core, http_req *h); /* http_callbacks.on_request: route h (core: gd_server) */

#endif
