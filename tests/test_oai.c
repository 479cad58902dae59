/* test_oai.c - http/oai: every request field of /v1/completions and /v1/chat/completions,
 * every refusal with its OpenAI error (status, param, code), Gemma's chat turns, /tokenize and
 * /detokenize bodies, and the response shapes (whole bodies, SSE chunks, logprobs in both
 * forms, errors, /v1/models) read back with cJSON. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>
#include <cmocka.h>

#include "http/oai.h"
#include "tests/test_check.h"

static oai_request R;
static oai_error E;

static gm_status parse(oai_endpoint ep, const char *body)
{
    memset(&E, 0, sizeof E);
    return oai_parse_request(ep, body, strlen(body), &R, &E);
}

/* body must parse; R holds it until the next ok()/bad() */
static void ok(oai_endpoint ep, const char *body)
{
    oai_request_free(&R);
    if (parse(ep, body) != GM_OK)
        fail_msg("%s: refused: %d %s (param %s)", body, E.status, E.message, E.param);
}

static void bad_(int line, oai_endpoint ep, const char *body, int status, const char *param, const char *code)
{
    oai_request_free(&R);
    if (parse(ep, body) == GM_OK)
        fail_msg("line %d: %s: accepted", line, body);
    if (E.status != status || strcmp(E.param, param ? param : "") != 0 ||
        (code ? !E.code || strcmp(E.code, code) : E.code != NULL))
        fail_msg("line %d: %s: got %d param '%s' code %s (%s); want %d '%s' %s", line, body, E.status, E.param,
                 E.code ? E.code : "null", E.message, status, param ? param : "", code ? code : "null");
    assert_string_equal(E.type, status >= 500 ? "server_error" : "invalid_request_error");
    assert_true(strlen(E.message) > 10);
    /* the request is empty after a refusal */
    assert_null(R.prompts);
    assert_null(R.messages);
    assert_null(R.model);
}
#define bad(ep, body, param, code) bad_(__LINE__, ep, body, 400, param, code)

#define C OAI_COMPLETIONS
#define CH OAI_CHAT

static void test_defaults(void **st)
{
    ok(C, "{\"prompt\": \"hi\"}");
    assert_int_equal(R.endpoint, C);
    assert_null(R.model);
    assert_int_equal(R.n_prompts, 1);
    assert_string_equal(R.prompts[0].text, "hi");
    assert_int_equal(R.prompts[0].text_len, 2);
    assert_null(R.prompts[0].ids);
    assert_int_equal(R.max_tokens, -1);
    assert_false(R.has_temperature);
    assert_false(R.has_top_p);
    assert_false(R.has_seed);
    assert_int_equal(R.top_k, 0);
    assert_int_equal(R.n_stop, 0);
    assert_false(R.stream);
    assert_false(R.include_usage);
    assert_false(R.logprobs);
    assert_int_equal(R.n, 1);
    assert_int_equal(R.best_of, 0);
    assert_true(R.repetition_penalty == 1.0);
    assert_true(R.presence_penalty == 0.0 && R.frequency_penalty == 0.0);
    assert_true(R.length_penalty == 1.0);
    assert_int_equal(R.min_tokens, 0);
    assert_int_equal(R.num_speculative_tokens, -1); /* not given: the server's default */
    assert_null(R.user);
    oai_request_free(&R);
    oai_request_free(&R); /* twice is fine */
}

