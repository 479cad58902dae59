/* test_daemon_limits.c - one client cannot stall or exhaust gemmad for the others (issue 14, defect 3
 * and the risks), end to end with bounded waits:
 *   - a 10 MB frame is refused by the frame limit (the sender's connection is dropped): Health keeps
 *     answering and gemmad's peak RSS stays small;
 *   - prompt text over the byte limit is PROMPT_TOO_LONG before it is tokenized;
 *   - a 2 MB prompt (limits raised) is tokenized off the loop: another request keeps streaming meanwhile;
 *   - a NUL byte in a text prompt, a chat text or a stop string is INVALID_ARGUMENT naming its position;
 *   - queued requests are bounded by bytes (max_waiting_memory: OVERLOADED), and their memory goes back
 *     to the system when their client is gone;
 *   - clients that never read have their requests cancelled (client_stall_ms) with gemmad's RSS bounded,
 *     while a reading client is served.
 * Figures are printed, never asserted against a clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <zmq.h>

#include "proto/gemma.pb-c.h"
#include "tests/test_daemon_util.h"

static int32_t g_prompt[] = {2, 651, 3037, 100, 200};

static pid_t start_gemmad(const char *name, bool model, const char *const *extra, char *ep, size_t epcap)
{
    char log[64], sock[64];
    snprintf(log, sizeof log, "%s.log", name);
    snprintf(sock, sizeof sock, "%s.sock", name);
    td_endpoint(ep, epcap, sock);
    const char *args[40] = {"--listen", ep};
    int n = 2;
    if (model) {
        args[n++] = "--model", args[n++] = TINY_MODEL_DIR, args[n++] = "--backend", args[n++] = "cpu";
    } else {
        args[n++] = "--backend", args[n++] = "null", args[n++] = "--kv-memory", args[n++] = "1G";
    }
    for (; extra && *extra; extra++)
        args[n++] = *extra;
    args[n] = NULL;
    pid_t pid = td_spawn_gemmad(args, log);
    assert_true(pid > 0);
    if (!td_wait_ready(ep, pid, 120000)) {
        td_dump_log(log);
        fail_msg("gemmad %s did not start", name);
    }
    return pid;
}

/* VmRSS or VmHWM of pid in kB (-1 when unreadable). */
static long proc_kb(pid_t pid, const char *key)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':')
            v = atol(line + kl + 1);
    fclose(f);
    return v;
}

static void *dealer(void *ctx, const char *ep)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_SNDHWM, &zero, sizeof zero);
    assert_int_equal(zmq_connect(s, ep), 0);
    return s;
}

/* Send a ClientMessage with a generate body (packed with protobuf-c). */
static void send_generate(void *sock, uint64_t rid, Gemma__V1__GenerateRequest *g)
{
    Gemma__V1__ClientMessage cm = GEMMA__V1__CLIENT_MESSAGE__INIT;
    cm.protocol_version = 1;
    cm.request_id = rid;
    cm.body_case = GEMMA__V1__CLIENT_MESSAGE__BODY_GENERATE;
    cm.generate = g;
    size_t n = gemma__v1__client_message__get_packed_size(&cm);
    uint8_t *buf = malloc(n);
    gemma__v1__client_message__pack(&cm, buf);
    assert_true(zmq_send(sock, buf, n, 0) == (int)n);
    free(buf);
}

/* The next ServerMessage within timeout_ms, or NULL. */
static Gemma__V1__ServerMessage *recv_msg(void *sock, int timeout_ms)
{
    zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, timeout_ms) <= 0)
        return NULL;
    zmq_msg_t m;
    zmq_msg_init(&m);
    assert_true(zmq_msg_recv(&m, sock, 0) >= 0);
    Gemma__V1__ServerMessage *sm = gemma__v1__server_message__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
    zmq_msg_close(&m);
    assert_non_null(sm);
    return sm;
}

