/* http.h - an HTTP/1.1 server (libmicrohttpd) driven from the caller's event loop.
 *
 * No threads: the server hands out one file descriptor to poll for reading
 * (zmq_poll takes it as a plain fd) and a timeout; when the fd is readable or
 * the timeout passed, call http_server_run(), which accepts, reads, writes and
 * calls back. Routing is the core's: on_request gets method, path, headers and
 * the whole body, and the core answers, now or later, with one response
 * (http_req_respond) or a stream (http_req_stream_begin / _write / _end, sent
 * with chunked encoding; server-sent events need nothing more). A request
 * waiting for its answer, or a stream waiting for more bytes, costs no CPU: its
 * connection is suspended and woken when the core writes.
 *
 * The server itself answers what needs no core: bodies over max_body (413 from
 * Content-Length before reading, or as soon as a chunked body passes the
 * limit), a missing or wrong bearer token on protected paths (401), malformed
 * HTTP (400, by libmicrohttpd); errors are OpenAI-shaped JSON bodies. A client
 * that disconnects before the core's answer ended, even while its connection
 * is suspended, is reported with on_abort, so the core can cancel the work.
 *
 * Loop integration (one thread):
 *
 *     http_server *h;  http_server_new(&opts, &cb, core, &h);
 *     for (;;) {
 *         zmq_pollitem_t it[] = {..., {NULL, http_server_fd(h), ZMQ_POLLIN, 0}};
 *         long t = min(other_timeout, http_server_timeout_ms(h));   // -1: none
 *         zmq_poll(it, n, t);
 *         http_server_run(h);        // always after the poll: cheap when idle
 *         ... core work; it may call http_req_* on any request it holds ...
 *     }
 *
 * Calls that wake a suspended connection (respond, stream_write, stream_end)
 * make the fd readable, so the next poll returns at once and http_server_run
 * sends the bytes. Not thread-safe. */
#ifndef GM_HTTP_H
#define GM_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct http_server http_server;
typedef struct http_req http_req;

typedef struct http_opts {
    const char *listen;          /* "HOST:PORT": "127.0.0.1:8000", "[::1]:8000", "0.0.0.0:0" (0: any free port) */
    size_t max_body;             /* bytes (default 8 MiB); larger bodies get 413 */
    const char *api_key;         /* NULL or "": no auth; else "Authorization: Bearer KEY" is required ... */
    const char *auth_prefix;     /* ... on paths starting with this (default "/v1/"; "" = every path) */
    uint32_t max_connections;    /* open connections (default 4096); more are refused at accept */
    uint32_t idle_timeout_s;     /* close a connection idle this long (default 300; 0 = never); not while
                                    it waits for the core */
} http_opts;

/* Defaults above; listen "127.0.0.1:8000". */
void http_opts_init(http_opts *o);

/* A bearer key from a file (--api-key-file): its first line, surrounding blanks dropped, into *key
 * (caller frees). GM_ERR_IO when unreadable, GM_ERR_INVALID_ARG when that line is blank. */
gm_status http_read_key_file(const char *path, char **key);

typedef struct http_callbacks {
    /* A whole request arrived. The core now holds req until it ends its answer
     * (http_req_respond or http_req_stream_end) or gets on_abort for it. */
    void (*on_request)(void *core, http_req *req);
    /* The client went away before the core ended its answer. req is gone when
     * this returns; do not call http_req_* on it. user: http_req_user(req). */
    void (*on_abort)(void *core, http_req *req, void *user);
} http_callbacks;

/* Listen (options copied). On failure *out is NULL and gm_last_error() says why
 * (bad address, port in use). cb and core are borrowed for the server's life. */
gm_status http_server_new(const http_opts *o, const http_callbacks *cb, void *core, http_server **out);
/* Close every connection and the listener. Requests the core still holds are
 * dropped without on_abort. Accepts NULL; nulls *s. */
void http_server_destroy(http_server **s);

/* The one fd to poll for reading (an epoll fd). */
int http_server_fd(const http_server *s);
/* The bound port (useful with port 0). */
int http_server_port(const http_server *s);
/* Longest the caller may sleep before http_server_run: -1 none, 0 now. */
int64_t http_server_timeout_ms(http_server *s);
/* t (ms), or less when the server wants to run sooner. */
long http_server_wait_ms(http_server *s, long t);
/* Do all pending I/O and callbacks; never blocks. */
gm_status http_server_run(http_server *s);
/* Open connections, requests the core holds now. */
int64_t http_server_connections(const http_server *s);
int64_t http_server_requests_held(const http_server *s);

/* ---- routing ---- */

typedef struct http_route {
    const char *path, *method;
    int id;
} http_route;

/* The id of the route matching r's path and method. A known path asked with another method is
 * answered 405 (with Allow), an unknown one 404 whose message lists `served`; both return -1. */
int http_route_find(http_req *r, const http_route *routes, int n, const char *served);

/* ---- one request (valid while the core holds it) ---- */

const char *http_req_method(const http_req *r);                  /* "GET", "POST", ... */
const char *http_req_path(const http_req *r);                    /* "/v1/completions", no query string */
const char *http_req_header(const http_req *r, const char *name); /* case-insensitive; NULL if absent */
const char *http_req_query(const http_req *r, const char *name);  /* ?name=value, decoded; NULL if absent */
const char *http_req_body(const http_req *r, size_t *len);       /* NUL-terminated; "" when none */
void http_req_set_user(http_req *r, void *user);
void *http_req_user(const http_req *r);

/* An extra response header (copied; at most 8), before respond / stream_begin. */
gm_status http_req_add_header(http_req *r, const char *name, const char *value);
/* The whole answer (body copied). Ends the core's hold on r. */
gm_status http_req_respond(http_req *r, int status, const char *content_type, const void *body, size_t len);
/* An OpenAI-shaped JSON error {"error": {message, type, param, code}} as the answer
 * (status from e; oai_error comes from http/oai.h's parsers and oai_error_from_code). */
struct oai_error;
gm_status http_req_respond_oai_error(http_req *r, const struct oai_error *e);
/* The same from parts (param null). */
gm_status http_req_respond_error(http_req *r, int status, const char *type, const char *code, const char *message);
/* Start a streamed answer; text/event-stream also gets Cache-Control: no-cache. */
gm_status http_req_stream_begin(http_req *r, int status, const char *content_type);
/* Queue bytes (copied) to the stream; they leave on the next http_server_run. */
gm_status http_req_stream_write(http_req *r, const void *data, size_t len);
/* End the stream once the queued bytes are out. Ends the core's hold on r. */
gm_status http_req_stream_end(http_req *r);
/* Bytes queued and not yet handed to the socket (a slow reader's backlog). */
size_t http_req_stream_pending(const http_req *r);

#ifdef __cplusplus
}
#endif
#endif