static void test_all_fields(void **st)
{
    ok(C, "{\"model\": \"gemma\", \"prompt\": \"once\", \"max_tokens\": 32, \"temperature\": 0.7, \"top_p\": 0.9,"
          " \"top_k\": 40, \"seed\": 42, \"stop\": [\"\\n\", \"END\"], \"stop_token_ids\": [1, 107], \"stream\": true,"
          " \"stream_options\": {\"include_usage\": true}, \"logprobs\": 3, \"echo\": true, \"presence_penalty\": 0.5,"
          " \"frequency_penalty\": -0.5, \"repetition_penalty\": 1.1, \"min_tokens\": 4, \"ignore_eos\": true,"
          " \"n\": 2, \"best_of\": 3, \"use_beam_search\": false, \"length_penalty\": 0.8, \"early_stopping\": true,"
          " \"user\": \"u-1\", \"response_format\": {\"type\": \"text\"}, \"logit_bias\": {}, \"suffix\": null}");
    assert_string_equal(R.model, "gemma");
    assert_int_equal(R.max_tokens, 32);
    assert_true(R.has_temperature && fabs(R.temperature - 0.7) < 1e-12);
    assert_true(R.has_top_p && fabs(R.top_p - 0.9) < 1e-12);
    assert_int_equal(R.top_k, 40);
    assert_true(R.has_seed);
    assert_int_equal(R.seed, 42);
    assert_int_equal(R.n_stop, 2);
    assert_string_equal(R.stop[0], "\n");
    assert_string_equal(R.stop[1], "END");
    assert_int_equal(R.n_stop_ids, 2);
    assert_int_equal(R.stop_ids[1], 107);
    assert_true(R.stream && R.include_usage);
    assert_true(R.logprobs);
    assert_int_equal(R.top_logprobs, 3);
    assert_true(R.echo);
    assert_true(R.presence_penalty == 0.5 && R.frequency_penalty == -0.5);
    assert_true(fabs(R.repetition_penalty - 1.1) < 1e-12);
    assert_int_equal(R.min_tokens, 4);
    assert_true(R.ignore_eos);
    assert_int_equal(R.n, 2);
    assert_int_equal(R.best_of, 3);
    assert_false(R.use_beam_search);
    assert_true(fabs(R.length_penalty - 0.8) < 1e-12);
    assert_true(R.early_stopping);
    assert_string_equal(R.user, "u-1");

    /* nulls are "not given"; unknown fields are ignored */
    ok(C, "{\"prompt\": \"x\", \"max_tokens\": null, \"temperature\": null, \"stop\": null, \"seed\": null,"
          " \"logprobs\": null, \"stream_options\": null, \"n\": null, \"tools\": null, \"foo\": {\"bar\": [1, {}]},"
          " \"metadata\": {\"k\": \"v\"}, \"store\": false}");
    assert_int_equal(R.max_tokens, -1);
    assert_false(R.has_temperature || R.has_seed || R.logprobs);
    assert_int_equal(R.n, 1);
    /* integral decimals count as integers; top_k -1 is off */
    ok(C, "{\"prompt\": \"x\", \"max_tokens\": 8.0, \"top_k\": -1, \"seed\": -1, \"temperature\": 0, \"top_p\": 1}");
    assert_int_equal(R.max_tokens, 8);
    assert_int_equal(R.top_k, 0);
    assert_true(R.seed == UINT64_MAX);
    assert_true(R.temperature == 0 && R.top_p == 1);
    ok(C, "{\"prompt\": \"x\", \"seed\": 1e19, \"temperature\": 2, \"stop\": \"one\"}");
    assert_true(R.seed == 10000000000000000000ull);
    assert_int_equal(R.n_stop, 1);
    assert_string_equal(R.stop[0], "one");
    ok(C, "{\"prompt\": \"x\", \"stop\": [], \"stop_token_ids\": []}");
    assert_int_equal(R.n_stop, 0);
    assert_int_equal(R.n_stop_ids, 0);
    /* whitespace around the body */
    ok(C, " \n{\"prompt\": \"x\"}\r\n\t ");
    oai_request_free(&R);
}

static void test_prompts(void **st)
{
    ok(C, "{\"prompt\": [\"a\", \"bc\"]}");
    assert_int_equal(R.n_prompts, 2);
    assert_string_equal(R.prompts[1].text, "bc");
    ok(C, "{\"prompt\": [2, 651, 0]}");
    assert_int_equal(R.n_prompts, 1);
    assert_null(R.prompts[0].text);
    assert_int_equal(R.prompts[0].n_ids, 3);
    assert_int_equal(R.prompts[0].ids[1], 651);
    ok(C, "{\"prompt\": [[2, 5], [2, 6, 7]]}");
    assert_int_equal(R.n_prompts, 2);
    assert_int_equal(R.prompts[1].n_ids, 3);
    assert_int_equal(R.prompts[1].ids[2], 7);
    ok(C, "{\"prompt\": \"caf\\u00e9 \\ud83d\\ude42\"}");
    assert_string_equal(R.prompts[0].text, "caf\xc3\xa9 \xf0\x9f\x99\x82");
    ok(C, "{\"prompt\": [2147483647]}");

    bad(C, "{}", "prompt", "missing_required_parameter");
    bad(C, "{\"prompt\": null}", "prompt", "missing_required_parameter");
    bad(C, "{\"prompt\": \"\"}", "prompt", NULL);
    bad(C, "{\"prompt\": []}", "prompt", "array_below_min_length");
    bad(C, "{\"prompt\": 5}", "prompt", "invalid_type");
    bad(C, "{\"prompt\": {\"text\": \"x\"}}", "prompt", "invalid_type");
    bad(C, "{\"prompt\": [\"a\", 5]}", "prompt[1]", "invalid_type");
    bad(C, "{\"prompt\": [\"a\", \"\"]}", "prompt[1]", NULL);
    bad(C, "{\"prompt\": [5, \"a\"]}", "prompt[1]", "invalid_type");
    bad(C, "{\"prompt\": [2, -1]}", "prompt[1]", "integer_below_min_value");
    bad(C, "{\"prompt\": [2, 2147483648]}", "prompt[1]", "integer_above_max_value");
    bad(C, "{\"prompt\": [2, 1.5]}", "prompt[1]", "invalid_type");
    bad(C, "{\"prompt\": [2, true]}", "prompt[1]", "invalid_type");
    bad(C, "{\"prompt\": [[2], []]}", "prompt[1]", "array_below_min_length");
    bad(C, "{\"prompt\": [[2], [2, \"x\"]]}", "prompt[1][1]", "invalid_type");
    bad(C, "{\"prompt\": [[2], \"x\"]}", "prompt[1]", "invalid_type");
    bad(C, "{\"prompt\": [null]}", "prompt[0]", "invalid_type");
    bad(C, "{\"prompt\": [{}]}", "prompt[0]", "invalid_type");
    char big[4096];
    int k = snprintf(big, sizeof big, "{\"prompt\": [");
    for (int i = 0; i <= OAI_MAX_PROMPTS; i++)
        k += snprintf(big + k, sizeof big - (size_t)k, "%s\"p\"", i ? "," : "");
    snprintf(big + k, sizeof big - (size_t)k, "]}");
    bad(C, big, "prompt", "array_above_max_length");
    oai_request_free(&R);
}

