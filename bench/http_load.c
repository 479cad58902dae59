/* http_load.c - gemma-bench's HTTP driver: libcurl multi + epoll, one thread. */
#define _GNU_SOURCE
#include "bench/http_load.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#include "bench/bench_sse.h"
#include "common/jsonw.h"

#define HL_EPOLL_EVENTS 1024
#define HL_MAX_BODY 65536 /* bytes kept of an answer that is not a stream (an error body) */

typedef enum slot_mode { SLOT_UNKNOWN, SLOT_SSE, SLOT_BODY } slot_mode;

/* One request in flight, and the easy handle it keeps for the next one. */
typedef struct hl_slot {
    http_load *h;
    CURL *easy;
    int64_t idx;       /* request index in the run; -1 when free */
    uint32_t gen;      /* the run's number */
    int64_t self;      /* index in h->slots */
    struct hl_slot *next_free;
    jsonw body;        /* the request's JSON */
    bench_sse sse;
    char *resp;        /* [resp_len] the start of a body that is not a stream (owned) */
    size_t resp_len, resp_cap;
    slot_mode mode;
    long status;
    bool done;         /* data: [DONE] came */
    bool failed;       /* error / msg say why */
    int32_t error;
    char msg[300];
    int64_t prompt_tokens, completion_tokens; /* from the usage chunk, -1 unknown */
    char errbuf[CURL_ERROR_SIZE];
} hl_slot;

struct http_load {
    http_load_opts o;
    char *base;            /* the URL without a trailing "/" or "/v1" (owned) */
    char *url;             /* base + the endpoint's path (owned) */
    char model[256];
    CURLM *multi;
    int epfd;
    struct curl_slist *headers;
    hl_slot **slots;       /* [n_slots] (owned) */
    int64_t n_slots, cap_slots;
    hl_slot *free_slots;
    bool timer_on;
    double timer_due;      /* ms, monotonic */
    double now;            /* ms: when the epoll wait that brought the current bytes returned */
    bench_run *run;
    int64_t connects;
    char *words;           /* scratch for a synthetic chat prompt (owned) */
    size_t words_cap;
    char err[512];
    struct epoll_event ev[HL_EPOLL_EVENTS];
};

/* ---- codes ---- */

const char *http_load_code_name(int code)
{
    switch (code) {
    case 0: return "OK";
    case HTTP_LOAD_ERR_400: return "HTTP_400";
    case HTTP_LOAD_ERR_401: return "HTTP_401";
    case HTTP_LOAD_ERR_403: return "HTTP_403";
    case HTTP_LOAD_ERR_404: return "HTTP_404";
    case HTTP_LOAD_ERR_408: return "HTTP_408";
    case HTTP_LOAD_ERR_413: return "HTTP_413";
    case HTTP_LOAD_ERR_422: return "HTTP_422";
    case HTTP_LOAD_ERR_429: return "HTTP_429";
    case HTTP_LOAD_ERR_4XX: return "HTTP_4XX";
    case HTTP_LOAD_ERR_500: return "HTTP_500";
    case HTTP_LOAD_ERR_502: return "HTTP_502";
    case HTTP_LOAD_ERR_503: return "HTTP_503";
    case HTTP_LOAD_ERR_504: return "HTTP_504";
    case HTTP_LOAD_ERR_5XX: return "HTTP_5XX";
    case HTTP_LOAD_ERR_STATUS: return "HTTP_STATUS";
    case HTTP_LOAD_ERR_STREAM_ERROR: return "STREAM_ERROR";
    case HTTP_LOAD_ERR_INCOMPLETE: return "INCOMPLETE_STREAM";
    case HTTP_LOAD_ERR_BAD_STREAM: return "BAD_STREAM";
    case HTTP_LOAD_ERR_CONNECT: return "CONNECT";
    case HTTP_LOAD_ERR_TRANSPORT: return "TRANSPORT";
    case HTTP_LOAD_ERR_TIMEOUT: return "TIMEOUT";
    case HTTP_LOAD_ERR_NOMEM: return "NOMEM";
    }
    return "UNKNOWN";
}

