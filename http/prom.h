/* prom.h - Prometheus text exposition (format 0.0.4) and the metric set gemmad serves.
 *
 * Two layers. The writer (prom_write_*) appends families to a jsonw buffer:
 * `# HELP`, `# TYPE`, samples with escaped labels, histograms as cumulative
 * `_bucket{le="..."}` lines ending in `+Inf`, then `_sum` and `_count`. The
 * metric set (prom_metrics) is a plain struct the server fills as requests
 * finish and steps run; prom_render() writes all of it, `gemmad_` names shaped
 * like vLLM's `vllm:` ones so existing dashboards map one to one:
 *
 *   gemmad_request_success_total{finished_reason}   counter  stop | length | abort
 *   gemmad_request_failure_total{code}              counter  the RPC ErrorCode name, lower case
 *   gemmad_prompt_tokens_total, gemmad_generation_tokens_total   counters
 *   gemmad_num_preemptions_total, gemmad_worker_restarts_total   counters
 *   gemmad_prefix_cache_queries_total, gemmad_prefix_cache_hits_total  counters (tokens)
 *   gemmad_engine_steps_total                                    counter
 *   gemmad_beam_forks_total, gemmad_beam_shared_blocks_total     counters: beams re-pointed at another
 *                                                                beam's history, blocks taken by reference
 *   gemmad_spec_decode_num_drafts_total, gemmad_spec_decode_num_draft_tokens_total,
 *   gemmad_spec_decode_num_accepted_tokens_total  counters (speculative decoding, docs/SPECULATIVE.md)
 *   gemmad_num_requests_running, gemmad_num_requests_waiting     gauges
 *   gemmad_kv_cache_usage_perc (0..1), gemmad_kv_cache_blocks_total, gemmad_kv_cache_blocks_used  gauges
 *   gemmad_kv_cache_blocks_cached (prefix-cache blocks no sequence holds, reusable)            gauge
 *   gemmad_http_connections, gemmad_rpc_clients                  gauges
 *   gemmad_uptime_seconds                                        gauge
 *   gemmad_info{version,model,backend,tp} 1                      gauge
 *   gemmad_time_to_first_token_seconds, gemmad_time_per_output_token_seconds,
 *   gemmad_e2e_request_latency_seconds, gemmad_request_queue_time_seconds   histograms
 *   gemmad_request_prompt_tokens, gemmad_request_generation_tokens          histograms
 */
#ifndef GM_PROM_H
#define GM_PROM_H

#include <stdint.h>

#include "common/histo.h"
#include "common/jsonw.h"
#include "common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- writer ---- */

typedef enum prom_type { PROM_COUNTER, PROM_GAUGE, PROM_HISTOGRAM } prom_type;

/* One label pair; value is any UTF-8 (escaped on output). */
typedef struct prom_label {
    const char *name; /* [a-zA-Z_][a-zA-Z0-9_]*, not "le" */
    const char *value;
} prom_label;

/* `# HELP name help` (help escaped) and `# TYPE name type`. Write once per family. */
void prom_write_family(jsonw *w, const char *name, const char *help, prom_type type);
/* One sample line: name{labels} value. Counters and token counts: prom_write_u64. */
void prom_write_sample(jsonw *w, const char *name, const prom_label *labels, int32_t n_labels, double value);
void prom_write_u64(jsonw *w, const char *name, const prom_label *labels, int32_t n_labels, uint64_t value);
/* All lines of one histogram (family header not included): name_bucket{labels,le}
 * cumulative with +Inf last, name_sum, name_count. */
void prom_write_histo(jsonw *w, const char *name, const prom_label *labels, int32_t n_labels, const histo *h);
/* Append v escaped as a label value (backslash, double quote, newline). */
void prom_escape_label(jsonw *w, const char *v);
/* A float as the format wants it: shortest round-trip, +Inf, -Inf, NaN. */
void prom_write_value(jsonw *w, double v);
/* True when name is a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*). */
bool prom_name_valid(const char *name);

/* ---- gemmad's metric set ---- */

/* How a request that did not fail ended (vLLM's finished_reason label). */
typedef enum prom_finish {
    PROM_FINISH_STOP,   /* EOS, a stop string or token */
    PROM_FINISH_LENGTH, /* max_tokens or the context */
    PROM_FINISH_ABORT,  /* cancelled by the client or a disconnect */
    PROM_FINISH_COUNT
} prom_finish;

/* Failures, indexed by the RPC's ErrorCode number (proto/gemma.proto); codes
 * outside [1, PROM_MAX_ERROR_CODE] count under "other". */
#define PROM_MAX_ERROR_CODE 15

typedef struct prom_metrics {
    /* counters */
    uint64_t finished[PROM_FINISH_COUNT];
    uint64_t failed[PROM_MAX_ERROR_CODE + 1]; /* [0] = other */
    uint64_t prompt_tokens, generation_tokens;
    uint64_t preemptions, worker_restarts;
    uint64_t prefix_cache_queries, prefix_cache_hits; /* tokens looked up / found: sched_prefix_queries/hits */
    uint64_t steps;
    uint64_t beam_forks, beam_shared_blocks; /* sched_beam_forks / sched_beam_shared */
    uint64_t spec_drafts, spec_draft_tokens, spec_accepted_tokens; /* sched_spec_steps/drafted/accepted */
    /* gauges, set before rendering */
    int64_t running, waiting;
    int64_t kv_blocks_total, kv_blocks_used;
    int64_t kv_blocks_cached; /* sched_kv_cached: kept for the prefix cache, in no sequence's table */
    int64_t http_connections, rpc_clients;
    double uptime_s;
    /* info labels (borrowed; NULL shows as "") */
    const char *version, *model, *backend;
    int32_t tp;
    /* histograms: seconds, and tokens per request */
    histo ttft, tpot, e2e, queue;
    histo prompt_len, generation_len;
} prom_metrics;

/* Zero everything and give the histograms their bucket sets (HISTO_BOUNDS_*). */
void prom_metrics_init(prom_metrics *m);

/* The lower-case name of an ErrorCode used as the `code` label ("invalid_argument");
 * "other" for numbers the table does not know. */
const char *prom_error_name(int32_t code);
/* Count a failure under its ErrorCode number. */
void prom_count_failure(prom_metrics *m, int32_t code);

/* Render every family of m into w (appended). GM_ERR_NOMEM when w ran out. */
gm_status prom_render(const prom_metrics *m, jsonw *w);

/* The Content-Type of the text format. */
#define PROM_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

#ifdef __cplusplus
}
#endif
#endif