static void test_messages(void **st)
{
    ok(CH, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}");
    assert_int_equal(R.endpoint, CH);
    assert_int_equal(R.n_messages, 1);
    assert_int_equal(R.messages[0].role, OAI_ROLE_USER);
    assert_string_equal(R.messages[0].content, "hi");
    assert_null(R.prompts);
    ok(CH, "{\"messages\": [{\"role\": \"system\", \"content\": \"be brief\"},"
           " {\"role\": \"developer\", \"content\": \"d\"},"
           " {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"a\"}, {\"type\": \"text\", \"text\": \"b\"}],"
           "  \"name\": \"bob\"},"
           " {\"role\": \"assistant\", \"content\": null, \"tool_calls\": []},"
           " {\"role\": \"user\", \"content\": []}]}");
    assert_int_equal(R.n_messages, 5);
    assert_int_equal(R.messages[0].role, OAI_ROLE_SYSTEM);
    assert_int_equal(R.messages[1].role, OAI_ROLE_DEVELOPER);
    assert_string_equal(R.messages[2].content, "a\nb");
    assert_int_equal(R.messages[2].content_len, 3);
    assert_int_equal(R.messages[3].role, OAI_ROLE_ASSISTANT);
    assert_string_equal(R.messages[3].content, "");
    assert_string_equal(R.messages[4].content, "");

    bad(CH, "{}", "messages", "missing_required_parameter");
    bad(CH, "{\"messages\": []}", "messages", "array_below_min_length");
    bad(CH, "{\"messages\": \"hi\"}", "messages", "invalid_type");
    bad(CH, "{\"messages\": [\"hi\"]}", "messages[0]", "invalid_type");
    bad(CH, "{\"messages\": [{\"content\": \"hi\"}]}", "messages[0].role", "missing_required_parameter");
    bad(CH, "{\"messages\": [{\"role\": 1, \"content\": \"hi\"}]}", "messages[0].role", "invalid_type");
    bad(CH, "{\"messages\": [{\"role\": \"robot\", \"content\": \"hi\"}]}", "messages[0].role", "invalid_value");
    bad(CH, "{\"messages\": [{\"role\": \"tool\", \"content\": \"hi\"}]}", "messages[0].role", "unsupported_value");
    bad(CH, "{\"messages\": [{\"role\": \"user\"}]}", "messages[0].content", "missing_required_parameter");
    bad(CH, "{\"messages\": [{\"role\": \"user\", \"content\": null}]}", "messages[0].content",
        "missing_required_parameter");
    bad(CH, "{\"messages\": [{\"role\": \"user\", \"content\": 3}]}", "messages[0].content", "invalid_type");
    bad(CH, "{\"messages\": [{\"role\": \"user\", \"content\": [\"x\"]}]}", "messages[0].content[0]", "invalid_type");
    bad(CH, "{\"messages\": [{\"role\": \"user\", \"content\": [{\"text\": \"x\"}]}]}", "messages[0].content[0].type",
        "missing_required_parameter");
    bad(CH,
        "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\", \"image_url\": {\"url\": \"x\"}}]}]}",
        "messages[0].content[0].type", "unsupported_value");
    bad(CH, "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\"}]}]}",
        "messages[0].content[0].text", "missing_required_parameter");
    bad(CH, "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": 1}]}]}",
        "messages[0].content[0].text", "invalid_type");
    bad(CH, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"tool_calls\": [{}]}]}",
        "messages[1].tool_calls", "unsupported_parameter");
    /* a completions field on chat is just unknown; prompt is not needed */
    ok(CH, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"prompt\": 5, \"echo\": \"x\"}");
    oai_request_free(&R);
}

