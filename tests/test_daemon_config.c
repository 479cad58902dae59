/* test_daemon_config.c - gemmad settings (file, flags, errors with lines), stop-string
 * output (textout), and gemma.v1 protobuf round trips. No processes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/sampling.h"
#include "common/status.h"
#include "common/args.h"
#include "daemon/config.h"
#include "daemon/metrics.h"
#include "daemon/textout.h"
#include "daemon/u64map.h"
#include "ctl/plan.h"
#include "daemon/wire.h"
#include "proto/control.pb-c.h"
#include "proto/gemma.pb-c.h"

static char g_dir[256];

static const char *write_file(const char *name, const char *text)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static gm_status from_args(gd_config *c, gd_action *a, int n, ...)
{
    char *argv[32];
    argv[0] = "gemmad";
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++)
        argv[i + 1] = va_arg(ap, char *);
    va_end(ap);
    return gd_config_from_args(n + 1, argv, c, a);
}

static void test_defaults(void **state)
{
    (void)state;
    gd_config c;
    gd_action a;
    /* no model with cpu: invalid */
    assert_int_equal(from_args(&c, &a, 0), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "model"));
    gd_config_free(&c);
    assert_int_equal(from_args(&c, &a, 2, "--backend", "null"), GM_OK);
    assert_int_equal(a, GD_ACTION_RUN);
    assert_string_equal(c.listen, "tcp://127.0.0.1:5555");
    assert_int_equal(c.tp, 1);
    assert_int_equal(c.kv_block_size, 16);
    assert_int_equal(c.kv_memory, -1); /* unset: the workers derive every sizing key (ctl/sizing.h) */
    assert_int_equal(c.max_seqs, 0);
    assert_int_equal(c.max_tokens_per_step, 0);
    assert_int_equal(c.max_context, 0);
    assert_true(c.run_ahead);
    assert_true(c.prefix_cache); /* on by default */
    assert_null(c.model);
    gd_config_free(&c);
    assert_int_equal(from_args(&c, &a, 4, "--backend", "null", "--prefix-cache", "false"), GM_OK);
    assert_false(c.prefix_cache);
    gd_config_free(&c);
    assert_int_equal(from_args(&c, &a, 4, "--backend", "null", "--prefix-cache", "sometimes"), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "prefix_cache"));
    gd_config_free(&c);
    assert_int_equal(from_args(&c, &a, 3, "--backend", "null", "--no-run-ahead"), GM_OK);
    assert_false(c.run_ahead);
    gd_config_free(&c);
    assert_int_equal(from_args(&c, &a, 4, "--backend", "null", "--run-ahead", "false"), GM_OK);
    assert_false(c.run_ahead);
    gd_config_free(&c);
    assert_int_equal(from_args(&c, &a, 4, "--backend", "null", "--run-ahead", "maybe"), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "run_ahead"));
    gd_config_free(&c);
    assert_int_equal(from_args(&c, &a, 6, "--backend", "cpu", "--model", "/m", "--lm-head", "int4"), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "lm_head: 'int4' is not bf16 or fp8"));
    gd_config_free(&c);
    assert_int_equal(from_args(&c, &a, 4, "--backend", "null", "--lm-head", "fp8"), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "real backend"));
    gd_config_free(&c);
    assert_int_equal(from_args(&c, &a, 6, "--backend", "cpu", "--model", "/m", "--lm-head", "fp8"), GM_OK);
    assert_true(c.lm_head_fp8);
    gd_config_free(&c);
    assert_int_equal(from_args(&c, &a, 1, "--help"), GM_OK);
    assert_int_equal(a, GD_ACTION_HELP);
    gd_config_free(&c);
}

