/* test_prom.c - http/prom: the text format line by line, label and HELP escaping,
 * histogram buckets cumulative with +Inf last, the error-code names equal to
 * proto/gemma.proto's. `test_prom --dump` prints a filled metric set for
 * tests/test_prom_parse.py, which parses it with prometheus_client. */
#include <ctype.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http/prom.h"
#include "proto/gemma.pb-c.h"
#include "tests/test_check.h"

static void test_prom_lines(void **st)
{
    jsonw w = {0};
    prom_write_family(&w, "x_total", "Help with \\ and\nnewline \"quoted\".", PROM_COUNTER);
    assert_string_equal(w.p, "# HELP x_total Help with \\\\ and\\nnewline \"quoted\".\n# TYPE x_total counter\n");
    jsonw_reset(&w);
    prom_label l[] = {{"a", "q\"b\\c\nd"}, {"b", NULL}};
    prom_write_u64(&w, "x_total", l, 2, 18446744073709551615ull);
    assert_string_equal(w.p, "x_total{a=\"q\\\"b\\\\c\\nd\",b=\"\"} 18446744073709551615\n");
    jsonw_reset(&w);
    prom_write_sample(&w, "g", NULL, 0, 0.25);
    prom_write_sample(&w, "g", NULL, 0, INFINITY);
    prom_write_sample(&w, "g", NULL, 0, -INFINITY);
    prom_write_sample(&w, "g", NULL, 0, NAN);
    prom_write_sample(&w, "g", NULL, 0, 1e-7);
    prom_write_sample(&w, "g", NULL, 0, 0.1 + 0.2);
    assert_string_equal(w.p, "g 0.25\ng +Inf\ng -Inf\ng NaN\ng 1e-07\ng 0.30000000000000004\n");
    jsonw_free(&w);
    assert_true(prom_name_valid("gemmad_x:y_1"));
    assert_false(prom_name_valid("1x"));
    assert_false(prom_name_valid("a-b"));
    assert_false(prom_name_valid(""));
}

static void test_prom_histo(void **st)
{
    histo h;
    double b[] = {0.1, 1, 10};
    GOK(histo_init(&h, b, 3));
    histo_observe(&h, 0.05);
    histo_observe(&h, 0.5);
    histo_observe(&h, 0.5);
    histo_observe(&h, 100);
    jsonw w = {0};
    prom_write_histo(&w, "lat_seconds", &(prom_label){"m", "x"}, 1, &h);
    assert_string_equal(w.p, "lat_seconds_bucket{m=\"x\",le=\"0.1\"} 1\n"
                             "lat_seconds_bucket{m=\"x\",le=\"1\"} 3\n"
                             "lat_seconds_bucket{m=\"x\",le=\"10\"} 3\n"
                             "lat_seconds_bucket{m=\"x\",le=\"+Inf\"} 4\n"
                             "lat_seconds_sum{m=\"x\"} 101.05\n"
                             "lat_seconds_count{m=\"x\"} 4\n");
    jsonw_reset(&w);
    prom_write_histo(&w, "h", NULL, 0, &h);
    assert_non_null(strstr(w.p, "h_bucket{le=\"+Inf\"} 4\nh_sum 101.05\nh_count 4\n"));
    jsonw_free(&w);
}

/* The label names equal the RPC's ErrorCode names, lower case. */
static void test_prom_error_names(void **st)
{
    const ProtobufCEnumDescriptor *d = &gemma__v1__error_code__descriptor;
    assert_true(d->n_values <= PROM_MAX_ERROR_CODE + 1);
    for (unsigned i = 0; i < d->n_values; i++) {
        int v = d->values[i].value;
        if (v == 0)
            continue;
        char lower[64];
        size_t k = 0;
        for (const char *p = d->values[i].name; *p && k < sizeof lower - 1; p++)
            lower[k++] = (char)tolower((unsigned char)*p);
        lower[k] = 0;
        assert_string_equal(prom_error_name(v), lower);
    }
    assert_string_equal(prom_error_name(0), "other");
    assert_string_equal(prom_error_name(-3), "other");
    assert_string_equal(prom_error_name(999), "other");
    prom_metrics m;
    prom_metrics_init(&m);
    prom_count_failure(&m, 3);
    prom_count_failure(&m, 999);
    prom_count_failure(&m, 15); /* in range, unnamed */
    assert_int_equal(m.failed[3], 1);
    assert_int_equal(m.failed[0], 2);
}