static void test_numbers(void **st)
{
    bad(C, "{\"prompt\": \"x\", \"max_tokens\": 0}", "max_tokens", "integer_below_min_value");
    bad(C, "{\"prompt\": \"x\", \"max_tokens\": -5}", "max_tokens", "integer_below_min_value");
    bad(C, "{\"prompt\": \"x\", \"max_tokens\": 1.5}", "max_tokens", "invalid_type");
    bad(C, "{\"prompt\": \"x\", \"max_tokens\": \"10\"}", "max_tokens", "invalid_type");
    bad(C, "{\"prompt\": \"x\", \"max_tokens\": true}", "max_tokens", "invalid_type");
    bad(C, "{\"prompt\": \"x\", \"max_tokens\": 1e10}", "max_tokens", "integer_above_max_value");
    bad(C, "{\"prompt\": \"x\", \"max_tokens\": 1e999}", "max_tokens", "invalid_type"); /* inf */
    bad(C, "{\"prompt\": \"x\", \"max_tokens\": [1]}", "max_tokens", "invalid_type");
    ok(CH, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 5, \"max_completion_tokens\": 7}");
    assert_int_equal(R.max_tokens, 7);
    ok(CH, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 5}");
    assert_int_equal(R.max_tokens, 5);
    bad(CH, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_completion_tokens\": 0}",
        "max_completion_tokens", "integer_below_min_value");
    /* max_completion_tokens on completions is unknown, so ignored */
    ok(C, "{\"prompt\": \"x\", \"max_completion_tokens\": \"junk\"}");

    bad(C, "{\"prompt\": \"x\", \"temperature\": -0.1}", "temperature", "decimal_below_min_value");
    bad(C, "{\"prompt\": \"x\", \"temperature\": 2.01}", "temperature", "decimal_above_max_value");
    bad(C, "{\"prompt\": \"x\", \"temperature\": 1e999}", "temperature", "decimal_above_max_value");
    bad(C, "{\"prompt\": \"x\", \"temperature\": -1e999}", "temperature", "decimal_below_min_value");
    bad(C, "{\"prompt\": \"x\", \"temperature\": \"hot\"}", "temperature", "invalid_type");
    bad(C, "{\"prompt\": \"x\", \"top_p\": 0}", "top_p", "decimal_below_min_value");
    bad(C, "{\"prompt\": \"x\", \"top_p\": 1.0001}", "top_p", "decimal_above_max_value");
    bad(C, "{\"prompt\": \"x\", \"top_k\": -2}", "top_k", "integer_below_min_value");
    bad(C, "{\"prompt\": \"x\", \"top_k\": 2.5}", "top_k", "invalid_type");
    bad(C, "{\"prompt\": \"x\", \"seed\": 1.5}", "seed", "invalid_type");
    bad(C, "{\"prompt\": \"x\", \"seed\": 1e30}", "seed", "integer_above_max_value");
    bad(C, "{\"prompt\": \"x\", \"seed\": -1e30}", "seed", "integer_below_min_value");
    bad(C, "{\"prompt\": \"x\", \"seed\": \"7\"}", "seed", "invalid_type");
    bad(C, "{\"prompt\": \"x\", \"presence_penalty\": 2.5}", "presence_penalty", "decimal_above_max_value");
    bad(C, "{\"prompt\": \"x\", \"frequency_penalty\": -2.5}", "frequency_penalty", "decimal_below_min_value");
    bad(C, "{\"prompt\": \"x\", \"repetition_penalty\": 0}", "repetition_penalty", "decimal_below_min_value");
    bad(C, "{\"prompt\": \"x\", \"repetition_penalty\": -1}", "repetition_penalty", "decimal_below_min_value");
    bad(C, "{\"prompt\": \"x\", \"min_tokens\": -1}", "min_tokens", "integer_below_min_value");
    bad(C, "{\"prompt\": \"x\", \"min_tokens\": 9, \"max_tokens\": 8}", "min_tokens", "invalid_value");
    ok(C, "{\"prompt\": \"x\", \"min_tokens\": 8, \"max_tokens\": 8, \"presence_penalty\": -2, \"frequency_penalty\": 2}");
    assert_int_equal(R.min_tokens, 8);
    ok(C, "{\"prompt\": \"x\", \"min_tokens\": 100}"); /* no max_tokens: the context bounds it */
    bad(C, "{\"prompt\": \"x\", \"num_speculative_tokens\": -1}", "num_speculative_tokens", "integer_below_min_value");
    bad(C, "{\"prompt\": \"x\", \"num_speculative_tokens\": 17}", "num_speculative_tokens", "integer_above_max_value");
    ok(C, "{\"prompt\": \"x\", \"num_speculative_tokens\": 0}");
    assert_int_equal(R.num_speculative_tokens, 0);
    ok(C, "{\"prompt\": \"x\", \"num_speculative_tokens\": 16}");
    assert_int_equal(R.num_speculative_tokens, 16);
    bad(C, "{\"prompt\": \"x\", \"n\": 0}", "n", "integer_below_min_value");
    bad(C, "{\"prompt\": \"x\", \"n\": 129}", "n", "integer_above_max_value");
    bad(C, "{\"prompt\": \"x\", \"n\": 3, \"best_of\": 2}", "best_of", "invalid_value");
    bad(C, "{\"prompt\": \"x\", \"best_of\": 0}", "best_of", "integer_below_min_value");
    bad(C, "{\"prompt\": \"x\", \"use_beam_search\": 1}", "use_beam_search", "invalid_type");
    bad(C, "{\"prompt\": \"x\", \"length_penalty\": \"long\"}", "length_penalty", "invalid_type");
    bad(C, "{\"prompt\": \"x\", \"ignore_eos\": \"yes\"}", "ignore_eos", "invalid_type");
    bad(C, "{\"prompt\": \"x\", \"echo\": 1}", "echo", "invalid_type");
    bad(C, "{\"prompt\": \"x\", \"user\": 5}", "user", "invalid_type");
    bad(C, "{\"prompt\": \"x\", \"model\": [\"m\"]}", "model", "invalid_type");
    oai_request_free(&R);
}

