/* bench_sse.c - server-sent events and OpenAI stream chunks, read for gemma-bench. */
#define _GNU_SOURCE /* memmem */
#include "bench/bench_sse.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- events ---- */

/* Make room for need bytes plus a NUL in *buf. */
static gm_status grow(char **buf, size_t *cap, size_t need)
{
    if (need + 1 <= *cap)
        return GM_OK;
    size_t c = *cap ? *cap : 256;
    while (c < need + 1)
        c *= 2;
    char *p = realloc(*buf, c);
    if (!p)
        return gm_fail(GM_ERR_NOMEM, "sse: no memory for a %zu-byte event", need);
    *buf = p;
    *cap = c;
    return GM_OK;
}

/* One complete line (without its "\n"). */
static gm_status on_line(bench_sse *s, const char *l, size_t n, bench_sse_fn fn, void *user)
{
    if (n && l[n - 1] == '\r')
        n--;
    if (n == 0) { /* blank line: the event is complete */
        bool go = true;
        if (s->has_data)
            go = fn(user, s->data, s->data_len, s->error_event);
        s->data_len = 0;
        s->has_data = false;
        s->error_event = false;
        return go ? GM_OK : GM_ERR_CANCELLED;
    }
    if (l[0] == ':') /* comment (keep-alive ping) */
        return GM_OK;
    const char *colon = memchr(l, ':', n);
    size_t field = colon ? (size_t)(colon - l) : n;
    const char *v = colon ? colon + 1 : l + n;
    size_t vn = (size_t)(l + n - v);
    if (vn && *v == ' ')
        v++, vn--;
    if (field == 4 && !memcmp(l, "data", 4)) {
        size_t need = s->data_len + (s->has_data ? 1 : 0) + vn;
        if (need > BENCH_SSE_MAX_EVENT)
            return gm_fail(GM_ERR_INVALID_ARG, "sse: an event's data passes %d bytes", BENCH_SSE_MAX_EVENT);
        gm_status st = grow(&s->data, &s->data_cap, need);
        if (st)
            return st;
        if (s->has_data)
            s->data[s->data_len++] = '\n';
        memcpy(s->data + s->data_len, v, vn);
        s->data_len += vn;
        s->data[s->data_len] = 0;
        s->has_data = true;
    } else if (field == 5 && !memcmp(l, "event", 5)) {
        s->error_event = vn == 5 && !memcmp(v, "error", 5);
    }
    return GM_OK; /* id:, retry: and unknown fields mean nothing here */
}

/* Append bytes of an incomplete line. */
static gm_status line_append(bench_sse *s, const char *p, size_t n)
{
    if (s->line_len + n > BENCH_SSE_MAX_EVENT)
        return gm_fail(GM_ERR_INVALID_ARG, "sse: a line passes %d bytes", BENCH_SSE_MAX_EVENT);
    gm_status st = grow(&s->line, &s->line_cap, s->line_len + n);
    if (st)
        return st;
    memcpy(s->line + s->line_len, p, n);
    s->line_len += n;
    return GM_OK;
}

gm_status bench_sse_feed(bench_sse *s, const char *p, size_t n, bench_sse_fn fn, void *user)
{
    const char *end = p + n;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            return line_append(s, p, (size_t)(end - p));
        gm_status st;
        if (s->line_len) { /* the line began in an earlier piece */
            st = line_append(s, p, (size_t)(nl - p));
            if (!st) {
                size_t whole = s->line_len;
                s->line_len = 0; /* the bytes stay in place for on_line */
                st = on_line(s, s->line, whole, fn, user);
            }
        } else {
            st = on_line(s, p, (size_t)(nl - p), fn, user);
        }
        if (st)
            return st;
        p = nl + 1;
    }
    return GM_OK;
}

gm_status bench_sse_finish(bench_sse *s, bench_sse_fn fn, void *user)
{
    gm_status st = GM_OK;
    if (s->line_len) {
        size_t n = s->line_len;
        s->line_len = 0;
        st = on_line(s, s->line, n, fn, user);
    }
    if (!st && s->has_data)
        st = on_line(s, "", 0, fn, user);
    return st;
}

void bench_sse_reset(bench_sse *s)
{
    s->line_len = s->data_len = 0;
    s->has_data = s->error_event = false;
}

void bench_sse_free(bench_sse *s)
{
    free(s->line);
    free(s->data);
    memset(s, 0, sizeof(*s));
}

/* ---- chunks ---- */

static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && is_ws(*p))
        p++;
    return p;
}

/* The value after the first key qkey (the name in quotes) in [s, end), or NULL.
 * In valid JSON a quoted name followed by ':' is always a key: a quote inside a
 * string is escaped, so the pattern cannot start or end inside one. */