/* The HTTP front door's settings: off by default, a key from a file, limits checked. */
static void test_http_settings(void **state)
{
    (void)state;
    gd_config c;
    gd_action a;
    assert_int_equal(from_args(&c, &a, 2, "--backend", "null"), GM_OK);
    assert_null(c.http_listen);
    assert_null(c.api_key);
    assert_int_equal(c.http_max_body, 8 << 20);
    assert_int_equal(c.http_max_requests, 0);
    assert_int_equal(c.http_max_connections, 4096);
    gd_config_free(&c);
    const char *key = write_file("key.txt", "\n  tok-123 \t\nsecond line\n");
    assert_int_not_equal(from_args(&c, &a, 4, "--backend", "null", "--api-key-file", key), GM_OK);
    assert_non_null(strstr(gm_last_error(), "holds no key")); /* the first line is blank */
    gd_config_free(&c);
    assert_int_equal(from_args(&c, &a, 12, "--backend", "null", "--http-listen", "127.0.0.1:8000", "--http-max-body",
                               "1M", "--http-max-requests", "64", "--served-model-name", "gemma",
                               "--http-max-connections", "100"),
                     GM_OK);
    assert_string_equal(c.http_listen, "127.0.0.1:8000");
    assert_int_equal(c.http_max_body, 1 << 20);
    assert_int_equal(c.http_max_requests, 64);
    assert_int_equal(c.http_max_connections, 100);
    assert_string_equal(c.served_model_name, "gemma");
    gd_config_free(&c);
    key = write_file("key.txt", "  tok-123 \t\nsecond line\n");
    assert_int_equal(from_args(&c, &a, 6, "--backend", "null", "--http-listen", "[::1]:0", "--api-key-file", key), GM_OK);
    assert_string_equal(c.api_key, "tok-123");
    /* the printed settings name the key file, never the key */
    char buf[4096] = {0};
    FILE *f = fmemopen(buf, sizeof buf - 1, "w");
    gd_config_print(&c, f);
    fclose(f);
    assert_null(strstr(buf, "tok-123"));
    assert_non_null(strstr(buf, "api_key_file"));
    gd_config_free(&c);
    assert_int_equal(from_args(&c, &a, 4, "--backend", "null", "--api-key", "k"), GM_OK);
    assert_string_equal(c.api_key, "k");
    f = fmemopen(buf, sizeof buf - 1, "w");
    gd_config_print(&c, f);
    fclose(f);
    assert_null(strstr(buf, "\"k\""));
    gd_config_free(&c);
    const char *bad[][2] = {
        {"--http-listen", "tcp://127.0.0.1:8000"}, {"--http-listen", "8000"},   {"--http-max-body", "12"},
        {"--http-max-body", "lots"},               {"--http-max-requests", "-1"}, {"--http-max-connections", "0"},
        {"--api-key-file", "/nonexistent/key"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_not_equal(from_args(&c, &a, 4, "--backend", "null", bad[i][0], bad[i][1]), GM_OK);
        gd_config_free(&c);
    }
}

static void test_file_and_flags(void **state)
{
    (void)state;
    const char *p = write_file("a.conf", "# gemmad\n"
                                         "model = \"/models/gemma-2b\";\n"
                                         "backend = \"cuda\";\n"
                                         "tp = 2;\n"
                                         "kv_block_size = 32;\n"
                                         "kv_memory = \"2G\";\n"
                                         "kv_mem_fraction = 0.8;\n"
                                         "max_tokens_per_step = 4096;\n"
                                         "max_seqs = 256;\n"
                                         "max_context = 4096;\n"
                                         "listen = \"tcp://0.0.0.0:6000\";\n"
                                         "log_level = \"debug\";\n"
                                         "quant = \"fp8\";\n"
                                         "kv_dtype = \"fp8\";\n"
                                         "lm_head = \"fp8\";\n"
                                         "run_ahead = false;\n"
                                         "prefix_cache = false;\n");
    gd_config c;
    gd_action a;
    assert_int_equal(from_args(&c, &a, 2, "--config", p), GM_OK);
    assert_string_equal(c.model, "/models/gemma-2b");
    assert_int_equal(c.backend, GM_BACKEND_CUDA);
    assert_int_equal(c.tp, 2);
    assert_int_equal(c.kv_block_size, 32);
    assert_int_equal(c.kv_memory, 2ll << 30);
    assert_true(fabs(c.kv_mem_fraction - 0.8) < 1e-9);
    assert_int_equal(c.max_tokens_per_step, 4096);
    assert_int_equal(c.max_seqs, 256);
    assert_int_equal(c.max_context, 4096);
    assert_string_equal(c.listen, "tcp://0.0.0.0:6000");
    assert_int_equal(c.log_level, GM_LOG_DEBUG);
    assert_int_equal(c.quant, GM_QUANT_FP8);
    assert_int_equal(c.kv_dtype, GM_KV_FP8);
    assert_true(c.lm_head_fp8);
    assert_false(c.run_ahead);
    assert_false(c.prefix_cache);
    gd_config_free(&c);
    /* flags win, whatever their position relative to --config */
    assert_int_equal(from_args(&c, &a, 9, "--tp", "4", "--config", p, "--listen", "ipc:///tmp/x", "--kv-memory=64M",
                               "--max-seqs", "8"),
                     GM_OK);
    assert_int_equal(c.tp, 4);
    assert_string_equal(c.listen, "ipc:///tmp/x");
    assert_int_equal(c.kv_memory, 64ll << 20);
    assert_int_equal(c.max_seqs, 8);
    assert_int_equal(c.kv_block_size, 32); /* from the file */
    gd_config_free(&c);
    assert_int_equal(from_args(&c, &a, 3, "--config", p, "--check-config"), GM_OK);
    assert_int_equal(a, GD_ACTION_CHECK);
    /* printing gives a file that reads back the same */
    const char *p2 = write_file("b.conf", "");
    FILE *f = fopen(p2, "w");
    gd_config_print(&c, f);
    fclose(f);
    gd_config c2;
    assert_int_equal(from_args(&c2, &a, 2, "--config", p2), GM_OK);
    assert_string_equal(c2.model, c.model);
    assert_int_equal(c2.kv_memory, c.kv_memory);
    assert_int_equal(c2.tp, c.tp);
    assert_int_equal(c2.quant, c.quant);
    assert_int_equal(c2.run_ahead, c.run_ahead);
    assert_int_equal(c2.prefix_cache, c.prefix_cache);
    gd_config_free(&c2);
    gd_config_free(&c);
}

static void test_errors_name_the_line(void **state)
{
    (void)state;
    gd_config c;
    gd_action a;
    const char *p = write_file("bad1.conf", "backend = \"null\";\n\nmax_seq = 4;\n");
    assert_int_not_equal(from_args(&c, &a, 2, "--config", p), GM_OK);
    assert_non_null(strstr(gm_last_error(), "bad1.conf:3:"));
    assert_non_null(strstr(gm_last_error(), "max_seq"));
    gd_config_free(&c);
    p = write_file("bad2.conf", "backend = \"null\";\ntp = 0;\n");
    assert_int_not_equal(from_args(&c, &a, 2, "--config", p), GM_OK);
    assert_non_null(strstr(gm_last_error(), "bad2.conf:2:"));
    gd_config_free(&c);
    p = write_file("bad3.conf", "backend = \"null\"\nmax_seqs = ;\n"); /* syntax */
    assert_int_equal(from_args(&c, &a, 2, "--config", p), GM_ERR_FORMAT);
    assert_non_null(strstr(gm_last_error(), "bad3.conf:2"));
    gd_config_free(&c);
    p = write_file("bad4.conf", "backend = \"tpu\";\n");
    assert_int_not_equal(from_args(&c, &a, 2, "--config", p), GM_OK);
    assert_non_null(strstr(gm_last_error(), "bad4.conf:1:"));
    assert_non_null(strstr(gm_last_error(), "tpu"));
    gd_config_free(&c);
    p = write_file("bad5.conf", "backend = \"null\";\nkv_memory = \"lots\";\n");
    assert_int_not_equal(from_args(&c, &a, 2, "--config", p), GM_OK);
    assert_non_null(strstr(gm_last_error(), "bad5.conf:2:"));
    gd_config_free(&c);
    assert_int_equal(from_args(&c, &a, 2, "--config", "/nonexistent/gemmad.conf"), GM_ERR_IO);
    gd_config_free(&c);
    /* flags */
    assert_int_not_equal(from_args(&c, &a, 3, "--backend", "null", "--bogus"), GM_OK);
    assert_non_null(strstr(gm_last_error(), "bogus"));
    gd_config_free(&c);
    assert_int_not_equal(from_args(&c, &a, 3, "--backend", "null", "--tp"), GM_OK);
    gd_config_free(&c);
    assert_int_not_equal(from_args(&c, &a, 4, "--backend", "null", "--tp", "x"), GM_OK);
    assert_non_null(strstr(gm_last_error(), "--tp"));
    gd_config_free(&c);
    assert_int_not_equal(from_args(&c, &a, 4, "--backend", "null", "--listen", "http://x"), GM_OK);
    gd_config_free(&c);
    assert_int_not_equal(from_args(&c, &a, 3, "--backend", "null", "stray"), GM_OK);
    gd_config_free(&c);
}

static void test_sizes(void **state)
{
    (void)state;
    int64_t v;
    assert_true(args_parse_size("1048576", &v));
    assert_int_equal(v, 1048576);
    assert_true(args_parse_size("64M", &v));
    assert_int_equal(v, 64ll << 20);
    assert_true(args_parse_size("2G", &v));
    assert_int_equal(v, 2ll << 30);
    assert_true(args_parse_size("512k", &v));
    assert_int_equal(v, 512ll << 10);
    assert_true(args_parse_size("1.5G", &v));
    assert_int_equal(v, 3ll << 29);
    assert_true(args_parse_size("64MiB", &v));
    assert_int_equal(v, 64ll << 20);
    assert_false(args_parse_size("", &v));
    assert_false(args_parse_size("-1", &v));
    assert_false(args_parse_size("12X", &v));
    assert_false(args_parse_size("M", &v));
    assert_false(args_parse_size("1.5", &v));
}

/* Stop strings across deltas, held-back prefixes, the earliest of several. */
static void test_textout(void **state)
{
    (void)state;
    size_t n;
    const char *t;
    /* no stops: everything at once */
    txo *x = txo_new(NULL, NULL, 0);
    assert_false(txo_append(x, "Hello", 5));
    t = txo_ready(x, &n);
    assert_int_equal(n, 5);
    assert_memory_equal(t, "Hello", 5);
    txo_consume(x);
    txo_ready(x, &n);
    assert_int_equal(n, 0);
    txo_destroy(&x);
    assert_null(x);

    const char *stops[] = {"END", "\n\n"};
    size_t lens[] = {3, 2};
    x = txo_new(stops, lens, 2);
    assert_false(txo_append(x, "abc E", 5));
    t = txo_ready(x, &n); /* "E" held back */
    assert_int_equal(n, 4);
    assert_memory_equal(t, "abc ", 4);
    txo_consume(x);
    assert_false(txo_append(x, "N", 1));
    txo_ready(x, &n);
    assert_int_equal(n, 0); /* "EN" held */
    assert_false(txo_append(x, "x", 1)); /* "ENx" is no stop: all ready */
    t = txo_ready(x, &n);
    assert_int_equal(n, 3);
    assert_memory_equal(t, "ENx", 3);
    txo_consume(x);
    assert_true(txo_append(x, "yE", 2) == false);
    assert_true(txo_append(x, "ND and more", 11)); /* stop completes across deltas */
    assert_true(txo_stopped(x));
    t = txo_ready(x, &n);
    assert_int_equal(n, 1);
    assert_memory_equal(t, "y", 1);
    txo_consume(x);
    assert_true(txo_append(x, "ignored", 7));
    txo_finish(x);
    txo_ready(x, &n);
    assert_int_equal(n, 0);
    txo_destroy(&x);

    /* unarmed (min_tokens not reached): no match, nothing held back; armed again, a match may begin in text
     * not yet sent */
    x = txo_new(stops, lens, 2);
    txo_arm(x, false);
    assert_false(txo_append(x, "aEND bE", 7));
    txo_ready(x, &n);
    assert_int_equal(n, 7);
    txo_arm(x, true);
    assert_true(txo_append(x, "ND", 2));
    t = txo_ready(x, &n);
    assert_int_equal(n, 6);
    assert_memory_equal(t, "aEND b", 6);
    txo_destroy(&x);

    /* earliest of two matches in one delta */
    x = txo_new(stops, lens, 2);
    assert_true(txo_append(x, "a\n\nbEND", 7));
    t = txo_ready(x, &n);
    assert_int_equal(n, 1);
    txo_destroy(&x);

    /* held-back text is released at the end */
    x = txo_new(stops, lens, 2);
    assert_false(txo_append(x, "tail\n", 5));
    txo_ready(x, &n);
    assert_int_equal(n, 4);
    txo_finish(x);
    t = txo_ready(x, &n);
    assert_int_equal(n, 5);
    assert_memory_equal(t, "tail\n", 5);
    txo_destroy(&x);

    /* the whole text a stop string: nothing comes out */
    x = txo_new(stops, lens, 2);
    assert_true(txo_append(x, "END", 3));
    txo_finish(x);
    txo_ready(x, &n);
    assert_int_equal(n, 0);
    txo_destroy(&x);
}

static void test_u64map_and_metrics(void **state)
{
    (void)state;
    u64map m = {0};
    assert_null(u64map_get(&m, 5));
    static int vals[5000];
    for (int i = 1; i < 5000; i++)
        assert_true(u64map_put(&m, (uint64_t)i * 0x10000, &vals[i]));
    assert_int_equal(m.n, 4999);
    for (int i = 1; i < 5000; i += 2)
        assert_ptr_equal(u64map_del(&m, (uint64_t)i * 0x10000), &vals[i]);
    for (int i = 1; i < 5000; i++)
        assert_ptr_equal(u64map_get(&m, (uint64_t)i * 0x10000), i % 2 ? NULL : &vals[i]);
    for (int round = 0; round < 20; round++) /* churn: tombstones must not fill the table */
        for (int i = 1; i < 5000; i += 2) {
            assert_true(u64map_put(&m, (uint64_t)i * 0x10000 + 1, &vals[i]));
            assert_ptr_equal(u64map_del(&m, (uint64_t)i * 0x10000 + 1), &vals[i]);
        }
    assert_int_equal(m.n, 2499);
    assert_false(u64map_put(&m, 0, &vals[0]));
    u64map_free(&m);

    /* metrics: requests observed once when they end; Stats windows keep the last MET_WINDOW */
    gd_metrics mt;
    met_init(&mt);
    assert_true(met_pct(&mt.ttft, 50) == 0 && met_mean(&mt.step) == 0);
    for (int i = 1; i <= 100; i++) {
        met_req q = {1000.0, 1000.0 + i / 10.0, 1000.0 + i, 1000.0 + i + 10.0 * (i % 4), 7, 1 + i % 4};
        met_request_done(&mt, &q, i % 2 ? MET_STOP : MET_LENGTH, 0);
    }
    met_req q0 = {5.0, 0, 0, 9.0, 3, 0};
    met_request_done(&mt, &q0, MET_ERROR, GEMMA__V1__ERROR_CODE__PROMPT_TOO_LONG);
    met_request_done(&mt, &q0, MET_ERROR, 99);
    met_request_done(&mt, &q0, MET_CANCELLED, GEMMA__V1__ERROR_CODE__CANCELLED);
    assert_int_equal(mt.prom.finished[PROM_FINISH_STOP], 50);
    assert_int_equal(mt.prom.finished[PROM_FINISH_LENGTH], 50);
    assert_int_equal(mt.prom.failed[GEMMA__V1__ERROR_CODE__PROMPT_TOO_LONG], 1);
    assert_int_equal(mt.prom.failed[0], 1); /* unknown codes count as "other" */
    assert_int_equal(mt.prom.e2e.count, 100);
    assert_int_equal(mt.prom.ttft.count, 100);
    assert_int_equal(mt.prom.tpot.count, 75); /* one generated token has no time per output token */
    assert_int_equal(mt.prom.prompt_len.count, 100);
    assert_true(fabs(mt.prom.prompt_len.sum - 700) < 1e-9);
    assert_true(fabs(mt.prom.ttft.sum - 5050 / 1e3) < 1e-9); /* seconds */
    assert_true(fabs(met_pct(&mt.ttft, 50) - 50.5) < 1e-9); /* milliseconds */
    assert_true(fabs(met_pct(&mt.ttft, 100) - 100) < 1e-9);
    for (int i = 0; i < MET_WINDOW + 10; i++)
        met_step_done(&mt, i < 10 ? 1e6 : 2.0, 4);
    assert_true(fabs(met_mean(&mt.step) - 2.0) < 1e-9); /* the oldest fell out of the window */
    assert_true(fabs(met_pct(&mt.step_tok, 99) - 0.5) < 1e-9); /* per token: the watchdog's term */
    met_free(&mt);
    met_rate rt;
    memset(&rt, 0, sizeof rt);
    met_rate_tick(&rt, 10.0, 0);
    met_rate_tick(&rt, 10.5, 50); /* too soon: not kept */
    assert_true(fabs(met_rate_get(&rt, 12.0, 200) - 100.0) < 1e-9);
}

/* Round trips of the client API messages, and the decoder refusing garbage. */
static void test_proto(void **state)
{
    (void)state;
    Gemma__V1__ClientMessage cm = GEMMA__V1__CLIENT_MESSAGE__INIT;
    Gemma__V1__GenerateRequest g = GEMMA__V1__GENERATE_REQUEST__INIT;
    Gemma__V1__SamplingParams sp = GEMMA__V1__SAMPLING_PARAMS__INIT;
    Gemma__V1__TokenIds tk = GEMMA__V1__TOKEN_IDS__INIT;
    int32_t ids[] = {2, 651, 6037, 255999};
    char *stops[] = {"\n\n", "END"};
    tk.n_ids = 4;
    tk.ids = ids;
    sp.temperature = 0.7f;
    sp.top_k = 40;
    sp.top_p = 0.9f;
    sp.seed = 1ull << 40;
    g.prompt_case = GEMMA__V1__GENERATE_REQUEST__PROMPT_TOKENS;
    g.tokens = &tk;
    g.sampling = &sp;
    g.max_tokens = 128;
    g.n_stop = 2;
    g.stop = stops;
    g.stream = 1;
    cm.protocol_version = 1;
    cm.request_id = 42;
    cm.body_case = GEMMA__V1__CLIENT_MESSAGE__BODY_GENERATE;
    cm.generate = &g;
    size_t n = gemma__v1__client_message__get_packed_size(&cm);
    uint8_t *buf = malloc(n);
    gemma__v1__client_message__pack(&cm, buf);
    Gemma__V1__ClientMessage *back = gemma__v1__client_message__unpack(NULL, n, buf);
    assert_non_null(back);
    assert_int_equal(back->protocol_version, 1);
    assert_int_equal(back->request_id, 42);
    assert_int_equal(back->body_case, GEMMA__V1__CLIENT_MESSAGE__BODY_GENERATE);
    assert_int_equal(back->generate->prompt_case, GEMMA__V1__GENERATE_REQUEST__PROMPT_TOKENS);
    assert_int_equal(back->generate->tokens->n_ids, 4);
    assert_memory_equal(back->generate->tokens->ids, ids, sizeof ids);
    assert_true(back->generate->sampling->top_p == 0.9f);
    assert_int_equal(back->generate->sampling->seed, 1ull << 40);
    assert_int_equal(back->generate->n_stop, 2);
    assert_string_equal(back->generate->stop[1], "END");
    gemma__v1__client_message__free_unpacked(back, NULL);
    /* truncated: refused, never a crash */
    for (size_t cut = 1; cut < n; cut++) {
        Gemma__V1__ClientMessage *t = gemma__v1__client_message__unpack(NULL, cut, buf);
        if (t)
            gemma__v1__client_message__free_unpacked(t, NULL);
    }
    free(buf);
    uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02};
    assert_null(gemma__v1__client_message__unpack(NULL, sizeof garbage, garbage));

    /* a ServerMessage with many chunks */
    Gemma__V1__ServerMessage sm = GEMMA__V1__SERVER_MESSAGE__INIT;
    Gemma__V1__GenerateChunk ch[3], *chp[3];
    Gemma__V1__Usage u = GEMMA__V1__USAGE__INIT;
    int32_t t1 = 77;
    for (int i = 0; i < 3; i++) {
        ch[i] = (Gemma__V1__GenerateChunk)GEMMA__V1__GENERATE_CHUNK__INIT;
        ch[i].request_id = 100 + (uint64_t)i;
        ch[i].n_token_ids = 1;
        ch[i].token_ids = &t1;
        ch[i].text.data = (uint8_t *)"h\xc3\xa9";
        ch[i].text.len = 3;
        chp[i] = &ch[i];
    }
    u.prompt_tokens = 5;
    u.completion_tokens = 9;
    u.ttft_ms = 1.5;
    ch[2].finish_reason = GEMMA__V1__FINISH_REASON__FINISH_ERROR;
    ch[2].error_code = GEMMA__V1__ERROR_CODE__WORKER_FAILED;
    ch[2].error_message = "boom";
    ch[2].usage = &u;
    sm.protocol_version = 1;
    sm.n_chunks = 3;
    sm.chunks = chp;
    n = gemma__v1__server_message__get_packed_size(&sm);
    buf = malloc(n);
    gemma__v1__server_message__pack(&sm, buf);
    Gemma__V1__ServerMessage *sb = gemma__v1__server_message__unpack(NULL, n, buf);
    assert_non_null(sb);
    assert_int_equal(sb->n_chunks, 3);
    assert_int_equal(sb->chunks[1]->request_id, 101);
    assert_int_equal(sb->chunks[2]->error_code, GEMMA__V1__ERROR_CODE__WORKER_FAILED);
    assert_int_equal(sb->chunks[2]->usage->completion_tokens, 9);
    assert_int_equal(sb->chunks[0]->text.len, 3);
    assert_int_equal(sb->chunks[0]->finish_reason, GEMMA__V1__FINISH_REASON__FINISH_NONE);
    gemma__v1__server_message__free_unpacked(sb, NULL);
    free(buf);
    /* error codes keep the numbers the client header promises */
    assert_int_equal(GEMMA__V1__ERROR_CODE__PROMPT_TOO_LONG, 2);
    assert_int_equal(GEMMA__V1__ERROR_CODE__SHUTTING_DOWN, 10);
    assert_int_equal(GEMMA__V1__ERROR_CODE__DUPLICATE_ID, 12);
    assert_int_equal(GEMMA__V1__FINISH_REASON__FINISH_ERROR, 4);
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/gd-cfg-XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* A small deterministic generator for the encoder test. */
static uint64_t g_rng = 0x1234567;
static uint32_t rnd(void)
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(g_rng >> 33);
}