static void test_stop_stream_logprobs(void **st)
{
    bad(C, "{\"prompt\": \"x\", \"stop\": 5}", "stop", "invalid_type");
    bad(C, "{\"prompt\": \"x\", \"stop\": \"\"}", "stop", NULL);
    bad(C, "{\"prompt\": \"x\", \"stop\": [\"a\", 5]}", "stop[1]", "invalid_type");
    bad(C, "{\"prompt\": \"x\", \"stop\": [\"a\", \"\"]}", "stop[1]", NULL);
    char body[2048];
    int k = snprintf(body, sizeof body, "{\"prompt\": \"x\", \"stop\": [");
    for (int i = 0; i <= OAI_MAX_STOP; i++)
        k += snprintf(body + k, sizeof body - (size_t)k, "%s\"s%d\"", i ? "," : "", i);
    snprintf(body + k, sizeof body - (size_t)k, "]}");
    bad(C, body, "stop", "array_above_max_length");
    k = snprintf(body, sizeof body, "{\"prompt\": \"x\", \"stop\": \"");
    for (int i = 0; i <= OAI_MAX_STOP_LEN; i++)
        body[k++] = 'a';
    snprintf(body + k, sizeof body - (size_t)k, "\"}");
    bad(C, body, "stop", NULL);
    body[k - 1] = '"';
    body[k] = '}';
    body[k + 1] = 0; /* exactly OAI_MAX_STOP_LEN bytes */
    ok(C, body);
    assert_int_equal(strlen(R.stop[0]), OAI_MAX_STOP_LEN);
    bad(C, "{\"prompt\": \"x\", \"stop_token_ids\": 1}", "stop_token_ids", "invalid_type");
    bad(C, "{\"prompt\": \"x\", \"stop_token_ids\": [-1]}", "stop_token_ids[0]", "integer_below_min_value");

    bad(C, "{\"prompt\": \"x\", \"stream\": \"true\"}", "stream", "invalid_type");
    bad(C, "{\"prompt\": \"x\", \"stream_options\": {\"include_usage\": true}}", "stream_options", "invalid_value");
    bad(C, "{\"prompt\": \"x\", \"stream\": false, \"stream_options\": {}}", "stream_options", "invalid_value");
    bad(C, "{\"prompt\": \"x\", \"stream\": true, \"stream_options\": []}", "stream_options", "invalid_type");
    bad(C, "{\"prompt\": \"x\", \"stream\": true, \"stream_options\": {\"include_usage\": 1}}",
        "stream_options.include_usage", "invalid_type");
    ok(C, "{\"prompt\": \"x\", \"stream\": true, \"stream_options\": {\"include_usage\": false, \"other\": 1}}");
    assert_true(R.stream);
    assert_false(R.include_usage);

    /* completions: logprobs is the number of alternatives */
    ok(C, "{\"prompt\": \"x\", \"logprobs\": 0}");
    assert_true(R.logprobs);
    assert_int_equal(R.top_logprobs, 0);
    ok(C, "{\"prompt\": \"x\", \"logprobs\": 20}");
    assert_int_equal(R.top_logprobs, 20);
    bad(C, "{\"prompt\": \"x\", \"logprobs\": 21}", "logprobs", "integer_above_max_value");
    bad(C, "{\"prompt\": \"x\", \"logprobs\": -1}", "logprobs", "integer_below_min_value");
    bad(C, "{\"prompt\": \"x\", \"logprobs\": true}", "logprobs", "invalid_type");
    /* chat: a boolean and top_logprobs */
    const char *u = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], ";
    snprintf(body, sizeof body, "%s\"logprobs\": true, \"top_logprobs\": 5}", u);
    ok(CH, body);
    assert_true(R.logprobs);
    assert_int_equal(R.top_logprobs, 5);
    snprintf(body, sizeof body, "%s\"logprobs\": true}", u);
    ok(CH, body);
    assert_int_equal(R.top_logprobs, 0);
    snprintf(body, sizeof body, "%s\"logprobs\": 3}", u);
    bad(CH, body, "logprobs", "invalid_type");
    snprintf(body, sizeof body, "%s\"top_logprobs\": 2}", u);
    bad(CH, body, "top_logprobs", "invalid_value");
    snprintf(body, sizeof body, "%s\"logprobs\": false, \"top_logprobs\": 2}", u);
    bad(CH, body, "top_logprobs", "invalid_value");
    snprintf(body, sizeof body, "%s\"logprobs\": true, \"top_logprobs\": 21}", u);
    bad(CH, body, "top_logprobs", "integer_above_max_value");
    oai_request_free(&R);
}

