#!/usr/bin/env python3
"""test_prom_parse.py TEST_PROM_BIN - gemmad's /metrics text parsed by prometheus_client.

Runs `test_prom --dump` (a filled metric set) and checks that prometheus_client's
parser reads every family with the right type, that escaped label values come back
exactly, and that histogram buckets are cumulative with +Inf equal to _count.
Exit 77 (skip) when prometheus_client is not installed."""
import math
import subprocess
import sys

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    print("prometheus_client not installed: skipping (pip install prometheus-client)")
    sys.exit(77)


def main():
    text = subprocess.run([sys.argv[1], "--dump"], check=True, capture_output=True, timeout=60).stdout.decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}

    want = {
        "gemmad_request_success": "counter",
        "gemmad_request_failure": "counter",
        "gemmad_prompt_tokens": "counter",
        "gemmad_generation_tokens": "counter",
        "gemmad_num_preemptions": "counter",
        "gemmad_worker_restarts": "counter",
        "gemmad_prefix_cache_queries": "counter",
        "gemmad_prefix_cache_hits": "counter",
        "gemmad_engine_steps": "counter",
        "gemmad_beam_forks": "counter",
        "gemmad_beam_shared_blocks": "counter",
        "gemmad_spec_decode_num_drafts": "counter",
        "gemmad_spec_decode_num_draft_tokens": "counter",
        "gemmad_spec_decode_num_accepted_tokens": "counter",
        "gemmad_num_requests_running": "gauge",
        "gemmad_num_requests_waiting": "gauge",
        "gemmad_kv_cache_usage_perc": "gauge",
        "gemmad_kv_cache_blocks_total": "gauge",
        "gemmad_kv_cache_blocks_used": "gauge",
        "gemmad_kv_cache_blocks_cached": "gauge",
        "gemmad_http_connections": "gauge",
        "gemmad_rpc_clients": "gauge",
        "gemmad_uptime_seconds": "gauge",
        "gemmad_info": "gauge",
        "gemmad_time_to_first_token_seconds": "histogram",
        "gemmad_time_per_output_token_seconds": "histogram",
        "gemmad_e2e_request_latency_seconds": "histogram",
        "gemmad_request_queue_time_seconds": "histogram",
        "gemmad_request_prompt_tokens": "histogram",
        "gemmad_request_generation_tokens": "histogram",
    }
    for name, typ in want.items():
        assert name in fams, f"family {name} missing; have {sorted(fams)}"
        assert fams[name].type == typ, f"{name}: type {fams[name].type}, want {typ}"
        assert fams[name].documentation, f"{name}: no HELP"
    assert set(fams) == set(want), f"unexpected families: {set(fams) - set(want)}"

    def value(fam, sample, **labels):
        for s in fams[fam].samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
        raise AssertionError(f"no sample {sample}{labels}")

    assert value("gemmad_request_success", "gemmad_request_success_total", finished_reason="stop") == 7
    assert value("gemmad_request_success", "gemmad_request_success_total", finished_reason="abort") == 1
    assert value("gemmad_request_failure", "gemmad_request_failure_total", code="overloaded") == 2
    assert value("gemmad_request_failure", "gemmad_request_failure_total", code="invalid_argument") == 1
    assert value("gemmad_generation_tokens", "gemmad_generation_tokens_total") == 5678
    assert value("gemmad_spec_decode_num_draft_tokens", "gemmad_spec_decode_num_draft_tokens_total") == 44
    assert value("gemmad_spec_decode_num_accepted_tokens", "gemmad_spec_decode_num_accepted_tokens_total") == 30
    assert value("gemmad_kv_cache_usage_perc", "gemmad_kv_cache_usage_perc") == 0.25
    assert value("gemmad_uptime_seconds", "gemmad_uptime_seconds") == 12.5
    info = fams["gemmad_info"].samples[0]
    assert info.labels == {"version": "0.1.0", "model": '/models/gemma "2b"\\it\n', "backend": "cpu", "tp": "2"}, info

    for name, typ in want.items():
        if typ != "histogram":
            continue
        buckets = [s for s in fams[name].samples if s.name == name + "_bucket"]
        les = [float(s.labels["le"]) for s in buckets]
        assert les == sorted(les) and math.isinf(les[-1]), f"{name}: le not increasing to +Inf: {les}"
        counts = [s.value for s in buckets]
        assert counts == sorted(counts), f"{name}: buckets not cumulative: {counts}"
        count = value(name, name + "_count")
        assert counts[-1] == count == 10, f"{name}: +Inf {counts[-1]} count {count}"
        assert value(name, name + "_sum") > 0
    ttft = fams["gemmad_time_to_first_token_seconds"]
    assert value("gemmad_time_to_first_token_seconds", "gemmad_time_to_first_token_seconds_bucket", le="0.1") == 10
    assert value("gemmad_time_to_first_token_seconds", "gemmad_time_to_first_token_seconds_bucket", le="0.04") == 4
    del ttft
    print(f"ok: {len(fams)} families parsed")


if __name__ == "__main__":
    main()