/* A metric set with every kind of value, as the server would fill it. */
static void fill(prom_metrics *m)
{
    prom_metrics_init(m);
    m->finished[PROM_FINISH_STOP] = 7;
    m->finished[PROM_FINISH_LENGTH] = 3;
    m->finished[PROM_FINISH_ABORT] = 1;
    prom_count_failure(m, 1);
    prom_count_failure(m, 3);
    prom_count_failure(m, 3);
    m->prompt_tokens = 1234;
    m->generation_tokens = 5678;
    m->preemptions = 2;
    m->worker_restarts = 1;
    m->prefix_cache_queries = 100;
    m->prefix_cache_hits = 40;
    m->steps = 99;
    m->spec_drafts = 11, m->spec_draft_tokens = 44, m->spec_accepted_tokens = 30;
    m->running = 4;
    m->waiting = 2;
    m->kv_blocks_total = 200;
    m->kv_blocks_used = 50;
    m->kv_blocks_cached = 30;
    m->http_connections = 3;
    m->rpc_clients = 1;
    m->uptime_s = 12.5;
    m->version = "0.1.0";
    m->model = "/models/gemma \"2b\"\\it\n";
    m->backend = "cpu";
    m->tp = 2;
    for (int i = 0; i < 10; i++) {
        histo_observe(&m->ttft, 0.01 * (i + 1) - 0.001);
        histo_observe(&m->tpot, 0.002 * (i + 1));
        histo_observe(&m->e2e, 0.5 * (i + 1));
        histo_observe(&m->queue, 0.001 * i);
        histo_observe(&m->prompt_len, 10 * (i + 1));
        histo_observe(&m->generation_len, 100 * (i + 1));
    }
}

static void test_prom_render(void **st)
{
    prom_metrics m;
    fill(&m);
    jsonw w = {0};
    GOK(prom_render(&m, &w));
    assert_non_null(strstr(w.p, "gemmad_request_success_total{finished_reason=\"stop\"} 7\n"));
    assert_non_null(strstr(w.p, "gemmad_request_failure_total{code=\"overloaded\"} 2\n"));
    assert_non_null(strstr(w.p, "gemmad_kv_cache_usage_perc 0.25\n"));
    assert_non_null(strstr(w.p, "gemmad_kv_cache_blocks_cached 30\n"));
    assert_non_null(strstr(w.p, "# TYPE gemmad_time_to_first_token_seconds histogram\n"));
    assert_non_null(strstr(w.p, "gemmad_time_to_first_token_seconds_count 10\n"));
    assert_non_null(strstr(w.p, "model=\"/models/gemma \\\"2b\\\"\\\\it\\n\""));
    /* every line is a comment or "name[{...}] value" with a known family */
    size_t lines = 0;
    for (char *p = w.p; *p;) {
        char *nl = strchr(p, '\n');
        assert_non_null(nl);
        assert_true(nl > p);
        if (*p != '#')
            assert_true(strncmp(p, "gemmad_", 7) == 0);
        lines++;
        p = nl + 1;
    }
    assert_true(lines > 100);
    jsonw_free(&w);
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--dump")) {
        prom_metrics m;
        fill(&m);
        jsonw w = {0};
        if (prom_render(&m, &w) != GM_OK)
            return 1;
        fwrite(w.p, 1, w.len, stdout);
        jsonw_free(&w);
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prom_lines),
        cmocka_unit_test(test_prom_histo),
        cmocka_unit_test(test_prom_error_names),
        cmocka_unit_test(test_prom_render),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
