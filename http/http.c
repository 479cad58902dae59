/* http.c - libmicrohttpd in external-epoll mode, suspend/resume for answers that come later.
 *
 * Our epoll fd holds libmicrohttpd's epoll fd (level-triggered, readable when it
 * has socket work), an eventfd we write when we resume a connection (in external
 * mode libmicrohttpd only notices a resume when run, and has no wake-up of its
 * own), and, edge-triggered on EPOLLRDHUP, the socket of every request the core
 * holds once its connection was first suspended: libmicrohttpd does not watch
 * suspended sockets, so this is how a disconnect while waiting is seen. */
#define _GNU_SOURCE
#include "http/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/jsonw.h"
#include "common/log.h"
#include "http/oai.h"

#define HTTP_MAX_HEADERS 8
#define HTTP_STREAM_BLOCK 16384

typedef enum req_state {
    REQ_RECEIVING, /* body arriving */
    REQ_REJECTED,  /* answered by the server (401/413) before the body was read */
    REQ_DISCARD,   /* a chunked body passed max_body: read and dropped, 413 at its end */
    REQ_WAITING,   /* the core holds it, no answer yet */
    REQ_READY,     /* a whole answer waits to be queued */
    REQ_STREAM,    /* streaming: the callback response is (or is about to be) queued */
    REQ_QUEUED,    /* the answer is with libmicrohttpd */
} req_state;

struct http_req {
    http_server *s;
    struct MHD_Connection *conn;
    req_state state;
    bool held;       /* the core holds it (between on_request and the end of its answer / on_abort) */
    bool suspended;
    bool gone;       /* the client disconnected */
    bool watched;    /* fd in our epoll set */
    int fd;
    char *method, *path;
    char *body;      /* [body_len] + NUL (owned) */
    size_t body_len, body_cap;
    size_t discarded; /* body bytes dropped past max_body */
    void *user;
    int status;
    char *ctype;
    char *answer;    /* whole answer (owned) */
    size_t answer_len;
    char *hname[HTTP_MAX_HEADERS], *hval[HTTP_MAX_HEADERS];
    int n_headers;
    char *sbuf;      /* stream bytes [s_off, s_len) not yet handed over (owned) */
    size_t s_off, s_len, s_cap;
    bool s_ended;
    http_req *prev, *next;
};

struct http_server {
    struct MHD_Daemon *d;
    int epfd;
    int wake_fd;    /* eventfd in epfd: written when a connection is resumed (libmicrohttpd has no
                       wake-up of its own in external mode; it must be run after a resume) */
    bool woken;
    int port;
    size_t max_body;
    char *api_key, *auth_prefix;
    http_callbacks cb;
    void *core;
    int64_t n_conns, n_held;
    http_req *reqs; /* every live request, for destroy */
};

void http_opts_init(http_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->listen = "127.0.0.1:8000";
    o->max_body = 8u << 20;
    o->auth_prefix = "/v1/";
    o->max_connections = 4096;
    o->idle_timeout_s = 300;
}

gm_status http_read_key_file(const char *path, char **key)
{
    *key = NULL;
    FILE *f = fopen(path, "r");
    if (!f)
        return gm_fail(GM_ERR_IO, "api_key_file: cannot read %s: %s", path, strerror(errno));
    char line[1024];
    if (!fgets(line, sizeof line, f))
        line[0] = '\0';
    fclose(f);
    char *b = line, *e = line + strlen(line);
    while (*b == ' ' || *b == '\t' || *b == '\r' || *b == '\n')
        b++;
    while (e > b && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
        *--e = '\0';
    if (!*b)
        return gm_fail(GM_ERR_INVALID_ARG, "api_key_file: %s holds no key on its first line", path);
    *key = strdup(b);
    return *key ? GM_OK : gm_fail(GM_ERR_NOMEM, "api_key_file: out of memory");
}

/* ---- requests ---- */

static void req_watch(http_req *r)
{
    if (r->watched)
        return;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci)
        return;
    r->fd = ci->connect_fd;
    struct epoll_event ev = {.events = EPOLLRDHUP | EPOLLET, .data.ptr = r};
    if (epoll_ctl(r->s->epfd, EPOLL_CTL_ADD, r->fd, &ev) == 0)
        r->watched = true;
}

