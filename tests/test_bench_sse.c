/* test_bench_sse.c - gemma-bench's reading of OpenAI streams (bench/bench_sse.c) and the
 * HTTP driver's error codes (bench/http_load.c), without a network. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "bench/bench_sse.h"
#include "bench/http_load.h"

#define MAX_EVENTS 16

typedef struct seen {
    char data[MAX_EVENTS][512];
    bool error[MAX_EVENTS];
    int n;
    int stop_after; /* return false after this many events (0: never) */
} seen;

static bool record(void *user, const char *data, size_t len, bool error_event)
{
    seen *s = user;
    assert_true(s->n < MAX_EVENTS);
    assert_int_equal(strlen(data), len); /* NUL-terminated at len */
    snprintf(s->data[s->n], sizeof(s->data[0]), "%s", data);
    s->error[s->n] = error_event;
    s->n++;
    return !(s->stop_after && s->n >= s->stop_after);
}

/* Feed text in pieces of `step` bytes (0: cut once at `cut`), then finish. */
static gm_status feed_pieces(const char *text, size_t step, size_t cut, seen *out)
{
    bench_sse s = {0};
    memset(out, 0, sizeof(*out));
    size_t n = strlen(text);
    gm_status st = GM_OK;
    if (step) {
        for (size_t i = 0; i < n && !st; i += step)
            st = bench_sse_feed(&s, text + i, i + step <= n ? step : n - i, record, out);
    } else {
        st = bench_sse_feed(&s, text, cut, record, out);
        if (!st)
            st = bench_sse_feed(&s, text + cut, n - cut, record, out);
    }
    if (!st)
        st = bench_sse_finish(&s, record, out);
    bench_sse_free(&s);
    return st;
}

static const char *STREAM = "data: {\"a\":1}\n\n"
                            ": keep-alive comment\n"
                            "data:{\"b\":2}\r\n\r\n"
                            "event: error\n"
                            "data: {\"error\": {\"message\": \"boom\"}}\n\n"
                            "id: 7\n"
                            "data: line one\n"
                            "data: line two\n"
                            "\n"
                            "retry\n"
                            "data\n"
                            "\n"
                            "data: [DONE]\n\n";

static void check_stream(const seen *s)
{
    assert_int_equal(s->n, 6);
    assert_string_equal(s->data[0], "{\"a\":1}");
    assert_string_equal(s->data[1], "{\"b\":2}");
    assert_string_equal(s->data[2], "{\"error\": {\"message\": \"boom\"}}");
    assert_true(s->error[2]);
    assert_false(s->error[0] || s->error[1] || s->error[3] || s->error[5]);
    assert_string_equal(s->data[3], "line one\nline two");
    assert_string_equal(s->data[4], ""); /* "data" with no colon: an empty data line */
    assert_string_equal(s->data[5], "[DONE]");
}

/* The same events whatever the pieces the bytes come in. */
static void test_events_any_split(void **st)
{
    (void)st;
    seen s;
    size_t n = strlen(STREAM);
    for (size_t cut = 0; cut <= n; cut++) {
        assert_int_equal(feed_pieces(STREAM, 0, cut, &s), GM_OK);
        check_stream(&s);
    }
    for (size_t step = 1; step <= 7; step++) {
        assert_int_equal(feed_pieces(STREAM, step, 0, &s), GM_OK);
        check_stream(&s);
    }
}