int32_t http_load_status_code(long status)
{
    static const struct {
        long status;
        int32_t code;
    } known[] = {{400, HTTP_LOAD_ERR_400}, {401, HTTP_LOAD_ERR_401}, {403, HTTP_LOAD_ERR_403},
                 {404, HTTP_LOAD_ERR_404}, {408, HTTP_LOAD_ERR_408}, {413, HTTP_LOAD_ERR_413},
                 {422, HTTP_LOAD_ERR_422}, {429, HTTP_LOAD_ERR_429}, {500, HTTP_LOAD_ERR_500},
                 {502, HTTP_LOAD_ERR_502}, {503, HTTP_LOAD_ERR_503}, {504, HTTP_LOAD_ERR_504}};
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (known[i].status == status)
            return known[i].code;
    if (status >= 400 && status < 500)
        return HTTP_LOAD_ERR_4XX;
    if (status >= 500 && status < 600)
        return HTTP_LOAD_ERR_5XX;
    return HTTP_LOAD_ERR_STATUS;
}

/* ---- a slot's answer ---- */

static void slot_fail(hl_slot *s, int32_t code, const char *msg)
{
    if (s->failed)
        return;
    s->failed = true;
    s->error = code;
    snprintf(s->msg, sizeof(s->msg), "%s", msg);
}

/* One server-sent event of the stream. */
static bool on_event(void *user, const char *data, size_t len, bool error_event)
{
    hl_slot *s = user;
    bench_chunk c;
    bench_sse_read_chunk(data, len, error_event, &c);
    if (c.done) {
        s->done = true;
        return true;
    }
    if (c.error || c.malformed) {
        slot_fail(s, c.error ? HTTP_LOAD_ERR_STREAM_ERROR : HTTP_LOAD_ERR_BAD_STREAM, c.message);
        return false;
    }
    if (c.has_usage) {
        s->prompt_tokens = c.prompt_tokens;
        s->completion_tokens = c.completion_tokens;
    }
    if (c.tokens && bench_run_tokens(s->h->run, s->idx, 1, s->h->now) != GM_OK) {
        slot_fail(s, HTTP_LOAD_ERR_NOMEM, gm_last_error());
        return false;
    }
    return true;
}

/* libcurl's write callback: the answer's bytes as they come. */
static size_t on_write(char *p, size_t size, size_t nmemb, void *user)
{
    hl_slot *s = user;
    size_t n = size * nmemb;
    if (s->mode == SLOT_UNKNOWN) {
        char *ct = NULL;
        curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &s->status);
        curl_easy_getinfo(s->easy, CURLINFO_CONTENT_TYPE, &ct);
        s->mode = s->status == 200 && ct && !strncasecmp(ct, "text/event-stream", 17) ? SLOT_SSE : SLOT_BODY;
    }
    if (s->failed || s->done)
        return n; /* read it to the end: the connection stays usable */
    if (s->mode == SLOT_SSE) {
        gm_status st = bench_sse_feed(&s->sse, p, n, on_event, s);
        if (st && st != GM_ERR_CANCELLED)
            slot_fail(s, st == GM_ERR_NOMEM ? HTTP_LOAD_ERR_NOMEM : HTTP_LOAD_ERR_BAD_STREAM, gm_last_error());
        return n;
    }
    size_t keep = s->resp_len + n > HL_MAX_BODY ? HL_MAX_BODY - s->resp_len : n;
    if (keep && s->resp_len + keep + 1 > s->resp_cap) {
        char *b = realloc(s->resp, HL_MAX_BODY + 1);
        if (!b)
            return n; /* the message is lost, the status still counts */
        s->resp = b;
        s->resp_cap = HL_MAX_BODY + 1;
    }
    if (keep) {
        memcpy(s->resp + s->resp_len, p, keep);
        s->resp_len += keep;
        s->resp[s->resp_len] = 0;
    }
    return n;
}