static void req_unwatch(http_req *r)
{
    if (!r->watched)
        return;
    epoll_ctl(r->s->epfd, EPOLL_CTL_DEL, r->fd, NULL);
    r->watched = false;
}

static void req_suspend(http_req *r)
{
    if (r->suspended)
        return;
    MHD_suspend_connection(r->conn);
    r->suspended = true;
    if (r->held)
        req_watch(r);
}

static void req_resume(http_req *r)
{
    if (!r->suspended)
        return;
    MHD_resume_connection(r->conn);
    r->suspended = false;
    http_server *s = r->s;
    if (!s->woken) { /* one wake-up per run, however many connections resume */
        uint64_t one = 1;
        if (write(s->wake_fd, &one, sizeof one) == sizeof one)
            s->woken = true;
    }
}

/* The core's hold ends (it answered, or the client left). */
static void req_release(http_req *r)
{
    if (r->held) {
        r->held = false;
        r->s->n_held--;
    }
}

static void req_free(http_req *r)
{
    http_server *s = r->s;
    req_unwatch(r);
    req_release(r);
    if (r->prev)
        r->prev->next = r->next;
    else
        s->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    free(r->method);
    free(r->path);
    free(r->body);
    free(r->ctype);
    free(r->answer);
    for (int i = 0; i < r->n_headers; i++) {
        free(r->hname[i]);
        free(r->hval[i]);
    }
    free(r->sbuf);
    free(r);
}

/* The client is gone: tell the core (if it holds r) and let libmicrohttpd close it. */
static void req_gone(http_req *r)
{
    if (r->gone)
        return;
    r->gone = true;
    if (r->held) {
        req_release(r);
        if (r->s->cb.on_abort)
            r->s->cb.on_abort(r->s->core, r, r->user);
    }
    req_resume(r);
}

/* ---- responses ---- */

static enum MHD_Result queue(http_req *r, int status, const char *ctype, struct MHD_Response *resp)
{
    if (!resp)
        return MHD_NO;
    if (ctype)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (ctype && !strncmp(ctype, "text/event-stream", 17)) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    }
    for (int i = 0; i < r->n_headers; i++)
        MHD_add_response_header(resp, r->hname[i], r->hval[i]);
    enum MHD_Result ret = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* An OpenAI-shaped error body queued at once (the server's own 401/413). */
static enum MHD_Result queue_error(http_req *r, int status, const char *code, const char *message)
{
    oai_error e;
    oai_fail(&e, status, "invalid_request_error", NULL, code, "%s", message);
    jsonw w = {0};
    oai_write_error(&w, &e);
    if (status == 401)
        http_req_add_header(r, "WWW-Authenticate", "Bearer");
    struct MHD_Response *resp =
        jsonw_ok(&w) ? MHD_create_response_from_buffer(w.len, w.p, MHD_RESPMEM_MUST_COPY) : NULL;
    jsonw_free(&w);
    r->state = REQ_REJECTED;
    return queue(r, status, "application/json", resp);
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    http_req *r = cls;
    if (r->gone)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t avail = r->s_len - r->s_off;
    if (avail > 0) {
        size_t n = avail < max ? avail : max;
        memcpy(buf, r->sbuf + r->s_off, n);
        r->s_off += n;
        if (r->s_off == r->s_len)
            r->s_off = r->s_len = 0;
        return (ssize_t)n;
    }
    if (r->s_ended)
        return MHD_CONTENT_READER_END_OF_STREAM;
    req_suspend(r); /* nothing to send: sleep until the core writes */
    return 0;
}

/* Queue what the core decided, or suspend until it decides. */
static enum MHD_Result answer(http_req *r)
{
    if (r->gone)
        return MHD_NO;
    if (r->state == REQ_READY) {
        r->state = REQ_QUEUED;
        struct MHD_Response *resp = MHD_create_response_from_buffer(r->answer_len, r->answer, MHD_RESPMEM_MUST_COPY);
        free(r->answer);
        r->answer = NULL;
        return queue(r, r->status, r->ctype, resp);
    }
    if (r->state == REQ_STREAM) {
        r->state = REQ_QUEUED;
        struct MHD_Response *resp =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, HTTP_STREAM_BLOCK, stream_read, r, NULL);
        return queue(r, r->status, r->ctype, resp);
    }
    req_suspend(r);
    return MHD_YES;
}