static double health_ms(gmc_client *c)
{
    gmc_health h;
    double t = td_now_ms();
    gmc_code rc = gmc_health_check(c, 3000, &h);
    if (rc != GMC_OK)
        fail_msg("Health: %s within 3 s", gmc_code_name(rc));
    return td_now_ms() - t;
}

/* ---- defect 3: large prompts ---- */

static void test_frame_limit(void **state)
{
    (void)state;
    char ep[400];
    pid_t pid = start_gemmad("frame", true, NULL, ep, sizeof ep);
    long hwm0 = proc_kb(pid, "VmHWM");
    void *ctx = zmq_ctx_new();
    void *big = dealer(ctx, ep);
    size_t n = 10u << 20;
    char *text = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        text[i] = "hello world "[i % 12];
    text[n] = 0;
    Gemma__V1__GenerateRequest g = GEMMA__V1__GENERATE_REQUEST__INIT;
    g.prompt_case = GEMMA__V1__GENERATE_REQUEST__PROMPT_TEXT;
    g.text = text;
    g.max_tokens = 1;
    send_generate(big, 1, &g);
    free(text);
    gmc_client *c;
    assert_int_equal(gmc_connect(ep, 10000, &c), GMC_OK);
    double worst = 0;
    for (int i = 0; i < 20; i++) { /* Health keeps answering while the frame arrives and is dropped */
        double ms = health_ms(c);
        worst = ms > worst ? ms : worst;
        usleep(50000);
    }
    Gemma__V1__ServerMessage *sm = recv_msg(big, 500);
    assert_null(sm); /* no answer: the connection that sent it was dropped */
    long hwm1 = proc_kb(pid, "VmHWM");
    fprintf(stderr, "  10 MB frame: Health at most %.1f ms; gemmad VmHWM %ld -> %ld kB\n", worst, hwm0, hwm1);
    assert_true(hwm1 - hwm0 < 64 * 1024); /* it was never read whole, let alone tokenized */
    /* text just over the prompt byte limit, well under the frame limit: refused before tokenizing */
    gmc_params p;
    gmc_params_init(&p);
    char over[40000];
    memset(over, 'x', sizeof over - 1);
    over[sizeof over - 1] = 0;
    p.prompt = over;
    p.max_tokens = 1;
    gmc_result r;
    assert_int_equal(gmc_generate(c, &p, 10000, NULL, NULL, &r), GMC_ERR_PROMPT_TOO_LONG);
    assert_non_null(strstr(r.error_message, "bytes"));
    gmc_result_free(&r);
    gmc_close(&c);
    zmq_close(big);
    zmq_ctx_term(ctx);
    assert_int_equal(td_stop(pid), 0);
}

static void test_tokenize_off_loop(void **state)
{
    (void)state;
    char ep[400];
    const char *extra[] = {"--max-prompt-bytes", "2M", "--max-message-bytes", "3M", NULL};
    pid_t pid = start_gemmad("offloop", true, extra, ep, sizeof ep);
    gmc_client *c;
    assert_int_equal(gmc_connect(ep, 10000, &c), GMC_OK);
    gmc_params p;
    gmc_params_init(&p); /* a stream that runs meanwhile */
    p.prompt_ids = g_prompt;
    p.n_prompt_ids = 5;
    p.max_tokens = 1000;
    p.ignore_eos = true;
    uint64_t run;
    assert_true(td_submit_started(c, &p, 1, &run));
    size_t n = 2u << 20;
    char *text = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        text[i] = "hello world "[i % 12];
    text[n] = 0;
    gmc_params_init(&p);
    p.prompt = text;
    p.max_tokens = 1;
    uint64_t big;
    double t0 = td_now_ms();
    assert_int_equal(gmc_submit(c, &p, NULL, &big), GMC_OK);
    free(text);
    int chunks = 0;
    bool big_done = false, run_done = false;
    while (!big_done) {
        gmc_event ev[256];
        int k = gmc_poll(c, ev, 256, 30000);
        assert_true(k > 0);
        for (int i = 0; i < k; i++) {
            if (ev[i].request_id == big && ev[i].finished) {
                assert_int_equal(ev[i].error, GMC_ERR_PROMPT_TOO_LONG); /* 1M tokens: tokenized, then too long */
                big_done = true;
            } else if (ev[i].request_id == run && !big_done) {
                chunks++;
                run_done |= ev[i].finished;
            }
        }
    }
    fprintf(stderr, "  2 MB prompt tokenized in %.0f ms; the other stream got %d chunks meanwhile%s\n",
            td_now_ms() - t0, chunks, run_done ? " (and finished)" : "");
    assert_true(chunks >= 10); /* the loop kept stepping and streaming */
    gmc_close(&c);
    assert_int_equal(td_stop(pid), 0);
}

