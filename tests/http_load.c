/* http_load.c - a small load driver for gemmad's OpenAI-compatible HTTP API (one thread, epoll).
 *
 *   http_load [--host 127.0.0.1] --port N [--conns 1000] [--requests 10000] [--max-tokens 128]
 *             [--prompt-ids 128] [--chat] [--warmup N] [--api-key KEY]
 *
 * Keeps --conns keep-alive connections busy with streaming POST /v1/completions (or chat)
 * requests, each asking for --max-tokens tokens with ignore_eos and include_usage, until
 * --requests have finished (the first --warmup are not timed). It decodes the chunked framing,
 * counts server-sent events and reads completion_tokens from each final usage event, and prints
 * one line:
 *
 *   requests N errors E tokens T events V seconds S tok/s R events/s Q
 *
 * Exit status 1 when any request failed (a status other than 200, a missing usage or [DONE]).
 * No timing assertions anywhere: the figure is for bench/RESULTS.md and the lead. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"

typedef enum { ST_HEAD, ST_SIZE, ST_DATA, ST_DATA_CRLF, ST_TRAILER } conn_state;

typedef struct conn {
    int fd;
    conn_state st;
    char *in;            /* unparsed bytes [0, in_len) */
    size_t in_len, in_cap;
    size_t chunk_left;
    char *sse;           /* event bytes not yet split into events */
    size_t sse_len, sse_cap;
    int status;
    long tokens;         /* completion_tokens of this request's usage event */
    long events;
    bool done_seen;
    bool busy;
} conn;

static void grow(char **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return;
    size_t c = *cap ? *cap : 4096;
    while (c < need)
        c *= 2;
    char *n = realloc(*p, c);
    if (!n) {
        perror("realloc");
        exit(2);
    }
    *p = n;
    *cap = c;
}

static char g_body[1 << 16];
static size_t g_body_len;
static char g_req[1 << 17];
static size_t g_req_len;

static void build_request(bool chat, int max_tokens, int prompt_ids, const char *key)
{
    int n = 0;
    if (chat) {
        n = snprintf(g_body, sizeof g_body,
                     "{\"messages\":[{\"role\":\"user\",\"content\":\"Tell me a long story.\"}],\"max_tokens\":%d,"
                     "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"ignore_eos\":true,"
                     "\"temperature\":0}",
                     max_tokens);
    } else {
        n = snprintf(g_body, sizeof g_body, "{\"prompt\":[");
        for (int i = 0; i < prompt_ids; i++)
            n += snprintf(g_body + n, sizeof g_body - (size_t)n, "%s%d", i ? "," : "", 10 + i % 1000);
        n += snprintf(g_body + n, sizeof g_body - (size_t)n,
                      "],\"max_tokens\":%d,\"stream\":true,\"stream_options\":{\"include_usage\":true},"
                      "\"ignore_eos\":true,\"temperature\":0}",
                      max_tokens);
    }
    g_body_len = (size_t)n;
    char auth[512] = "";
    if (key)
        snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", key);
    g_req_len = (size_t)snprintf(g_req, sizeof g_req,
                                 "POST %s HTTP/1.1\r\nHost: gemmad\r\nContent-Type: application/json\r\n%s"
                                 "Content-Length: %zu\r\n\r\n%s",
                                 chat ? "/v1/chat/completions" : "/v1/completions", auth, g_body_len, g_body);
}

static int dial(const char *host, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

static bool send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EAGAIN) {
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL);
            continue;
        }
        if (k <= 0)
            return false;
        p += k;
        n -= (size_t)k;
    }
    return true;
}

static void start(conn *c)
{
    c->st = ST_HEAD;
    c->in_len = c->sse_len = 0;
    c->status = 0;
    c->tokens = -1;
    c->events = 0;
    c->done_seen = false;
    c->busy = true;
}

/* Split complete events ("...\n\n") out of c->sse. */
static void take_events(conn *c)
{
    size_t off = 0;
    for (;;) {
        char *e = memmem(c->sse + off, c->sse_len - off, "\n\n", 2);
        if (!e)
            break;
        char *ev = c->sse + off;
        size_t len = (size_t)(e - ev);
        c->events++;
        if (len >= 12 && !memcmp(ev, "data: [DONE]", 12))
            c->done_seen = true;
        const char *u = memmem(ev, len, "\"completion_tokens\":", 20);
        if (u && memmem(ev, len, "\"choices\":[]", 12))
            c->tokens = strtol(u + 20, NULL, 10);
        off = (size_t)(e - c->sse) + 2;
    }
    memmove(c->sse, c->sse + off, c->sse_len - off);
    c->sse_len -= off;
}