static void test_unsupported(void **st)
{
    const char *u = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], ";
    char body[512];
#define CHAT_BAD(extra, param, code)                                                                                 \
    do {                                                                                                             \
        snprintf(body, sizeof body, "%s%s}", u, extra);                                                              \
        bad(CH, body, param, code);                                                                                  \
    } while (0)
#define CHAT_OK(extra)                                                                                               \
    do {                                                                                                             \
        snprintf(body, sizeof body, "%s%s}", u, extra);                                                              \
        ok(CH, body);                                                                                                \
    } while (0)
    CHAT_BAD("\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}]", "tools", "unsupported_parameter");
    CHAT_BAD("\"tools\": {}", "tools", "unsupported_parameter");
    CHAT_BAD("\"functions\": [{\"name\": \"f\"}]", "functions", "unsupported_parameter");
    CHAT_BAD("\"tool_choice\": \"required\"", "tool_choice", "unsupported_parameter");
    CHAT_BAD("\"tool_choice\": {\"type\": \"function\"}", "tool_choice", "unsupported_parameter");
    CHAT_BAD("\"function_call\": {\"name\": \"f\"}", "function_call", "unsupported_parameter");
    CHAT_BAD("\"response_format\": {\"type\": \"json_object\"}", "response_format.type", "unsupported_value");
    CHAT_BAD("\"response_format\": {\"type\": \"json_schema\", \"json_schema\": {}}", "response_format.type",
             "unsupported_value");
    CHAT_BAD("\"response_format\": \"text\"", "response_format", "invalid_type");
    CHAT_BAD("\"response_format\": {}", "response_format.type", "missing_required_parameter");
    CHAT_BAD("\"logit_bias\": {\"50256\": -100}", "logit_bias", "unsupported_parameter");
    CHAT_BAD("\"logit_bias\": [1]", "logit_bias", "invalid_type");
    CHAT_OK("\"tools\": [], \"tool_choice\": \"none\", \"response_format\": {\"type\": \"text\"}, \"logit_bias\": {},"
            " \"parallel_tool_calls\": false");
    CHAT_OK("\"tool_choice\": \"auto\", \"functions\": null");
    bad(C, "{\"prompt\": \"x\", \"suffix\": \"tail\"}", "suffix", "unsupported_parameter");
    bad(C, "{\"prompt\": \"x\", \"suffix\": 1}", "suffix", "invalid_type");
    ok(C, "{\"prompt\": \"x\", \"suffix\": \"\"}");
    bad(C, "{\"prompt\": \"x\", \"prompt_logprobs\": 1}", "prompt_logprobs", "unsupported_parameter");
    ok(C, "{\"prompt\": \"x\", \"prompt_logprobs\": null}");
    bad(C, "{\"prompt\": \"x\", \"response_format\": {\"type\": \"json_object\"}}", "response_format.type",
        "unsupported_value");
#undef CHAT_BAD
#undef CHAT_OK
    oai_request_free(&R);
}

static void test_bodies(void **st)
{
    bad(C, "", NULL, NULL);
    bad(C, "   ", NULL, NULL);
    bad(C, "{", NULL, NULL);
    bad(C, "{\"prompt\": \"x\",}", NULL, NULL);
    bad(C, "{\"prompt\": \"x\"} {}", NULL, NULL);
    bad(C, "{\"prompt\": \"x\"}x", NULL, NULL);
    bad(C, "[{\"prompt\": \"x\"}]", NULL, "invalid_type");
    bad(C, "\"prompt\"", NULL, "invalid_type");
    bad(C, "null", NULL, "invalid_type");
    bad(C, "{\"prompt\": \"\xff\"}", NULL, NULL);              /* not UTF-8 */
    bad(C, "{\"prompt\": \"\\ud800\"}", NULL, NULL);           /* lone surrogate */
    bad(C, "{\"prompt\": NaN}", NULL, NULL);
    bad(C, "{'prompt': 'x'}", NULL, NULL);
    /* deep nesting in an ignored field: refused by the parser's depth limit or ignored, never a crash */
    static char deep[20000];
    int k = snprintf(deep, sizeof deep, "{\"prompt\": \"x\", \"z\": ");
    for (int i = 0; i < 5000; i++)
        deep[k++] = '[';
    for (int i = 0; i < 5000; i++)
        deep[k++] = ']';
    snprintf(deep + k, sizeof deep - (size_t)k, "}");
    oai_request_free(&R);
    if (parse(C, deep) != GM_OK)
        assert_int_equal(E.status, 400);
    oai_request_free(&R);
    /* a body that is not NUL-terminated: only len bytes are read */
    const char b[] = "{\"prompt\": \"x\"}GARBAGE";
    assert_int_equal(oai_parse_request(C, b, 15, &R, &E), GM_OK);
    assert_string_equal(R.prompts[0].text, "x");
    oai_request_free(&R);
    /* a NUL byte anywhere is refused: cJSON would end a string there ("a\0b" read as "a") */
    const char z[] = "{\"prompt\": \"a\0b\"}";
    assert_int_equal(oai_parse_request(C, z, sizeof z - 1, &R, &E), GM_ERR_INVALID_ARG);
    assert_int_equal(E.status, 400);
    assert_non_null(strstr(E.message, "NUL"));
    const char z2[] = "{\"prompt\"\0: \"x\"}";
    assert_int_equal(oai_parse_request(C, z2, sizeof z2 - 1, &R, &E), GM_ERR_INVALID_ARG);
}