/* A GenerateRequest frame by hand: protobuf-c cannot write a string with a NUL in it.
 * field: 1 text, 3 chat (one user message), 6 stop (with text "hi"). */
static size_t nul_frame(uint8_t *buf, uint64_t rid, int field)
{
    static const char bad[] = {'a', 'b', 0, 'c', 'd'};
    uint8_t g[64];
    size_t gn = 0;
    if (field == 1) {
        g[gn++] = 0x0a, g[gn++] = 5;
        memcpy(g + gn, bad, 5), gn += 5;
    } else if (field == 3) { /* chat { messages { role "user" text "ab\0cd" } } */
        g[gn++] = 0x1a, g[gn++] = 15, g[gn++] = 0x0a, g[gn++] = 13;
        g[gn++] = 0x0a, g[gn++] = 4;
        memcpy(g + gn, "user", 4), gn += 4;
        g[gn++] = 0x12, g[gn++] = 5;
        memcpy(g + gn, bad, 5), gn += 5;
    } else {
        g[gn++] = 0x0a, g[gn++] = 2, g[gn++] = 'h', g[gn++] = 'i';
        g[gn++] = 0x32, g[gn++] = 5;
        memcpy(g + gn, bad, 5), gn += 5;
    }
    g[gn++] = 0x20, g[gn++] = 2; /* max_tokens 2 */
    size_t n = 0;
    buf[n++] = 0x08, buf[n++] = 1;                  /* protocol_version */
    buf[n++] = 0x10, buf[n++] = (uint8_t)rid;       /* request_id */
    buf[n++] = 0x52, buf[n++] = (uint8_t)gn;        /* generate (field 10) */
    memcpy(buf + n, g, gn);
    return n + gn;
}

static void test_nul_bytes(void **state)
{
    (void)state;
    char ep[400];
    pid_t pid = start_gemmad("nul", true, NULL, ep, sizeof ep);
    void *ctx = zmq_ctx_new();
    void *s = dealer(ctx, ep);
    const int fields[] = {1, 3, 6};
    const char *want[] = {"the prompt has a NUL byte at position 2", "chat message 0's text has a NUL byte at position 2",
                          "stop string 0 has a NUL byte at position 2"};
    for (int i = 0; i < 3; i++) {
        uint8_t buf[128];
        size_t n = nul_frame(buf, (uint64_t)(10 + i), fields[i]);
        assert_true(zmq_send(s, buf, n, 0) == (int)n);
        Gemma__V1__ServerMessage *sm = recv_msg(s, 10000);
        assert_non_null(sm);
        assert_int_equal(sm->n_chunks, 1);
        assert_int_equal(sm->chunks[0]->request_id, 10 + i);
        assert_int_equal(sm->chunks[0]->finish_reason, GEMMA__V1__FINISH_REASON__FINISH_ERROR);
        assert_int_equal(sm->chunks[0]->error_code, GEMMA__V1__ERROR_CODE__INVALID_ARGUMENT);
        assert_string_equal(sm->chunks[0]->error_message, want[i]);
        gemma__v1__server_message__free_unpacked(sm, NULL);
    }
    zmq_close(s);
    zmq_ctx_term(ctx);
    assert_int_equal(td_stop(pid), 0);
}