static bool auth_ok(const http_server *s, struct MHD_Connection *c, const char *path)
{
    if (!s->api_key || strncmp(path, s->auth_prefix, strlen(s->auth_prefix)) != 0)
        return true;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return false;
    h += 7;
    while (*h == ' ')
        h++;
    size_t n = strlen(h), k = strlen(s->api_key);
    unsigned diff = n != k; /* compare every byte: no early exit on the first mismatch */
    for (size_t i = 0; i < k; i++)
        diff |= (unsigned)(unsigned char)s->api_key[i] ^ (unsigned)(unsigned char)(i < n ? h[i] : 0);
    return diff == 0;
}

static bool body_append(http_req *r, const char *data, size_t n)
{
    if (r->body_len + n + 1 > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 4096;
        while (cap < r->body_len + n + 1)
            cap *= 2;
        char *b = realloc(r->body, cap);
        if (!b)
            return false;
        r->body = b;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return true;
}

/* First call for a request: make its record, check auth and the declared size. */
static enum MHD_Result begin(http_server *s, struct MHD_Connection *c, const char *url, const char *method,
                             void **cls)
{
    http_req *r = calloc(1, sizeof(*r));
    if (!r)
        return MHD_NO;
    r->s = s;
    r->conn = c;
    r->fd = -1;
    r->method = strdup(method);
    r->path = strdup(url);
    r->next = s->reqs;
    if (s->reqs)
        s->reqs->prev = r;
    s->reqs = r;
    *cls = r;
    if (!r->method || !r->path)
        return MHD_NO;
    if (!auth_ok(s, c, url))
        return queue_error(r, 401, "invalid_api_key", "Incorrect or missing API key: send 'Authorization: Bearer KEY'.");
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoull(cl, NULL, 10) > s->max_body) {
        char msg[128];
        snprintf(msg, sizeof msg, "The request body is larger than %zu bytes.", s->max_body);
        return queue_error(r, 413, "request_too_large", msg);
    }
    return MHD_YES;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    http_server *s = cls;
    if (!*con_cls)
        return begin(s, c, url, method, con_cls);
    http_req *r = *con_cls;
    if (r->state == REQ_REJECTED) { /* already answered: drop the rest of the body */
        *upload_size = 0;
        return MHD_YES;
    }
    if (*upload_size > 0) {
        /* libmicrohttpd takes no answer while a body is arriving: past the limit, drop
         * the rest and answer 413 at its end (or hang up if it goes on and on) */
        if (r->state == REQ_DISCARD || r->body_len + *upload_size > s->max_body) {
            r->state = REQ_DISCARD;
            r->discarded += *upload_size;
            *upload_size = 0;
            return r->discarded > 16 * s->max_body ? MHD_NO : MHD_YES;
        }
        if (!body_append(r, upload, *upload_size))
            return MHD_NO;
        *upload_size = 0;
        return MHD_YES;
    }
    if (r->state == REQ_DISCARD) {
        char msg[128];
        snprintf(msg, sizeof msg, "The request body is larger than %zu bytes.", s->max_body);
        return queue_error(r, 413, "request_too_large", msg);
    }
    if (r->state == REQ_RECEIVING) { /* the whole request is here: the core's turn */
        if (!r->body && !body_append(r, "", 0))
            return MHD_NO;
        r->state = REQ_WAITING;
        r->held = true;
        s->n_held++;
        if (s->cb.on_request)
            s->cb.on_request(s->core, r);
    }
    return answer(r);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    http_req *r = *con_cls;
    if (!r)
        return;
    if (r->held) /* the client left (or the connection failed) before the core's answer ended */
        req_gone(r);
    req_free(r);
    *con_cls = NULL;
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    http_server *s = cls;
    s->n_conns += code == MHD_CONNECTION_NOTIFY_STARTED ? 1 : -1;
}

static void on_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n')
        msg[--n] = '\0';
    GM_WARN("http: %s", msg);
}