static void test_events_edges(void **st)
{
    (void)st;
    seen s;
    /* an event whose blank line never came is delivered at the end; so is a last line without "\n" */
    assert_int_equal(feed_pieces("data: x\n", 0, 3, &s), GM_OK);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.data[0], "x");
    assert_int_equal(feed_pieces("data: y", 0, 2, &s), GM_OK);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.data[0], "y");
    /* blank lines and comments alone are no events; "event: error" does not outlive its event */
    assert_int_equal(feed_pieces("\n\n: hi\n\nevent: error\n\ndata: z\n\n", 1, 0, &s), GM_OK);
    assert_int_equal(s.n, 1);
    assert_false(s.error[0]);
    /* the callback stops the stream */
    bench_sse p = {0};
    memset(&s, 0, sizeof(s));
    s.stop_after = 1;
    assert_int_equal(bench_sse_feed(&p, "data: 1\n\ndata: 2\n\n", 18, record, &s), GM_ERR_CANCELLED);
    assert_int_equal(s.n, 1);
    /* reset forgets a half event */
    bench_sse_reset(&p);
    memset(&s, 0, sizeof(s));
    assert_int_equal(bench_sse_feed(&p, "data: 3\n\n", 9, record, &s), GM_OK);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.data[0], "3");
    /* a line past the limit is an error, not unbounded memory */
    size_t big = BENCH_SSE_MAX_EVENT + 10;
    char *line = malloc(big);
    memset(line, 'x', big);
    assert_int_equal(bench_sse_feed(&p, line, big, record, &s), GM_ERR_INVALID_ARG);
    bench_sse_reset(&p);
    memcpy(line, "data: ", 6);
    line[big - 1] = '\n';
    assert_int_equal(bench_sse_feed(&p, line, big, record, &s), GM_ERR_INVALID_ARG);
    free(line);
    bench_sse_free(&p);
}

/* One chunk and what must be read from it. */
typedef struct chunk_case {
    const char *data;
    bool error_event;
    const char *expect; /* flags read: t tokens, d done, e error, m malformed, u usage; "" none */
    int64_t prompt_tokens, completion_tokens;
    const char *message; /* a part of the message, or NULL */
} chunk_case;

static const chunk_case CHUNKS[] = {
    /* gemmad's completions chunk (http/oai_fmt.c), and vLLM's with spaces after colons */
    {"{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,"
     "\"text\":\" tok\",\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}",
     false, "t", -1, -1, NULL},
    {"{\"choices\": [{\"index\": 0, \"text\": \"x\", \"finish_reason\": \"length\"}]}", false, "t", -1, -1, NULL},
    /* a token whose text is held back (empty, neither opening nor closing) still counts ... */
    {"{\"choices\":[{\"index\":0,\"text\":\"\",\"finish_reason\":null}]}", false, "t", -1, -1, NULL},
    /* ... the closing chunk with empty text does not */
    {"{\"choices\":[{\"index\":0,\"text\":\"\",\"finish_reason\":\"length\"}]}", false, "", -1, -1, NULL},
    /* chat: a role-only opening chunk does not count, the first content does, closing ones do not */
    {"{\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
     "\"content\":\"\"},\"finish_reason\":null}]}",
     false, "", -1, -1, NULL},
    {"{\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"finish_reason\":null}]}", false, "t",
     -1, -1, NULL},
    {"{\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}", false, "", -1, -1, NULL},
    {"{\"choices\":[{\"delta\":{\"content\":null},\"finish_reason\":\"stop\"}]}", false, "", -1, -1, NULL},
    /* generated text that looks like keys is escaped: text, not an error or usage */
    {"{\"choices\":[{\"text\":\"{\\\"error\\\": {\\\"usage\\\": 1}}\",\"finish_reason\":null}]}", false, "t", -1,
     -1, NULL},
    /* the usage chunk: exact counts, no tokens; vLLM's continuous usage: both */
    {"{\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":16,\"completion_tokens\":128,\"total_tokens\":144}}",
     false, "u", 16, 128, NULL},
    {"{\"choices\": [ ], \"usage\": {\"completion_tokens\": 3}}", false, "u", -1, 3, NULL},
    {"{\"choices\":[{\"text\":\"a\"}],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1}}", false, "tu", 2, 1,
     NULL},
    /* errors: OpenAI's shape, vLLM's older one, an SSE error event (JSON or not) */
    {"{\"error\": {\"message\": \"out of\\nmemory\", \"type\": \"server_error\", \"code\": null}}", false, "e", -1,
     -1, "out of memory"},
    {"{\"object\":\"error\",\"message\":\"bad thing\",\"type\":\"BadRequestError\",\"code\":400}", false, "e", -1, -1,
     "bad thing"},
    {"overloaded", true, "e", -1, -1, "overloaded"},
    {"{\"choices\":[{\"text\":\"a\"}]}", true, "e", -1, -1, NULL},
    /* [DONE], and what is not a JSON object */
    {" [DONE] ", false, "d", -1, -1, NULL},
    {"hello", false, "m", -1, -1, "hello"},
    {"{\"choices\":[],\"usage\":{\"prompt_tokens\":", false, "m", -1, -1, NULL},
    {"", false, "m", -1, -1, NULL},
};