static void test_chat_to_gemma(void **st)
{
    gm_chat_msg *m;
    int32_t n;
    ok(CH, "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Hi\"},"
           " {\"role\": \"assistant\", \"content\": \"Hello\"}, {\"role\": \"user\", \"content\": \"Why?\"}]}");
    GOK(oai_chat_to_gemma(R.messages, R.n_messages, &m, &n, &E));
    assert_int_equal(n, 4);
    assert_string_equal(m[0].role, "system");
    assert_string_equal(m[0].text, "Be brief.");
    assert_string_equal(m[1].role, "user");
    assert_string_equal(m[1].text, "Hi");
    assert_string_equal(m[2].role, "model");
    assert_string_equal(m[2].text, "Hello");
    assert_string_equal(m[3].role, "user");
    assert_string_equal(m[3].text, "Why?");
    free(m);
    ok(CH, "{\"messages\": [{\"role\": \"developer\", \"content\": \"D\"}, {\"role\": \"user\", \"content\": \"U\"}]}");
    GOK(oai_chat_to_gemma(R.messages, R.n_messages, &m, &n, &E));
    assert_int_equal(n, 2);
    assert_string_equal(m[0].role, "system");
    assert_string_equal(m[0].text, "D");
    assert_string_equal(m[1].text, "U");
    free(m);
    ok(CH, "{\"messages\": [{\"role\": \"user\", \"content\": \"U\"}]}");
    GOK(oai_chat_to_gemma(R.messages, R.n_messages, &m, &n, &E));
    assert_string_equal(m[0].text, "U");
    free(m);

    const char *refused[][2] = {
        {"{\"messages\": [{\"role\": \"system\", \"content\": \"S\"}]}", "messages"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"U\"}, {\"role\": \"system\", \"content\": \"S\"}]}",
         "messages[1].role"},
        {"{\"messages\": [{\"role\": \"assistant\", \"content\": \"A\"}, {\"role\": \"user\", \"content\": \"U\"}]}",
         "messages[0].role"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"U\"}, {\"role\": \"user\", \"content\": \"U\"}]}",
         "messages[1].role"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"U\"}, {\"role\": \"assistant\", \"content\": \"A\"}]}",
         "messages"},
        {"{\"messages\": [{\"role\": \"system\", \"content\": \"S\"}, {\"role\": \"system\", \"content\": \"S\"},"
         " {\"role\": \"user\", \"content\": \"U\"}]}",
         "messages[1].role"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        ok(CH, refused[i][0]);
        m = (gm_chat_msg *)1;
        assert_int_equal(oai_chat_to_gemma(R.messages, R.n_messages, &m, &n, &E), GM_ERR_INVALID_ARG);
        assert_null(m);
        assert_int_equal(E.status, 400);
        assert_string_equal(E.param, refused[i][1]);
    }
    oai_request_free(&R);
}

static void test_tokenize_bodies(void **st)
{
    oai_tokenize_req t;
    oai_detokenize_req d;
    const char *b = "{\"model\": \"m\", \"prompt\": \"hello\"}";
    GOK(oai_parse_tokenize(b, strlen(b), &t, &E));
    assert_string_equal(t.prompt, "hello");
    assert_string_equal(t.model, "m");
    assert_true(t.add_special_tokens);
    oai_tokenize_req_free(&t);
    b = "{\"prompt\": \"\", \"add_special_tokens\": false}";
    GOK(oai_parse_tokenize(b, strlen(b), &t, &E));
    assert_false(t.add_special_tokens);
    assert_int_equal(t.prompt_len, 0);
    oai_tokenize_req_free(&t);
    b = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}";
    GOK(oai_parse_tokenize(b, strlen(b), &t, &E));
    assert_int_equal(t.n_messages, 1);
    assert_false(t.add_special_tokens);
    assert_true(t.add_generation_prompt);
    oai_tokenize_req_free(&t);
    const char *tbad[][2] = {{"{}", "prompt"},
                             {"{\"prompt\": \"a\", \"messages\": []}", "messages"},
                             {"{\"prompt\": 5}", "prompt"},
                             {"{\"prompt\": \"a\", \"add_special_tokens\": 1}", "add_special_tokens"},
                             {"{\"messages\": [{\"role\": \"x\", \"content\": \"y\"}]}", "messages[0].role"},
                             {"[]", ""}};
    for (size_t i = 0; i < sizeof tbad / sizeof tbad[0]; i++) {
        assert_int_equal(oai_parse_tokenize(tbad[i][0], strlen(tbad[i][0]), &t, &E), GM_ERR_INVALID_ARG);
        assert_string_equal(E.param, tbad[i][1]);
        assert_null(t.prompt);
        assert_null(t.messages);
    }
    b = "{\"tokens\": [2, 651, 6037]}";
    GOK(oai_parse_detokenize(b, strlen(b), &d, &E));
    assert_int_equal(d.n_ids, 3);
    assert_int_equal(d.ids[2], 6037);
    oai_detokenize_req_free(&d);
    b = "{\"tokens\": []}";
    GOK(oai_parse_detokenize(b, strlen(b), &d, &E));
    assert_int_equal(d.n_ids, 0);
    oai_detokenize_req_free(&d);
    const char *dbad[][2] = {{"{}", "tokens"},
                             {"{\"tokens\": \"2 3\"}", "tokens"},
                             {"{\"tokens\": [2, -3]}", "tokens[1]"},
                             {"{\"tokens\": [2, 1.5]}", "tokens[1]"},
                             {"{\"tokens\": [2], \"model\": 1}", "model"}};
    for (size_t i = 0; i < sizeof dbad / sizeof dbad[0]; i++) {
        assert_int_equal(oai_parse_detokenize(dbad[i][0], strlen(dbad[i][0]), &d, &E), GM_ERR_INVALID_ARG);
        assert_string_equal(E.param, dbad[i][1]);
        assert_null(d.ids);
    }
}