/* The code and message of a transfer that ended (libcurl's result res). */
static void slot_verdict(hl_slot *s, CURLcode res)
{
    if (s->mode == SLOT_SSE && !s->failed && !s->done) {
        gm_status st = bench_sse_finish(&s->sse, on_event, s);
        if (st && st != GM_ERR_CANCELLED)
            slot_fail(s, HTTP_LOAD_ERR_BAD_STREAM, gm_last_error());
    }
    if (s->failed)
        return;
    char msg[300];
    if (res != CURLE_OK) {
        bool connect = res == CURLE_COULDNT_CONNECT || res == CURLE_COULDNT_RESOLVE_HOST ||
                       (res == CURLE_OPERATION_TIMEDOUT && s->mode == SLOT_UNKNOWN);
        slot_fail(s, connect ? HTTP_LOAD_ERR_CONNECT : HTTP_LOAD_ERR_TRANSPORT,
                  s->errbuf[0] ? s->errbuf : curl_easy_strerror(res));
        return;
    }
    if (s->mode == SLOT_UNKNOWN) /* no body at all */
        curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &s->status);
    if (s->status >= 300 || (s->mode != SLOT_SSE && s->status < 200)) {
        char text[256] = "";
        if (s->resp_len)
            bench_sse_error_message(s->resp, s->resp_len, text, sizeof(text));
        snprintf(msg, sizeof(msg), "HTTP %ld: %s", s->status, text[0] ? text : "(no body)");
        slot_fail(s, http_load_status_code(s->status), msg);
    } else if (s->mode != SLOT_SSE) {
        char *ct = NULL;
        curl_easy_getinfo(s->easy, CURLINFO_CONTENT_TYPE, &ct);
        snprintf(msg, sizeof(msg), "HTTP %ld answered '%s', not a text/event-stream", s->status,
                 ct ? ct : "no content type");
        slot_fail(s, s->status == 200 ? HTTP_LOAD_ERR_BAD_STREAM : HTTP_LOAD_ERR_STATUS, msg);
    } else if (!s->done) {
        slot_fail(s, HTTP_LOAD_ERR_INCOMPLETE, "the stream ended without data: [DONE]");
    }
}

/* ---- slots ---- */

static hl_slot *slot_new(http_load *h)
{
    if (h->n_slots == h->cap_slots) {
        int64_t cap = h->cap_slots ? h->cap_slots * 2 : 64;
        hl_slot **v = realloc(h->slots, (size_t)cap * sizeof(*v));
        if (!v)
            return NULL;
        h->slots = v;
        h->cap_slots = cap;
    }
    hl_slot *s = calloc(1, sizeof(*s));
    if (!s || !(s->easy = curl_easy_init())) {
        free(s);
        return NULL;
    }
    s->h = h;
    s->idx = -1;
    s->self = h->n_slots;
    CURL *e = s->easy;
    curl_easy_setopt(e, CURLOPT_URL, h->url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h->headers);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(e, CURLOPT_PRIVATE, s);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, s->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)h->o.connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "gemma-bench");
    h->slots[h->n_slots++] = s;
    /* keep a connection for every stream that may run at once */
    curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, (long)h->n_slots);
    return s;
}

static hl_slot *slot_get(http_load *h)
{
    hl_slot *s = h->free_slots;
    if (s)
        h->free_slots = s->next_free;
    else if (!(s = slot_new(h)))
        return NULL;
    s->next_free = NULL;
    s->mode = SLOT_UNKNOWN;
    s->status = 0;
    s->done = s->failed = false;
    s->error = 0;
    s->msg[0] = s->errbuf[0] = 0;
    s->resp_len = 0;
    s->prompt_tokens = s->completion_tokens = -1;
    bench_sse_reset(&s->sse);
    return s;
}

/* Take s's transfer out of the multi handle (aborting it if it runs), counting
 * the connections it opened. */