static const char *find_value(const char *s, const char *end, const char *qkey)
{
    size_t kl = strlen(qkey);
    const char *p = s;
    while (p < end && (p = memmem(p, (size_t)(end - p), qkey, kl))) {
        const char *q = skip_ws(p + kl, end);
        if (q < end && *q == ':') {
            q = skip_ws(q + 1, end);
            return q < end ? q : NULL;
        }
        p++;
    }
    return NULL;
}

/* Copy n bytes to out[cap], control characters as spaces. */
static void copy_text(const char *s, size_t n, char *out, size_t cap)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < cap; i++)
        out[k++] = (unsigned char)s[i] < 0x20 ? ' ' : s[i];
    out[k] = 0;
}

/* The message of a parsed error object; false when it has none. */
static bool error_text(const cJSON *j, char *out, size_t cap)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    const cJSON *m = NULL;
    if (cJSON_IsObject(e))
        m = cJSON_GetObjectItemCaseSensitive(e, "message");
    else if (cJSON_IsString(e))
        m = e;
    if (!cJSON_IsString(m))
        m = cJSON_GetObjectItemCaseSensitive(j, "message");
    if (!cJSON_IsString(m))
        m = cJSON_GetObjectItemCaseSensitive(j, "detail");
    if (!cJSON_IsString(m) || !m->valuestring)
        return false;
    copy_text(m->valuestring, strlen(m->valuestring), out, cap);
    return true;
}

void bench_sse_error_message(const char *body, size_t len, char *out, size_t cap)
{
    if (!cap)
        return;
    cJSON *j = cJSON_ParseWithLength(body, len);
    bool got = j && error_text(j, out, cap);
    cJSON_Delete(j);
    if (!got) {
        const char *p = skip_ws(body, body + len);
        copy_text(p, (size_t)(body + len - p), out, cap < 201 ? cap : 201);
    }
}

void bench_sse_read_chunk(const char *data, size_t len, bool error_event, bench_chunk *c)
{
    memset(c, 0, sizeof(*c));
    c->prompt_tokens = c->completion_tokens = -1;
    const char *p = skip_ws(data, data + len), *end = data + len;
    while (end > p && is_ws(end[-1]))
        end--;
    if (!error_event && end - p == 6 && !memcmp(p, "[DONE]", 6)) {
        c->done = true;
        return;
    }
    if (p == end || *p != '{') {
        if (error_event) {
            c->error = true;
            copy_text(p, (size_t)(end - p), c->message, sizeof(c->message));
        } else {
            c->malformed = true;
            snprintf(c->message, sizeof(c->message), "a stream event is not a JSON object: '%.60s'", p);
        }
        return;
    }
    const char *v = find_value(p, end, "\"object\"");
    c->error = error_event || find_value(p, end, "\"error\"") || (v && end - v >= 7 && !memcmp(v, "\"error\"", 7));
    v = find_value(p, end, "\"usage\"");
    if (c->error || (v && *v == '{')) { /* rare: parse it all */
        cJSON *j = cJSON_ParseWithLength(p, (size_t)(end - p));
        if (c->error) {
            if (!j || !error_text(j, c->message, sizeof(c->message)))
                copy_text(p, (size_t)(end - p), c->message, sizeof(c->message));
            cJSON_Delete(j);
            return;
        }
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "usage");
        if (cJSON_IsObject(u)) {
            const cJSON *pt = cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens");
            const cJSON *ct = cJSON_GetObjectItemCaseSensitive(u, "completion_tokens");
            c->has_usage = true;
            if (cJSON_IsNumber(pt) && pt->valuedouble >= 0)
                c->prompt_tokens = (int64_t)pt->valuedouble;
            if (cJSON_IsNumber(ct) && ct->valuedouble >= 0)
                c->completion_tokens = (int64_t)ct->valuedouble;
        } else if (!j) {
            c->malformed = true;
            snprintf(c->message, sizeof(c->message), "a stream event is not valid JSON: '%.60s'", p);
        }
        cJSON_Delete(j);
        if (c->malformed)
            return;
    }
    v = find_value(p, end, "\"choices\"");
    if (!v || *v != '[')
        return;
    v = skip_ws(v + 1, end);
    if (v == end || *v == ']') /* no choices: the usage chunk */
        return;
    const char *t = find_value(p, end, "\"text\"");
    if (!t)
        t = find_value(p, end, "\"content\"");
    if (!t || *t != '"') /* no text, or null content: a closing chunk */
        return;
    if (t + 1 < end && t[1] != '"') {
        c->tokens = true;
        return;
    }
    /* empty text: a token whose bytes are held back, unless it opens or closes the stream */
    const char *f = find_value(p, end, "\"finish_reason\"");
    c->tokens = !find_value(p, end, "\"role\"") && !(f && *f != 'n');
}