/* ---- the server ---- */

/* "HOST:PORT" or "[V6]:PORT" into a socket address. */
static gm_status parse_listen(const char *spec, struct sockaddr_storage *sa, socklen_t *len)
{
    char host[256];
    const char *colon = strrchr(spec ? spec : "", ':');
    if (!spec || !colon || colon == spec || !colon[1])
        return gm_fail(GM_ERR_INVALID_ARG, "http listen address '%s': expected HOST:PORT", spec ? spec : "");
    size_t hl = (size_t)(colon - spec);
    const char *h = spec;
    if (spec[0] == '[' && colon[-1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl >= sizeof host)
        return gm_fail(GM_ERR_INVALID_ARG, "http listen address '%s': host too long", spec);
    memcpy(host, h, hl);
    host[hl] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535)
        return gm_fail(GM_ERR_INVALID_ARG, "http listen address '%s': bad port", spec);
    struct addrinfo hints = {.ai_flags = AI_PASSIVE | AI_NUMERICSERV, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    int rc = getaddrinfo(hl && strcmp(host, "*") ? host : NULL, colon + 1, &hints, &ai);
    if (rc != 0 || !ai)
        return gm_fail(GM_ERR_INVALID_ARG, "http listen address '%s': %s", spec, gai_strerror(rc));
    memcpy(sa, ai->ai_addr, ai->ai_addrlen);
    *len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return GM_OK;
}

gm_status http_server_new(const http_opts *o, const http_callbacks *cb, void *core, http_server **out)
{
    *out = NULL;
    http_opts def;
    if (!o) {
        http_opts_init(&def);
        o = &def;
    }
    struct sockaddr_storage sa;
    socklen_t salen;
    gm_status st = parse_listen(o->listen, &sa, &salen);
    if (st != GM_OK)
        return st;
    http_server *s = calloc(1, sizeof(*s));
    if (!s)
        return gm_fail(GM_ERR_NOMEM, "http: out of memory");
    s->epfd = s->wake_fd = -1;
    s->max_body = o->max_body ? o->max_body : 8u << 20;
    if (cb)
        s->cb = *cb;
    s->core = core;
    if (o->api_key && o->api_key[0] && !(s->api_key = strdup(o->api_key)))
        goto nomem;
    if (!(s->auth_prefix = strdup(o->auth_prefix ? o->auth_prefix : "/v1/")))
        goto nomem;
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    struct epoll_event wev = {.events = EPOLLIN, .data.ptr = s};
    if (s->epfd < 0 || s->wake_fd < 0 || epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->wake_fd, &wev) != 0) {
        st = gm_fail(GM_ERR_IO, "http: epoll/eventfd: %s", strerror(errno));
        goto fail;
    }
    /* default address reuse: SO_REUSEADDR (a restart can rebind), never SO_REUSEPORT
     * (a second gemmad on the same port must fail, not share it) */
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (sa.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    s->d = MHD_start_daemon(flags, 0, NULL, NULL, on_access, s, MHD_OPTION_EXTERNAL_LOGGER, on_log, s,
                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_CONNECTION_LIMIT, (unsigned)(o->max_connections ? o->max_connections : 4096),
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)o->idle_timeout_s, MHD_OPTION_NOTIFY_COMPLETED,
                            on_completed, s, MHD_OPTION_NOTIFY_CONNECTION, on_connection, s, MHD_OPTION_END);
    if (!s->d) {
        st = gm_fail(GM_ERR_IO, "http: cannot listen on %s (in use, or not an address of this host?)", o->listen);
        goto fail;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_EPOLL_FD);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (!di || epoll_ctl(s->epfd, EPOLL_CTL_ADD, di->epoll_fd, &ev) != 0) {
        st = gm_fail(GM_ERR_IO, "http: cannot watch libmicrohttpd's epoll fd");
        goto fail;
    }
    di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_LISTEN_FD);
    struct sockaddr_storage bound;
    socklen_t bl = sizeof bound;
    if (di && getsockname(di->listen_fd, (struct sockaddr *)&bound, &bl) == 0)
        s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                    : ((struct sockaddr_in *)&bound)->sin_port);
    *out = s;
    return GM_OK;