static void slot_detach(http_load *h, hl_slot *s)
{
    long nc = 0;
    if (curl_easy_getinfo(s->easy, CURLINFO_NUM_CONNECTS, &nc) == CURLE_OK)
        h->connects += nc;
    curl_multi_remove_handle(h->multi, s->easy);
}

static void slot_put(http_load *h, hl_slot *s)
{
    s->idx = -1;
    s->next_free = h->free_slots;
    h->free_slots = s;
}

static void slot_destroy(hl_slot *s)
{
    curl_easy_cleanup(s->easy);
    jsonw_free(&s->body);
    bench_sse_free(&s->sse);
    free(s->resp);
    free(s);
}

/* Stop every transfer in flight (their connections close). */
static void slots_drop(http_load *h)
{
    for (int64_t k = 0; k < h->n_slots; k++)
        if (h->slots[k]->idx >= 0) {
            slot_detach(h, h->slots[k]);
            slot_put(h, h->slots[k]);
        }
}

/* ---- requests ---- */

/* A synthetic user message: one common word per prompt id after BOS. */
static const char *chat_words(http_load *h, const int32_t *ids, int32_t n)
{
    static const char *const vocab[] = {"the", "of",  "and",  "to",   "in",   "is",   "was",  "for",
                                        "on",  "as",  "with", "by",   "at",   "from", "his",  "an",
                                        "are", "not", "this", "but",  "had",  "they", "she",  "which",
                                        "or",  "we",  "one",  "all",  "been", "new",  "more", "time"};
    size_t need = (size_t)(n > 1 ? n - 1 : 1) * 7 + 1;
    if (need > h->words_cap) {
        char *w = realloc(h->words, need);
        if (!w)
            return NULL;
        h->words = w;
        h->words_cap = need;
    }
    size_t k = 0;
    for (int32_t i = 1; i < n; i++) {
        const char *v = vocab[ids[i] % 32];
        if (k)
            h->words[k++] = ' ';
        size_t l = strlen(v);
        memcpy(h->words + k, v, l);
        k += l;
    }
    if (!k) {
        memcpy(h->words, "hello", 5);
        k = 5;
    }
    h->words[k] = 0;
    return h->words;
}

/* The JSON body of request i into w. False when out of memory. */
static bool build_body(http_load *h, bench_run *r, int64_t i, jsonw *w)
{
    const http_load_opts *o = &h->o;
    jsonw_reset(w);
    jsonw_obj_begin(w);
    if (h->model[0]) {
        jsonw_key(w, "model");
        jsonw_str(w, h->model);
    }
    const char *text = o->n_prompts ? o->prompts[i % o->n_prompts] : NULL;
    if (!text)
        bench_make_prompt(r->seed, i, o->vocab, r->isl[i], r->prompt_buf);
    if (o->chat) {
        if (!text && !(text = chat_words(h, r->prompt_buf, r->isl[i])))
            return false;
        jsonw_key(w, "messages");
        jsonw_arr_begin(w);
        jsonw_obj_begin(w);
        jsonw_key(w, "role");
        jsonw_str(w, "user");
        jsonw_key(w, "content");
        jsonw_str(w, text);
        jsonw_obj_end(w);
        jsonw_arr_end(w);
    } else {
        jsonw_key(w, "prompt");
        if (text) {
            jsonw_str(w, text);
        } else {
            jsonw_arr_begin(w);
            for (int32_t k = 0; k < r->isl[i]; k++)
                jsonw_int(w, r->prompt_buf[k]);
            jsonw_arr_end(w);
        }
    }
    jsonw_key(w, "max_tokens");
    jsonw_int(w, r->osl[i]);
    jsonw_key(w, "temperature");
    jsonw_int(w, 0);
    jsonw_key(w, "seed");
    jsonw_uint(w, r->seed + (uint64_t)i);
    if (o->ignore_eos) {
        jsonw_key(w, "ignore_eos");
        jsonw_bool(w, true);
    }
    jsonw_key(w, "stream");
    jsonw_bool(w, true);
    jsonw_key(w, "stream_options");
    jsonw_obj_begin(w);
    jsonw_key(w, "include_usage");
    jsonw_bool(w, true);
    jsonw_obj_end(w);
    jsonw_obj_end(w);
    return jsonw_ok(w);
}