/* ---- risks: queued requests, slow consumers ---- */

static void test_queue_memory(void **state)
{
    (void)state;
    char ep[400];
    const char *extra[] = {"--max-seqs", "1", "--max-waiting-memory", "16M", NULL};
    pid_t pid = start_gemmad("queue", false, extra, ep, sizeof ep);
    long rss0 = proc_kb(pid, "VmRSS");
    void *ctx = zmq_ctx_new();
    void *s = dealer(ctx, ep);
    Gemma__V1__TokenIds ids = GEMMA__V1__TOKEN_IDS__INIT;
    ids.ids = g_prompt;
    ids.n_ids = 5;
    Gemma__V1__GenerateRequest g = GEMMA__V1__GENERATE_REQUEST__INIT;
    g.prompt_case = GEMMA__V1__GENERATE_REQUEST__PROMPT_TOKENS;
    g.tokens = &ids;
    g.max_tokens = 8000; /* runs first, alone (max_seqs 1): everything else waits behind it */
    g.ignore_eos = true;
    send_generate(s, 1, &g);
    g.max_tokens = 1; /* about 1 KB each */
    g.ignore_eos = false;
    const int N = 60000;
    for (int i = 0; i < N; i++)
        send_generate(s, (uint64_t)(2 + i), &g);
    int overloaded = 0;
    char msg[512] = "";
    double end = td_now_ms() + 20000;
    while (overloaded < N / 2 && td_now_ms() < end) {
        Gemma__V1__ServerMessage *sm = recv_msg(s, 1000);
        for (size_t i = 0; sm && i < sm->n_chunks; i++)
            if (sm->chunks[i]->error_code == GEMMA__V1__ERROR_CODE__OVERLOADED) {
                overloaded++;
                snprintf(msg, sizeof msg, "%s", sm->chunks[i]->error_message);
            }
        if (sm)
            gemma__v1__server_message__free_unpacked(sm, NULL);
    }
    gmc_client *c;
    assert_int_equal(gmc_connect(ep, 10000, &c), GMC_OK);
    gmc_stats st;
    assert_int_equal(gmc_stats_get(c, 5000, &st), GMC_OK);
    long rss1 = proc_kb(pid, "VmRSS");
    fprintf(stderr, "  %d queued 1-token requests: %d waiting, %d OVERLOADED (%s); RSS %ld -> %ld kB\n", N,
            st.waiting, overloaded, msg, rss0, rss1);
    assert_true(overloaded >= N / 2);
    assert_non_null(strstr(msg, "max_waiting_memory"));
    assert_true(st.waiting < N / 2);
    /* the client goes: once gemmad sees it (its long request's reply fails), all is freed and trimmed */
    zmq_close(s);
    end = td_now_ms() + 60000;
    do {
        usleep(200000);
        assert_int_equal(gmc_stats_get(c, 5000, &st), GMC_OK);
    } while ((st.waiting > 0 || st.running > 0) && td_now_ms() < end);
    assert_int_equal(st.waiting, 0);
    long rss2 = 0;
    for (int i = 0; i < 150; i++) { /* trimmed within 10 s of the frees */
        rss2 = proc_kb(pid, "VmRSS");
        if (rss2 - rss0 < (rss1 - rss0) / 2 + 4096)
            break;
        usleep(100000);
    }
    fprintf(stderr, "  after the client left: RSS %ld kB\n", rss2);
#ifndef __SANITIZE_ADDRESS__ /* ASan's allocator keeps freed memory (quarantine): malloc_trim cannot return it */
    assert_true(rss2 - rss0 < (rss1 - rss0) / 2 + 4096);
#endif
    gmc_close(&c);
    zmq_ctx_term(ctx);
    assert_int_equal(td_stop(pid), 0);
}