static void test_chunks(void **st)
{
    (void)st;
    for (size_t i = 0; i < sizeof(CHUNKS) / sizeof(CHUNKS[0]); i++) {
        const chunk_case *k = &CHUNKS[i];
        bench_chunk c;
        bench_sse_read_chunk(k->data, strlen(k->data), k->error_event, &c);
        char got[8];
        snprintf(got, sizeof(got), "%s%s%s%s%s", c.tokens ? "t" : "", c.has_usage ? "u" : "", c.done ? "d" : "",
                 c.error ? "e" : "", c.malformed ? "m" : "");
        if (strcmp(got, k->expect) != 0)
            fail_msg("chunk %zu '%s': read '%s', expected '%s'", i, k->data, got, k->expect);
        assert_int_equal(c.prompt_tokens, k->prompt_tokens);
        assert_int_equal(c.completion_tokens, k->completion_tokens);
        if (k->message && !strstr(c.message, k->message))
            fail_msg("chunk %zu: message '%s' lacks '%s'", i, c.message, k->message);
    }
}

static void test_error_bodies(void **st)
{
    (void)st;
    char m[64];
    const char *b = "{\"error\":{\"message\":\"The model `x` does not exist.\",\"type\":\"invalid_request_error\"}}";
    bench_sse_error_message(b, strlen(b), m, sizeof(m));
    assert_string_equal(m, "The model `x` does not exist.");
    b = "{\"error\": \"rate limited\"}";
    bench_sse_error_message(b, strlen(b), m, sizeof(m));
    assert_string_equal(m, "rate limited");
    b = "{\"detail\":\"Not Found\"}";
    bench_sse_error_message(b, strlen(b), m, sizeof(m));
    assert_string_equal(m, "Not Found");
    b = "\r\n<html>Bad\tGateway</html>";
    bench_sse_error_message(b, strlen(b), m, sizeof(m));
    assert_string_equal(m, "<html>Bad Gateway</html>");
    bench_sse_error_message(b, strlen(b), m, 6); /* cut to the buffer */
    assert_string_equal(m, "<html");
    bench_sse_error_message("", 0, m, sizeof(m));
    assert_string_equal(m, "");
}

static void test_codes(void **st)
{
    (void)st;
    assert_int_equal(http_load_status_code(429), HTTP_LOAD_ERR_429);
    assert_string_equal(http_load_code_name(http_load_status_code(429)), "HTTP_429");
    assert_string_equal(http_load_code_name(http_load_status_code(400)), "HTTP_400");
    assert_string_equal(http_load_code_name(http_load_status_code(503)), "HTTP_503");
    assert_string_equal(http_load_code_name(http_load_status_code(418)), "HTTP_4XX");
    assert_string_equal(http_load_code_name(http_load_status_code(599)), "HTTP_5XX");
    assert_string_equal(http_load_code_name(http_load_status_code(302)), "HTTP_STATUS");
    assert_string_equal(http_load_code_name(HTTP_LOAD_ERR_TIMEOUT), "TIMEOUT");
    assert_string_equal(http_load_code_name(0), "OK");
    assert_string_equal(http_load_code_name(77), "UNKNOWN");
    /* every code fits the summary's error table and has its own name */
    const char *names[128] = {0};
    for (int c = 1; c < 128; c++) {
        const char *n = http_load_code_name(c);
        if (!strcmp(n, "UNKNOWN"))
            continue;
        for (int k = 1; k < c; k++)
            assert_true(!names[k] || strcmp(names[k], n) != 0);
        names[c] = n;
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_events_any_split), cmocka_unit_test(test_events_edges),
        cmocka_unit_test(test_chunks),           cmocka_unit_test(test_error_bodies),
        cmocka_unit_test(test_codes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