static int32_t hl_submit(void *ctx, bench_run *r, int64_t i)
{
    http_load *h = ctx;
    h->run = r;
    hl_slot *s = slot_get(h);
    if (!s || !build_body(h, r, i, &s->body)) {
        snprintf(h->err, sizeof(h->err), "no memory for request %lld", (long long)i);
        if (s)
            slot_put(h, s);
        r->reqs[i].t_submit = bench_now_ms();
        return HTTP_LOAD_ERR_NOMEM;
    }
    s->idx = i;
    s->gen = r->gen;
    r->ids[i] = (uint64_t)s->self;
    curl_easy_setopt(s->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)s->body.len);
    curl_easy_setopt(s->easy, CURLOPT_POSTFIELDS, s->body.p);
    r->reqs[i].t_submit = bench_now_ms();
    CURLMcode mc = curl_multi_add_handle(h->multi, s->easy);
    if (mc != CURLM_OK) {
        snprintf(h->err, sizeof(h->err), "curl_multi_add_handle: %s", curl_multi_strerror(mc));
        slot_put(h, s);
        return HTTP_LOAD_ERR_TRANSPORT;
    }
    return 0;
}

/* Finish every transfer libcurl reports done. */
static void collect(http_load *h)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(h->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *e = m->easy_handle;
        CURLcode res = m->data.result;
        hl_slot *s = NULL;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&s);
        slot_verdict(s, res);
        slot_detach(h, s);
        if (h->run && s->gen == h->run->gen && s->idx >= 0 && s->idx < h->run->n)
            bench_run_finish(h->run, s->idx, s->failed ? s->error : 0, s->msg,
                             s->prompt_tokens > 0 && s->prompt_tokens <= INT32_MAX ? (int32_t)s->prompt_tokens : 0,
                             s->failed ? -1 : s->completion_tokens, h->now);
        slot_put(h, s);
    }
}

static void run_timer(http_load *h)
{
    int running;
    h->timer_on = false; /* libcurl sets the next one from inside the call */
    curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
}

static bool hl_pump(void *ctx, bench_run *r, int timeout_ms)
{
    http_load *h = ctx;
    h->run = r;
    h->now = bench_now_ms();
    if (h->timer_on && h->timer_due <= h->now) {
        run_timer(h);
        collect(h);
    }
    int wait = timeout_ms;
    if (h->timer_on) {
        double d = h->timer_due - bench_now_ms();
        int w = d <= 0 ? 0 : (int)ceil(d);
        if (w < wait)
            wait = w;
    }
    int n = epoll_wait(h->epfd, h->ev, HL_EPOLL_EVENTS, wait);
    if (n < 0) {
        if (errno == EINTR)
            return true;
        fprintf(stderr, "gemma-bench: epoll_wait: %s\n", strerror(errno));
        slots_drop(h);
        return false;
    }
    h->now = bench_now_ms();
    int running;
    for (int k = 0; k < n; k++) {
        uint32_t e = h->ev[k].events;
        int fl = (e & EPOLLIN ? CURL_CSELECT_IN : 0) | (e & EPOLLOUT ? CURL_CSELECT_OUT : 0) |
                 (e & (EPOLLERR | EPOLLHUP) ? CURL_CSELECT_ERR : 0);
        curl_multi_socket_action(h->multi, h->ev[k].data.fd, fl, &running);
    }
    if (h->timer_on && h->timer_due <= h->now)
        run_timer(h);
    collect(h);
    return true;
}

static void hl_cancel(void *ctx, bench_run *r, int64_t i)
{
    http_load *h = ctx;
    if (r->ids[i] >= (uint64_t)h->n_slots)
        return;
    hl_slot *s = h->slots[r->ids[i]];
    if (s->idx != i || s->gen != r->gen)
        return;
    slot_detach(h, s); /* aborts: the server sees the connection close */
    slot_put(h, s);
}