static void test_errors(void **st)
{
    oai_error e;
    oai_error_model_not_found(&e, "gpt-4");
    assert_int_equal(e.status, 404);
    assert_string_equal(e.code, "model_not_found");
    assert_string_equal(e.param, "model");
    assert_non_null(strstr(e.message, "gpt-4"));
    struct {
        int code, status;
        const char *type, *ecode;
    } map[] = {{1, 400, "invalid_request_error", NULL},  {2, 400, "invalid_request_error", "context_length_exceeded"},
               {3, 429, "rate_limit_error", "overloaded"}, {4, 503, "server_error", "cancelled"},
               {5, 500, "server_error", NULL},           {6, 503, "server_error", "worker_failed"},
               {10, 503, "server_error", "shutting_down"}, {13, 503, "server_error", "unavailable"},
               {14, 500, "server_error", "nonfinite_logits"}, {99, 500, "server_error", NULL}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        oai_error_from_code(&e, map[i].code, map[i].code == 2 ? "prompt" : NULL, "why");
        assert_int_equal(e.status, map[i].status);
        assert_string_equal(e.type, map[i].type);
        if (map[i].ecode)
            assert_string_equal(e.code, map[i].ecode);
        else
            assert_null(e.code);
        assert_string_equal(e.message, "why");
    }
    assert_string_equal(e.param, "");
    /* INVALID_ARGUMENT without a param: the field admission's message names first */
    oai_error_from_code(&e, 1, NULL, "min_tokens 20 exceeds max_tokens 16");
    assert_string_equal(e.param, "min_tokens");
    oai_error_from_code(&e, 1, NULL, "n > 1 is not supported by this gemmad yet");
    assert_string_equal(e.param, "n");
    oai_error_from_code(&e, 1, NULL, "n = 65 sequences: 1..64 allowed");
    assert_string_equal(e.param, "n");
    oai_error_from_code(&e, 1, NULL, "the prompt is empty");
    assert_string_equal(e.param, "");
    oai_error_from_code(&e, 1, "messages", "top_k -1 must be >= 0");
    assert_string_equal(e.param, "messages");
    /* a message cut inside a UTF-8 character is cut before it */
    char longmsg[600];
    memset(longmsg, 'a', sizeof longmsg);
    memcpy(longmsg + 509, "\xe6\x97\xa5", 3);
    longmsg[599] = 0;
    oai_fail(&e, 400, "invalid_request_error", NULL, NULL, "%s", longmsg);
    assert_int_equal(jsonw_utf8_valid_prefix(e.message, strlen(e.message)), strlen(e.message));
    assert_int_equal(strlen(e.message), 509);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),    cmocka_unit_test(test_all_fields),
        cmocka_unit_test(test_prompts),     cmocka_unit_test(test_messages),
        cmocka_unit_test(test_numbers),     cmocka_unit_test(test_stop_stream_logprobs),
        cmocka_unit_test(test_unsupported), cmocka_unit_test(test_bodies),
        cmocka_unit_test(test_chat_to_gemma), cmocka_unit_test(test_tokenize_bodies),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