nomem:
    st = gm_fail(GM_ERR_NOMEM, "http: out of memory");
fail:
    http_server_destroy(&s);
    return st;
}

void http_server_destroy(http_server **ps)
{
    http_server *s = ps ? *ps : NULL;
    if (!s)
        return;
    if (s->d) {
        /* drop what the core holds, without callbacks; every connection must be
         * resumed before libmicrohttpd stops */
        for (http_req *r = s->reqs; r; r = r->next) {
            req_release(r);
            r->gone = true;
            req_resume(r);
        }
        MHD_run(s->d);
        MHD_stop_daemon(s->d);
    }
    while (s->reqs) /* any left without a completion call */
        req_free(s->reqs);
    if (s->epfd >= 0)
        close(s->epfd);
    if (s->wake_fd >= 0)
        close(s->wake_fd);
    free(s->api_key);
    free(s->auth_prefix);
    free(s);
    *ps = NULL;
}

int http_server_fd(const http_server *s)
{
    return s->epfd;
}

int http_server_port(const http_server *s)
{
    return s->port;
}

int64_t http_server_timeout_ms(http_server *s)
{
    MHD_UNSIGNED_LONG_LONG t;
    if (MHD_get_timeout(s->d, &t) != MHD_YES)
        return -1;
    return t > INT64_MAX ? INT64_MAX : (int64_t)t;
}

long http_server_wait_ms(http_server *s, long t)
{
    int64_t h = http_server_timeout_ms(s);
    return h >= 0 && h < t ? (long)h : t;
}