/* An int32 that is often zero, small, large or negative (every varint length). */
static int32_t rnd_i32(void)
{
    switch (rnd() % 6) {
    case 0: return 0;
    case 1: return (int32_t)(rnd() % 128);
    case 2: return (int32_t)(rnd() % 300000);
    case 3: return -(int32_t)(rnd() % 1000) - 1;
    case 4: return (int32_t)rnd();
    default: return rnd() % 2 ? INT32_MIN : INT32_MAX;
    }
}

static float rnd_f32(void)
{
    switch (rnd() % 4) {
    case 0: return 0.0f;
    case 1: return -0.0f;
    case 2: return 1.0f;
    default: return (float)rnd() / 1e6f;
    }
}

/* ctl/plan.c and wire.c write exactly protobuf-c's bytes for StepPlans and chunk ServerMessages. */
static void test_wire_matches_protobuf_c(void **state)
{
    (void)state;
    enum { MAXN = 40 };
    static int32_t toks[MAXN][8], blks[MAXN][8], ids[MAXN][8];
    static char texts[MAXN][16], msgs[MAXN][16];
    static Gemma__V1__TokenLogprobs lps[MAXN][8], *lpp[MAXN][8];
    static int32_t top_ids[MAXN][8][GM_MAX_TOP_LOGPROBS];
    static float top_lps[MAXN][8][GM_MAX_TOP_LOGPROBS];
    static ProtobufCBinaryData top_strs[MAXN][8][GM_MAX_TOP_LOGPROBS];
    static const char *const words[] = {"", " the", "<eos>", "\xe2", "\n", "caf\xc3\xa9 au lait, s'il vous plait"};
    for (int round = 0; round < 400; round++) {
        /* StepPlan */
        Gemma__Control__V1__SeqPlan sp[MAXN], *spp[MAXN];
        Gemma__Control__V1__Sampling sa[MAXN];
        size_t n = rnd() % MAXN;
        for (size_t i = 0; i < n; i++) {
            gemma__control__v1__seq_plan__init(&sp[i]);
            gemma__control__v1__sampling__init(&sa[i]);
            sp[i].slot = rnd_i32();
            sp[i].n_tokens = rnd() % 8;
            for (size_t j = 0; j < sp[i].n_tokens; j++)
                toks[i][j] = rnd() % 3 ? rnd_i32() : -1;
            sp[i].tokens = toks[i];
            sp[i].start_pos = rnd_i32();
            sp[i].n_block_table = rnd() % 8;
            for (size_t j = 0; j < sp[i].n_block_table; j++)
                blks[i][j] = rnd_i32();
            sp[i].block_table = blks[i];
            sp[i].logits_mode = rnd_i32();
            sp[i].reset = rnd() % 2;
            if (rnd() % 2) {
                sa[i].temperature = rnd_f32();
                sa[i].top_k = rnd_i32();
                sa[i].top_p = rnd_f32();
                sa[i].seed = rnd() % 2 ? 0 : ((uint64_t)rnd() << 32 | rnd());
                sp[i].sampling = &sa[i];
            }
            spp[i] = &sp[i];
        }
        Gemma__Control__V1__StepPlan plan = GEMMA__CONTROL__V1__STEP_PLAN__INIT;
        plan.step_id = rnd() % 3 ? ((uint64_t)rnd() << (rnd() % 32)) : 0;
        plan.seqs = spp;
        plan.n_seqs = n;
        int32_t copies[6];
        plan.n_block_copies = rnd() % 2 ? 0 : 2 * (rnd() % 4);
        for (size_t j = 0; j < plan.n_block_copies; j++)
            copies[j] = rnd_i32();
        plan.block_copies = copies;
        Gemma__Control__V1__ControlMessage cm = GEMMA__CONTROL__V1__CONTROL_MESSAGE__INIT;
        cm.body_case = GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_PLAN;
        cm.plan = &plan;
        size_t want = gemma__control__v1__control_message__get_packed_size(&cm);
        assert_int_equal(ctl_plan_size(&cm), want);
        uint8_t *a = malloc(want + 1), *b = malloc(want + 1);
        gemma__control__v1__control_message__pack(&cm, a);
        assert_int_equal(ctl_plan_pack(&cm, want, b), want);
        assert_memory_equal(a, b, want);
        free(a);
        free(b);

        /* ServerMessage of chunks */
        Gemma__V1__GenerateChunk ch[MAXN], *chp[MAXN];
        Gemma__V1__Usage us[MAXN];
        n = rnd() % MAXN;
        for (size_t i = 0; i < n; i++) {
            gemma__v1__generate_chunk__init(&ch[i]);
            gemma__v1__usage__init(&us[i]);
            ch[i].request_id = rnd() % 4 ? (uint64_t)rnd() << (rnd() % 33) : 0;
            ch[i].n_token_ids = rnd() % 8;
            for (size_t j = 0; j < ch[i].n_token_ids; j++)
                ids[i][j] = rnd_i32();
            ch[i].token_ids = ids[i];
            size_t tl = rnd() % 16;
            for (size_t j = 0; j < tl; j++)
                texts[i][j] = (char)('a' + rnd() % 26);
            ch[i].text.len = tl;
            ch[i].text.data = (uint8_t *)texts[i];
            ch[i].finish_reason = (Gemma__V1__FinishReason)(rnd() % 5);
            ch[i].error_code = (Gemma__V1__ErrorCode)(rnd() % 3 ? 0 : rnd() % 12);
            ch[i].index = rnd() % 2 ? 0 : rnd_i32();
            if (rnd() % 3 == 0) {
                us[i].prompt_tokens = rnd_i32();
                us[i].completion_tokens = rnd_i32();
                us[i].queue_ms = rnd() % 2 ? 0.0 : rnd() / 7.0;
                us[i].ttft_ms = rnd() % 2 ? -0.0 : rnd() / 3.0;
                us[i].total_ms = rnd() / 5.0;
                us[i].preemptions = rnd_i32();
                us[i].cached_tokens = rnd() % 2 ? 0 : rnd_i32();
                ch[i].usage = &us[i];
            }
            if (rnd() % 3 == 0) {
                size_t ml = rnd() % 15;
                for (size_t j = 0; j < ml; j++)
                    msgs[i][j] = (char)('A' + rnd() % 26);
                msgs[i][ml] = 0;
                ch[i].error_message = msgs[i];
            }
            if (rnd() % 2) { /* log-probabilities, one per token id, with 0..20 alternatives */
                for (size_t j = 0; j < ch[i].n_token_ids; j++) {
                    Gemma__V1__TokenLogprobs *t = &lps[i][j];
                    gemma__v1__token_logprobs__init(t);
                    t->logprob = rnd() % 5 ? -(float)(rnd() % 1000) / 37.0f : (rnd() % 2 ? 0.0f : -0.0f);
                    t->n_top_ids = t->n_top_logprobs = rnd() % (GM_MAX_TOP_LOGPROBS + 1);
                    for (size_t k = 0; k < t->n_top_ids; k++) {
                        top_ids[i][j][k] = rnd() % 4 ? (int32_t)(rnd() % 256000) : -1;
                        top_lps[i][j][k] = rnd() % 6 ? -(float)(rnd() % 1000) / 13.0f : -INFINITY;
                    }
                    t->top_ids = top_ids[i][j];
                    t->top_logprobs = top_lps[i][j];
                    if (rnd() % 4) { /* the tokens' strings (an older gemmad sends none) */
                        const char *wd = words[rnd() % 6];
                        t->token = (ProtobufCBinaryData){strlen(wd), (uint8_t *)wd};
                        t->n_top_tokens = t->n_top_ids;
                        t->top_tokens = top_strs[i][j];
                        for (size_t k = 0; k < t->n_top_ids; k++) {
                            wd = words[rnd() % 6];
                            top_strs[i][j][k] = (ProtobufCBinaryData){strlen(wd), (uint8_t *)wd};
                        }
                    }
                    lpp[i][j] = t;
                }
                ch[i].n_logprobs = ch[i].n_token_ids;
                ch[i].logprobs = lpp[i];
            }
            chp[i] = &ch[i];
        }
        Gemma__V1__ServerMessage sm = GEMMA__V1__SERVER_MESSAGE__INIT;
        sm.protocol_version = rnd() % 4 ? 1 : 0;
        sm.chunks = chp;
        sm.n_chunks = n;
        want = gemma__v1__server_message__get_packed_size(&sm);
        assert_int_equal(wire_chunks_size(&sm), want);
        a = malloc(want + 1);
        b = malloc(want + 1);
        gemma__v1__server_message__pack(&sm, a);
        assert_int_equal(wire_chunks_pack(&sm, b), want);
        assert_memory_equal(a, b, want);
        free(a);
        free(b);
    }
}

int main(void)
{
    gm_log_init("test", GM_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_http_settings),
        cmocka_unit_test(test_file_and_flags),
        cmocka_unit_test(test_errors_name_the_line),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_textout),
        cmocka_unit_test(test_u64map_and_metrics),
        cmocka_unit_test(test_proto),
        cmocka_unit_test(test_wire_matches_protobuf_c),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
