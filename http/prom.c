/* prom.c - Prometheus text format writer and gemmad's metric families. */
#include "http/prom.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool prom_name_valid(const char *name)
{
    if (!name || !*name)
        return false;
    for (const char *p = name; *p; p++) {
        char c = *p;
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        if (!alpha && !(p > name && c >= '0' && c <= '9'))
            return false;
    }
    return true;
}

void prom_write_value(jsonw *w, double v)
{
    if (isnan(v)) {
        jsonw_rawz(w, "NaN");
        return;
    }
    if (isinf(v)) {
        jsonw_rawz(w, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    char b[32];
    snprintf(b, sizeof b, "%.15g", v);
    if (strtod(b, NULL) != v)
        snprintf(b, sizeof b, "%.17g", v);
    jsonw_rawz(w, b);
}

/* Escape for HELP text (backslash and newline) or a label value (also the quote). */
static void escape(jsonw *w, const char *v, bool quote)
{
    if (!v)
        return;
    const char *run = v;
    for (const char *p = v; *p; p++) {
        const char *e = *p == '\\' ? "\\\\" : *p == '\n' ? "\\n" : (quote && *p == '"') ? "\\\"" : NULL;
        if (!e)
            continue;
        jsonw_raw(w, run, (size_t)(p - run));
        jsonw_rawz(w, e);
        run = p + 1;
    }
    jsonw_rawz(w, run);
}

void prom_escape_label(jsonw *w, const char *v)
{
    escape(w, v, true);
}

void prom_write_family(jsonw *w, const char *name, const char *help, prom_type type)
{
    static const char *const types[] = {"counter", "gauge", "histogram"};
    jsonw_printf(w, "# HELP %s ", name);
    escape(w, help, false);
    jsonw_printf(w, "\n# TYPE %s %s\n", name, types[type]);
}

/* name+suffix{a="x",b="y"[,le="..."]} and a space, without the value; le NULL: no le label. */
static void write_head(jsonw *w, const char *name, const char *suffix, const prom_label *labels, int32_t n,
                       const char *le)
{
    jsonw_rawz(w, name);
    jsonw_rawz(w, suffix);
    if (n == 0 && !le) {
        jsonw_raw(w, " ", 1);
        return;
    }
    jsonw_raw(w, "{", 1);
    for (int32_t i = 0; i < n; i++) {
        jsonw_printf(w, "%s%s=\"", i ? "," : "", labels[i].name);
        prom_escape_label(w, labels[i].value ? labels[i].value : "");
        jsonw_raw(w, "\"", 1);
    }
    if (le)
        jsonw_printf(w, "%sle=\"%s\"", n ? "," : "", le);
    jsonw_raw(w, "} ", 2);
}

void prom_write_sample(jsonw *w, const char *name, const prom_label *labels, int32_t n_labels, double value)
{
    write_head(w, name, "", labels, n_labels, NULL);
    prom_write_value(w, value);
    jsonw_raw(w, "\n", 1);
}

void prom_write_u64(jsonw *w, const char *name, const prom_label *labels, int32_t n_labels, uint64_t value)
{
    write_head(w, name, "", labels, n_labels, NULL);
    jsonw_printf(w, "%" PRIu64 "\n", value);
}

void prom_write_histo(jsonw *w, const char *name, const prom_label *labels, int32_t n_labels, const histo *h)
{
    uint64_t cum = 0;
    for (int32_t i = 0; i <= h->n_bounds; i++) {
        cum += h->counts[i];
        char le[40];
        if (i == h->n_bounds) {
            snprintf(le, sizeof le, "+Inf");
        } else {
            snprintf(le, sizeof le, "%.15g", h->bounds[i]);
            if (strtod(le, NULL) != h->bounds[i])
                snprintf(le, sizeof le, "%.17g", h->bounds[i]);
        }
        write_head(w, name, "_bucket", labels, n_labels, le);
        jsonw_printf(w, "%" PRIu64 "\n", cum);
    }
    write_head(w, name, "_sum", labels, n_labels, NULL);
    prom_write_value(w, h->sum);
    jsonw_raw(w, "\n", 1);
    write_head(w, name, "_count", labels, n_labels, NULL);
    jsonw_printf(w, "%" PRIu64 "\n", h->count);
}

/* ---- gemmad's set ---- */

void prom_metrics_init(prom_metrics *m)
{
    memset(m, 0, sizeof(*m));
    /* the preset bound sets are valid by construction (test_histo checks them) */
    histo_init(&m->ttft, HISTO_BOUNDS_TTFT_S, HISTO_BOUNDS_TTFT_N);
    histo_init(&m->queue, HISTO_BOUNDS_TTFT_S, HISTO_BOUNDS_TTFT_N);
    histo_init(&m->tpot, HISTO_BOUNDS_TPOT_S, HISTO_BOUNDS_TPOT_N);
    histo_init(&m->e2e, HISTO_BOUNDS_E2E_S, HISTO_BOUNDS_E2E_N);
    histo_init(&m->prompt_len, HISTO_BOUNDS_TOKENS, HISTO_BOUNDS_TOKENS_N);
    histo_init(&m->generation_len, HISTO_BOUNDS_TOKENS, HISTO_BOUNDS_TOKENS_N);
}

/* proto/gemma.proto's ErrorCode names, lower case, by number (test_prom checks them). */
static const char *const g_error_names[PROM_MAX_ERROR_CODE + 1] = {
    [0] = "other",
    [1] = "invalid_argument",
    [2] = "prompt_too_long",
    [3] = "overloaded",
    [4] = "cancelled",
    [5] = "internal",
    [6] = "worker_failed",
    [7] = "unsupported_version",
    [8] = "malformed",
    [9] = "not_found",
    [10] = "shutting_down",
    [11] = "unknown_type",
    [12] = "duplicate_id",
    [13] = "unavailable",
    [14] = "nonfinite_logits",
};

const char *prom_error_name(int32_t code)
{
    if (code < 0 || code > PROM_MAX_ERROR_CODE || !g_error_names[code])
        return "other";
    return g_error_names[code];
}

void prom_count_failure(prom_metrics *m, int32_t code)
{
    if (code < 1 || code > PROM_MAX_ERROR_CODE || !g_error_names[code])
        code = 0;
    m->failed[code]++;
}

static void counter(jsonw *w, const char *name, const char *help, uint64_t v)
{
    prom_write_family(w, name, help, PROM_COUNTER);
    prom_write_u64(w, name, NULL, 0, v);
}

static void gauge(jsonw *w, const char *name, const char *help, double v)
{
    prom_write_family(w, name, help, PROM_GAUGE);
    prom_write_sample(w, name, NULL, 0, v);
}

static void histogram(jsonw *w, const char *name, const char *help, const histo *h)
{
    prom_write_family(w, name, help, PROM_HISTOGRAM);
    prom_write_histo(w, name, NULL, 0, h);
}

gm_status prom_render(const prom_metrics *m, jsonw *w)
{
    static const char *const finish[PROM_FINISH_COUNT] = {"stop", "length", "abort"};
    prom_write_family(w, "gemmad_request_success_total", "Requests that finished, by finish reason.", PROM_COUNTER);
    for (int i = 0; i < PROM_FINISH_COUNT; i++)
        prom_write_u64(w, "gemmad_request_success_total", &(prom_label){"finished_reason", finish[i]}, 1,
                       m->finished[i]);
    prom_write_family(w, "gemmad_request_failure_total", "Requests that ended in an error, by error code.",
                      PROM_COUNTER);
    for (int i = 0; i <= PROM_MAX_ERROR_CODE; i++)
        if (g_error_names[i])
            prom_write_u64(w, "gemmad_request_failure_total", &(prom_label){"code", g_error_names[i]}, 1,
                           m->failed[i]);
    counter(w, "gemmad_prompt_tokens_total", "Prompt tokens admitted.", m->prompt_tokens);
    counter(w, "gemmad_generation_tokens_total", "Tokens generated.", m->generation_tokens);
    counter(w, "gemmad_num_preemptions_total", "Sequences preempted (KV blocks taken back, recomputed later).",
            m->preemptions);
    counter(w, "gemmad_worker_restarts_total", "Times the worker processes were restarted after a failure.",
            m->worker_restarts);
    counter(w, "gemmad_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.",
            m->prefix_cache_queries);
    counter(w, "gemmad_prefix_cache_hits_total", "Prompt tokens found in the prefix cache.", m->prefix_cache_hits);
    counter(w, "gemmad_engine_steps_total", "Engine steps run.", m->steps);
    counter(w, "gemmad_beam_forks_total", "Beam search: beams re-pointed at another beam's history.", m->beam_forks);
    counter(w, "gemmad_beam_shared_blocks_total",
            "Beam search: KV blocks those beams took by reference instead of computing them.", m->beam_shared_blocks);
    counter(w, "gemmad_spec_decode_num_drafts_total", "Speculative decoding: verify steps of drafted tokens.",
            m->spec_drafts);
    counter(w, "gemmad_spec_decode_num_draft_tokens_total", "Speculative decoding: tokens drafted.",
            m->spec_draft_tokens);
    counter(w, "gemmad_spec_decode_num_accepted_tokens_total",
            "Speculative decoding: drafted tokens the model confirmed.", m->spec_accepted_tokens);

    gauge(w, "gemmad_num_requests_running", "Requests in the running batch.", (double)m->running);
    gauge(w, "gemmad_num_requests_waiting", "Requests waiting to be scheduled.", (double)m->waiting);
    double usage = m->kv_blocks_total > 0 ? (double)m->kv_blocks_used / (double)m->kv_blocks_total : 0;
    gauge(w, "gemmad_kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = full).", usage);
    gauge(w, "gemmad_kv_cache_blocks_total", "KV-cache blocks in the pool.", (double)m->kv_blocks_total);
    gauge(w, "gemmad_kv_cache_blocks_used", "KV-cache blocks in use.", (double)m->kv_blocks_used);
    gauge(w, "gemmad_kv_cache_blocks_cached",
          "KV-cache blocks kept for the prefix cache (in no sequence, reused or evicted as needed).",
          (double)m->kv_blocks_cached);
    gauge(w, "gemmad_http_connections", "Open HTTP connections.", (double)m->http_connections);
    gauge(w, "gemmad_rpc_clients", "Connected RPC clients.", (double)m->rpc_clients);
    gauge(w, "gemmad_uptime_seconds", "Seconds since gemmad started.", m->uptime_s);

    char tp[16];
    snprintf(tp, sizeof tp, "%d", m->tp);
    prom_label info[] = {{"version", m->version}, {"model", m->model}, {"backend", m->backend}, {"tp", tp}};
    prom_write_family(w, "gemmad_info", "Build and model of this gemmad (value 1).", PROM_GAUGE);
    prom_write_sample(w, "gemmad_info", info, 4, 1);

    histogram(w, "gemmad_time_to_first_token_seconds", "Arrival to first generated token.", &m->ttft);
    histogram(w, "gemmad_time_per_output_token_seconds", "Time between output tokens after the first, per request.",
              &m->tpot);
    histogram(w, "gemmad_e2e_request_latency_seconds", "Arrival to last token.", &m->e2e);
    histogram(w, "gemmad_request_queue_time_seconds", "Arrival to first scheduled.", &m->queue);
    histogram(w, "gemmad_request_prompt_tokens", "Prompt tokens per request.", &m->prompt_len);
    histogram(w, "gemmad_request_generation_tokens", "Generated tokens per request.", &m->generation_len);
    return jsonw_ok(w) ? GM_OK : gm_fail(GM_ERR_NOMEM, "metrics: out of memory rendering /metrics");
}