static bool all_cancelled(gmc_client *c, int n, gmc_stats *st)
{
    assert_int_equal(gmc_stats_get(c, 5000, st), GMC_OK);
    return st->requests_cancelled >= n && st->running == 0;
}

static void test_slow_consumers(void **state)
{
    (void)state;
    char ep[400];
    const char *extra[] = {"--max-seqs", "1024", "--kv-blocks", "600000", "--client-stall-ms", "1000", NULL};
    pid_t pid = start_gemmad("slow", false, extra, ep, sizeof ep);
    long rss0 = proc_kb(pid, "VmRSS");
    enum { CLIENTS = 50, PER = 20 };
    void *ctx = zmq_ctx_new();
    void *socks[CLIENTS];
    Gemma__V1__TokenIds ids = GEMMA__V1__TOKEN_IDS__INIT;
    ids.ids = g_prompt;
    ids.n_ids = 5;
    Gemma__V1__GenerateRequest g = GEMMA__V1__GENERATE_REQUEST__INIT;
    g.prompt_case = GEMMA__V1__GENERATE_REQUEST__PROMPT_TOKENS;
    g.tokens = &ids;
    g.max_tokens = 8000;
    g.ignore_eos = true;
    g.stream = true;
    for (int i = 0; i < CLIENTS; i++) { /* they read nothing: one message at most, tiny buffers */
        socks[i] = zmq_socket(ctx, ZMQ_DEALER);
        int one = 1, small = 1024, zero = 0;
        zmq_setsockopt(socks[i], ZMQ_RCVHWM, &one, sizeof one);
        zmq_setsockopt(socks[i], ZMQ_RCVBUF, &small, sizeof small);
        zmq_setsockopt(socks[i], ZMQ_LINGER, &zero, sizeof zero);
        assert_int_equal(zmq_connect(socks[i], ep), 0);
        for (int k = 0; k < PER; k++)
            send_generate(socks[i], (uint64_t)(1 + k), &g);
    }
    gmc_client *c;
    assert_int_equal(gmc_connect(ep, 10000, &c), GMC_OK);
    gmc_params p;
    gmc_params_init(&p);
    p.prompt_ids = g_prompt;
    p.n_prompt_ids = 5;
    p.max_tokens = 64;
    gmc_result r;
    assert_int_equal(gmc_generate(c, &p, 60000, NULL, NULL, &r), GMC_OK); /* a reader is served meanwhile */
    assert_int_equal(r.n_tokens, 64);
    gmc_result_free(&r);
    gmc_stats st;
    long peak = rss0;
    double t0 = td_now_ms();
    while (!all_cancelled(c, CLIENTS * PER, &st)) {
        long v = proc_kb(pid, "VmRSS");
        peak = v > peak ? v : peak;
        if (td_now_ms() - t0 > 60000)
            fail_msg("after 60 s: %lld of %d requests cancelled, %lld finished", (long long)st.requests_cancelled,
                     CLIENTS * PER, (long long)st.requests_finished);
        usleep(100000);
    }
    fprintf(stderr, "  %d clients x %d streams never read: all cancelled after %.0f ms; RSS %ld -> peak %ld kB\n",
            CLIENTS, PER, td_now_ms() - t0, rss0, peak);
    assert_int_equal(st.kv_blocks_used, 0);
    assert_true(peak - rss0 < 128 * 1024);
    for (int i = 0; i < CLIENTS; i++)
        zmq_close(socks[i]);
    zmq_ctx_term(ctx);
    gmc_close(&c);
    assert_int_equal(td_stop(pid), 0);
}

static int setup(void **state)
{
    (void)state;
    return td_make_dir() ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    td_kill_leftovers();
    td_remove_dir();
    return 0;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frame_limit),  cmocka_unit_test(test_tokenize_off_loop),
        cmocka_unit_test(test_nul_bytes),    cmocka_unit_test(test_queue_memory),
        cmocka_unit_test(test_slow_consumers),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