static const char *hl_last_error(void *ctx) { return ((http_load *)ctx)->err; }

void http_load_driver(http_load *h, bench_driver *d)
{
    *d = (bench_driver){.ctx = h, .submit = hl_submit, .pump = hl_pump, .cancel = hl_cancel,
                        .last_error = hl_last_error, .code_name = http_load_code_name,
                        .code_transport = HTTP_LOAD_ERR_TRANSPORT, .code_timeout = HTTP_LOAD_ERR_TIMEOUT};
}

/* ---- libcurl's socket and timer callbacks ---- */

static int on_socket(CURL *e, curl_socket_t fd, int what, void *user, void *known)
{
    http_load *h = user;
    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(h->epfd, EPOLL_CTL_DEL, fd, NULL); /* may be closed already: fine */
        return 0;
    }
    struct epoll_event ev = {0};
    ev.data.fd = fd;
    ev.events = (what & CURL_POLL_IN ? EPOLLIN : 0) | (what & CURL_POLL_OUT ? EPOLLOUT : 0);
    if (known) {
        if (epoll_ctl(h->epfd, EPOLL_CTL_MOD, fd, &ev) == 0)
            return 0;
    }
    if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, fd, &ev) != 0 &&
        (errno != EEXIST || epoll_ctl(h->epfd, EPOLL_CTL_MOD, fd, &ev) != 0)) {
        fprintf(stderr, "gemma-bench: epoll_ctl(%d): %s\n", (int)fd, strerror(errno));
        return -1;
    }
    curl_multi_assign(h->multi, fd, h);
    return 0;
}

static int on_timer(CURLM *m, long timeout_ms, void *user)
{
    http_load *h = user;
    h->timer_on = timeout_ms >= 0;
    h->timer_due = bench_now_ms() + (double)(timeout_ms > 0 ? timeout_ms : 0);
    return 0;
}

/* ---- set-up ---- */

/* Let this process open a connection per stream (the soft limit is often 1024). */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static char *join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);
    if (s) {
        memcpy(s, a, la);
        memcpy(s + la, b, lb + 1);
    }
    return s;
}

static gm_status set_headers(http_load *h)
{
    const char *fixed[] = {"Content-Type: application/json", "Accept: text/event-stream",
                           "Expect:" /* no 100-continue round trip for larger prompts */};
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        struct curl_slist *l = curl_slist_append(h->headers, fixed[i]);
        if (!l)
            return gm_fail(GM_ERR_NOMEM, "http: no memory for the request headers");
        h->headers = l;
    }
    if (h->o.api_key && h->o.api_key[0]) {
        char *a = join("Authorization: Bearer ", h->o.api_key);
        struct curl_slist *l = a ? curl_slist_append(h->headers, a) : NULL;
        free(a);
        if (!l)
            return gm_fail(GM_ERR_NOMEM, "http: no memory for the request headers");
        h->headers = l;
    }
    return GM_OK;
}

http_load *http_load_new(const http_load_opts *o)
{
    if (!o->url || strncasecmp(o->url, "http://", 7) != 0 || !o->url[7]) {
        gm_fail(GM_ERR_INVALID_ARG, "--http '%s': expected http://HOST:PORT", o->url ? o->url : "");
        return NULL;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        gm_fail(GM_ERR_INTERNAL, "http: libcurl did not initialise");
        return NULL;
    }
    http_load *h = calloc(1, sizeof(*h));
    if (!h) {
        curl_global_cleanup();
        gm_fail(GM_ERR_NOMEM, "http: no memory");
        return NULL;
    }
    h->o = *o;
    h->epfd = -1;
    if (o->model)
        snprintf(h->model, sizeof(h->model), "%s", o->model);
    if (!(h->base = join(o->url, "")))
        goto nomem;
    size_t l = strlen(h->base);
    while (l > 7 && h->base[l - 1] == '/')
        h->base[--l] = 0;
    if (l > 10 && !strcmp(h->base + l - 3, "/v1"))
        h->base[l - 3] = 0;
    if (!(h->url = join(h->base, o->chat ? "/v1/chat/completions" : "/v1/completions")))
        goto nomem;
    if (set_headers(h))
        goto fail;
    h->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (h->epfd < 0) {
        gm_fail(GM_ERR_IO, "http: epoll_create1: %s", strerror(errno));
        goto fail;
    }
    if (!(h->multi = curl_multi_init()))
        goto nomem;
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    raise_fd_limit();
    return h;
nomem:
    gm_fail(GM_ERR_NOMEM, "http: no memory");
fail:
    http_load_destroy(&h);
    return NULL;
}