gm_status http_server_run(http_server *s)
{
    struct epoll_event ev[64];
    int n = epoll_wait(s->epfd, ev, 64, 0);
    if (n < 0 && errno != EINTR)
        return gm_fail(GM_ERR_IO, "http: epoll_wait: %s", strerror(errno));
    for (int i = 0; i < n; i++) {
        void *p = ev[i].data.ptr;
        if (p == s) { /* the wake-up: clear it */
            uint64_t v;
            if (read(s->wake_fd, &v, sizeof v) < 0 && errno != EAGAIN)
                return gm_fail(GM_ERR_IO, "http: eventfd read: %s", strerror(errno));
            s->woken = false;
        } else if (p && (ev[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
            req_gone(p);
        }
    }
    if (MHD_run(s->d) != MHD_YES)
        return gm_fail(GM_ERR_IO, "http: MHD_run failed");
    return GM_OK;
}

int64_t http_server_connections(const http_server *s)
{
    return s->n_conns;
}

int64_t http_server_requests_held(const http_server *s)
{
    return s->n_held;
}

int http_route_find(http_req *r, const http_route *routes, int n, const char *served)
{
    char msg[256];
    for (int i = 0; i < n; i++) {
        if (strcmp(r->path, routes[i].path) != 0)
            continue;
        if (strcmp(r->method, routes[i].method) == 0)
            return routes[i].id;
        snprintf(msg, sizeof msg, "%s takes %s, not %.16s.", routes[i].path, routes[i].method, r->method);
        http_req_add_header(r, "Allow", routes[i].method);
        http_req_respond_error(r, 405, "invalid_request_error", "method_not_allowed", msg);
        return -1;
    }
    /* the path is the client's: cut it short, and never between the bytes of a character */
    size_t n_path = jsonw_utf8_valid_prefix(r->path, strnlen(r->path, 100));
    snprintf(msg, sizeof msg, "Unknown path %.*s: this server serves %s.", (int)n_path, r->path, served);
    http_req_respond_error(r, 404, "invalid_request_error", "not_found", msg);
    return -1;
}

/* ---- the core's side of a request ---- */

const char *http_req_method(const http_req *r) { return r->method; }
const char *http_req_path(const http_req *r) { return r->path; }

const char *http_req_header(const http_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *http_req_query(const http_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *http_req_body(const http_req *r, size_t *len)
{
    if (len)
        *len = r->body_len;
    return r->body ? r->body : "";
}

void http_req_set_user(http_req *r, void *user) { r->user = user; }
void *http_req_user(const http_req *r) { return r->user; }

gm_status http_req_add_header(http_req *r, const char *name, const char *value)
{
    if (r->n_headers >= HTTP_MAX_HEADERS)
        return gm_fail(GM_ERR_CAPACITY, "http: at most %d extra headers", HTTP_MAX_HEADERS);
    char *n = strdup(name), *v = strdup(value);
    if (!n || !v) {
        free(n);
        free(v);
        return gm_fail(GM_ERR_NOMEM, "http: out of memory");
    }
    r->hname[r->n_headers] = n;
    r->hval[r->n_headers++] = v;
    return GM_OK;
}

static gm_status check_held(const http_req *r, req_state want)
{
    if (!r->held || r->state != want)
        return gm_fail(GM_ERR_INVALID_ARG, "http: request %s %s is not %s", r->method, r->path,
                       want == REQ_WAITING ? "waiting for an answer" : "streaming");
    return GM_OK;
}

gm_status http_req_respond(http_req *r, int status, const char *content_type, const void *body, size_t len)
{
    gm_status st = check_held(r, REQ_WAITING);
    if (st != GM_OK)
        return st;
    free(r->ctype);
    r->ctype = strdup(content_type ? content_type : "application/octet-stream");
    r->answer = malloc(len ? len : 1);
    if (!r->ctype || !r->answer)
        return gm_fail(GM_ERR_NOMEM, "http: out of memory for a %zu-byte answer", len);
    if (len)
        memcpy(r->answer, body, len);
    r->answer_len = len;
    r->status = status;
    r->state = REQ_READY;
    req_release(r);
    req_resume(r);
    return GM_OK;
}

gm_status http_req_respond_oai_error(http_req *r, const oai_error *e)
{
    jsonw w = {0};
    oai_write_error(&w, e);
    gm_status st = jsonw_ok(&w) ? http_req_respond(r, e->status, "application/json", w.p, w.len)
                                : gm_fail(GM_ERR_NOMEM, "http: out of memory");
    jsonw_free(&w);
    return st;
}

gm_status http_req_respond_error(http_req *r, int status, const char *type, const char *code, const char *message)
{
    oai_error e;
    oai_fail(&e, status, type ? type : "invalid_request_error", NULL, code, "%s", message);
    return http_req_respond_oai_error(r, &e);
}

gm_status http_req_stream_begin(http_req *r, int status, const char *content_type)
{
    gm_status st = check_held(r, REQ_WAITING);
    if (st != GM_OK)
        return st;
    free(r->ctype);
    r->ctype = strdup(content_type ? content_type : "application/octet-stream");
    if (!r->ctype)
        return gm_fail(GM_ERR_NOMEM, "http: out of memory");
    r->status = status;
    r->state = REQ_STREAM;
    req_resume(r);
    return GM_OK;
}

gm_status http_req_stream_write(http_req *r, const void *data, size_t len)
{
    if (!r->held || (r->state != REQ_STREAM && r->state != REQ_QUEUED) || r->s_ended)
        return check_held(r, REQ_STREAM);
    if (r->s_len + len > r->s_cap) {
        if (r->s_off > 0) { /* reuse the consumed front first */
            memmove(r->sbuf, r->sbuf + r->s_off, r->s_len - r->s_off);
            r->s_len -= r->s_off;
            r->s_off = 0;
        }
        if (r->s_len + len > r->s_cap) {
            size_t cap = r->s_cap ? r->s_cap : 4096;
            while (cap < r->s_len + len)
                cap *= 2;
            char *b = realloc(r->sbuf, cap);
            if (!b)
                return gm_fail(GM_ERR_NOMEM, "http: out of memory for a stream backlog of %zu bytes", cap);
            r->sbuf = b;
            r->s_cap = cap;
        }
    }
    memcpy(r->sbuf + r->s_len, data, len);
    r->s_len += len;
    req_resume(r);
    return GM_OK;
}

gm_status http_req_stream_end(http_req *r)
{
    if (!r->held || (r->state != REQ_STREAM && r->state != REQ_QUEUED) || r->s_ended)
        return check_held(r, REQ_STREAM);
    r->s_ended = true;
    req_release(r);
    req_resume(r);
    return GM_OK;
}

size_t http_req_stream_pending(const http_req *r)
{
    return r->s_len - r->s_off;
}