/* Parse what arrived; true when the response is complete. */
static bool parse(conn *c)
{
    for (;;) {
        char *p = c->in;
        size_t n = c->in_len;
        if (c->st == ST_HEAD) {
            char *e = memmem(p, n, "\r\n\r\n", 4);
            if (!e)
                return false;
            c->status = n > 12 ? atoi(p + 9) : 0;
            size_t used = (size_t)(e - p) + 4;
            bool chunked = memmem(p, used, "chunked", 7) != NULL;
            if (!chunked) { /* an error answer with Content-Length: count it */
                static int shown;
                if (shown++ < 2)
                    fprintf(stderr, "http_load: unexpected answer:\n%.*s\n", (int)(n < 600 ? n : 600), p);
                c->status = c->status == 200 ? 599 : c->status;
                c->in_len = 0;
                return true;
            }
            memmove(c->in, c->in + used, n - used);
            c->in_len -= used;
            c->st = ST_SIZE;
        } else if (c->st == ST_SIZE || c->st == ST_DATA_CRLF || c->st == ST_TRAILER) {
            char *e = memmem(p, n, "\r\n", 2);
            if (!e)
                return false;
            size_t used = (size_t)(e - p) + 2;
            conn_state was = c->st;
            if (was == ST_SIZE) {
                c->chunk_left = strtoul(p, NULL, 16);
                c->st = c->chunk_left ? ST_DATA : ST_TRAILER;
            } else if (was == ST_DATA_CRLF) {
                c->st = ST_SIZE;
            }
            memmove(c->in, c->in + used, n - used);
            c->in_len -= used;
            if (was == ST_TRAILER)
                return true;
        } else { /* ST_DATA */
            if (n == 0)
                return false;
            size_t k = n < c->chunk_left ? n : c->chunk_left;
            grow(&c->sse, &c->sse_cap, c->sse_len + k);
            memcpy(c->sse + c->sse_len, p, k);
            c->sse_len += k;
            c->chunk_left -= k;
            memmove(c->in, c->in + k, n - k);
            c->in_len -= k;
            take_events(c);
            if (c->chunk_left == 0)
                c->st = ST_DATA_CRLF;
        }
    }
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *key = NULL;
    int port = 0, nconn = 1000, max_tokens = 128, prompt_ids = 128;
    long total = 10000, warmup = 1000;
    bool chat = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--chat")) {
            chat = true;
            continue;
        }
        if (!v) {
            fprintf(stderr, "http_load: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--host"))
            host = v;
        else if (!strcmp(a, "--port"))
            port = atoi(v);
        else if (!strcmp(a, "--conns"))
            nconn = atoi(v);
        else if (!strcmp(a, "--requests"))
            total = atol(v);
        else if (!strcmp(a, "--warmup"))
            warmup = atol(v);
        else if (!strcmp(a, "--max-tokens"))
            max_tokens = atoi(v);
        else if (!strcmp(a, "--prompt-ids"))
            prompt_ids = atoi(v);
        else if (!strcmp(a, "--api-key"))
            key = v;
        else {
            fprintf(stderr, "http_load: unknown option %s\n", a);
            return 2;
        }
    }
    if (port <= 0 || nconn <= 0 || total <= 0 || prompt_ids < 1 || prompt_ids > 4000) {
        fprintf(stderr, "usage: http_load --port N [--conns C] [--requests R] [--max-tokens M] [--prompt-ids P]\n");
        return 2;
    }
    build_request(chat, max_tokens, prompt_ids, key);
    int ep = epoll_create1(0);
    conn *cs = calloc((size_t)nconn, sizeof(conn));
    long started = 0, finished = 0, errors = 0, tokens = 0, events = 0;
    double t0 = 0;
    for (int i = 0; i < nconn && started < total; i++) {
        cs[i].fd = dial(host, port);
        if (cs[i].fd < 0) {
            perror("connect");
            return 2;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
        start(&cs[i]);
        started++;
    }
    /* the sockets connect in the background; the first send waits for it */
    for (int i = 0; i < nconn && cs[i].busy; i++)
        if (!send_all(cs[i].fd, g_req, g_req_len)) {
            perror("send");
            return 2;
        }
    if (warmup == 0)
        t0 = gm_now_s();
    struct epoll_event evs[256];
    char buf[65536];
    while (finished < total) {
        int n = epoll_wait(ep, evs, 256, 30000);
        if (n == 0) {
            fprintf(stderr, "http_load: no progress for 30 s (%ld of %ld finished)\n", finished, total);
            return 1;
        }
        for (int k = 0; k < n; k++) {
            conn *c = evs[k].data.ptr;
            for (;;) {
                ssize_t r = recv(c->fd, buf, sizeof buf, 0);
                if (r < 0 && errno == EAGAIN)
                    break;
                if (r <= 0) {
                    fprintf(stderr, "http_load: connection closed by gemmad (%s)\n", r < 0 ? strerror(errno) : "EOF");
                    return 1;
                }
                grow(&c->in, &c->in_cap, c->in_len + (size_t)r);
                memcpy(c->in + c->in_len, buf, (size_t)r);
                c->in_len += (size_t)r;
                if (!c->busy || !parse(c))
                    continue;
                finished++;
                bool ok = c->status == 200 && c->done_seen && c->tokens >= 0;
                if (!ok && errors++ < 5)
                    fprintf(stderr, "http_load: request failed: status %d, [DONE] %s, usage %ld\n", c->status,
                            c->done_seen ? "seen" : "missing", c->tokens);
                if (finished > warmup) {
                    tokens += c->tokens > 0 ? c->tokens : 0;
                    events += c->events;
                }
                if (finished == warmup)
                    t0 = gm_now_s();
                c->busy = false;
                if (started < total) {
                    start(c);
                    started++;
                    if (!send_all(c->fd, g_req, g_req_len)) {
                        perror("send");
                        return 1;
                    }
                }
            }
        }
    }
    double dt = gm_now_s() - t0;
    long timed = total - (warmup < total ? warmup : 0);
    printf("requests %ld errors %ld tokens %ld events %ld seconds %.3f tok/s %.0f events/s %.0f\n", timed, errors,
           tokens, events, dt, tokens / dt, events / dt);
    for (int i = 0; i < nconn; i++) {
        if (cs[i].fd > 0)
            close(cs[i].fd);
        free(cs[i].in);
        free(cs[i].sse);
    }
    free(cs);
    close(ep);
    return errors ? 1 : 0;
}