void http_load_destroy(http_load **hp)
{
    http_load *h = hp ? *hp : NULL;
    if (!h)
        return;
    if (h->multi)
        slots_drop(h);
    for (int64_t k = 0; k < h->n_slots; k++)
        slot_destroy(h->slots[k]);
    free(h->slots);
    if (h->multi)
        curl_multi_cleanup(h->multi);
    if (h->epfd >= 0)
        close(h->epfd);
    curl_slist_free_all(h->headers);
    free(h->base);
    free(h->url);
    free(h->words);
    free(h);
    curl_global_cleanup();
    *hp = NULL;
}

const char *http_load_model(const http_load *h) { return h->model; }

int64_t http_load_connects(const http_load *h) { return h->connects; }

/* ---- the start-up check (blocking) ---- */

typedef struct get_buf {
    char p[HL_MAX_BODY + 1];
    size_t len;
} get_buf;

static size_t on_get(char *p, size_t size, size_t nmemb, void *user)
{
    get_buf *b = user;
    size_t n = size * nmemb, keep = b->len + n > HL_MAX_BODY ? HL_MAX_BODY - b->len : n;
    memcpy(b->p + b->len, p, keep);
    b->len += keep;
    b->p[b->len] = 0;
    return n;
}

/* GET base + path: the status into *status, the body's start into b. */
static gm_status get(http_load *h, const char *path, long *status, get_buf *b)
{
    char *url = join(h->base, path);
    CURL *e = curl_easy_init();
    char errbuf[CURL_ERROR_SIZE] = "";
    gm_status st = GM_OK;
    if (!url || !e) {
        st = gm_fail(GM_ERR_NOMEM, "http: no memory");
        goto done;
    }
    b->len = 0;
    b->p[0] = 0;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h->headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_get);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)h->o.connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)h->o.connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "gemma-bench");
    CURLcode res = curl_easy_perform(e);
    if (res != CURLE_OK) {
        st = gm_fail(GM_ERR_IO, "cannot reach %s: %s", url, errbuf[0] ? errbuf : curl_easy_strerror(res));
        goto done;
    }
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, status);
done:
    curl_easy_cleanup(e);
    free(url);
    return st;
}

gm_status http_load_check(http_load *h)
{
    static get_buf b; /* large; one start-up check at a time */
    long status = 0;
    gm_status st = get(h, "/health", &status, &b);
    if (st)
        return st;
    if (status != 200 && status != 404) {
        char text[256] = "";
        bench_sse_error_message(b.p, b.len, text, sizeof(text));
        return gm_fail(GM_ERR_IO, "%s/health answered HTTP %ld (not serving): %s", h->base, status, text);
    }
    if (h->model[0])
        return GM_OK;
    if ((st = get(h, "/v1/models", &status, &b)))
        return st;
    if (status == 401 || status == 403)
        return gm_fail(GM_ERR_IO, "%s/v1/models answered HTTP %ld: a wrong or missing --api-key?", h->base, status);
    if (status != 200)
        return GM_OK; /* no model list: requests go without "model" */
    cJSON *j = cJSON_ParseWithLength(b.p, b.len);
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "data");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(d, 0), "id");
    if (cJSON_IsString(id) && id->valuestring)
        snprintf(h->model, sizeof(h->model), "%s", id->valuestring);
    cJSON_Delete(j);
    return GM_OK;
}
