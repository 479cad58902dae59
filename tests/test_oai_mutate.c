/* test_oai_mutate.c - a deterministic mutation run over the OpenAI request parsers: the seed
 * bodies in tests/fuzz/corpus_oai (and a few built in) are mutated with a fixed-seed generator
 * (byte flips, JSON tokens and extreme numbers spliced in, cuts, duplications, crossovers with
 * other seeds), and every result goes through tests/fuzz/oai_check.h: a refusal is a clean
 * OpenAI error, an acceptance respects every limit, and every answer built from it is valid
 * UTF-8 JSON. The same checks libFuzzer runs in fuzz_oai, bounded here to N_ITER inputs. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/sampling.h"
#include "tests/fuzz/oai_check.h"

#define N_ITER 200000
#define MAX_SEEDS 64
#define MAX_BODY 8192

static char *g_seeds[MAX_SEEDS];
static size_t g_seed_len[MAX_SEEDS];
static int g_n_seeds;

static void add_seed(const char *s, size_t n)
{
    if (g_n_seeds >= MAX_SEEDS || n >= MAX_BODY)
        return;
    g_seeds[g_n_seeds] = malloc(n + 1);
    memcpy(g_seeds[g_n_seeds], s, n);
    g_seeds[g_n_seeds][n] = 0;
    g_seed_len[g_n_seeds++] = n;
}

static void load_seeds(void)
{
    static const char *const builtin[] = {
        "{\"prompt\": \"x\"}",
        "{\"prompt\": [\"a\", \"b\"], \"n\": 2, \"best_of\": 3}",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"stream\": true}",
        "{\"prompt\": \"x\", \"stop\": \"\\n\", \"logprobs\": 0, \"seed\": -1, \"max_tokens\": 1.0}",
        "{\"messages\": [{\"role\": \"developer\", \"content\": \"d\"}, {\"role\": \"user\", \"content\": [{\"type\": "
        "\"text\", \"text\": \"\\ud83d\\ude42\"}]}], \"logprobs\": true, \"top_logprobs\": 20}",
        "{\"prompt\": \"\", \"add_special_tokens\": true}",
        "{\"tokens\": []}",
    };
    for (size_t i = 0; i < sizeof builtin / sizeof builtin[0]; i++)
        add_seed(builtin[i], strlen(builtin[i]));
    const char *src = getenv("GM_SRC");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/tests/fuzz/corpus_oai", src ? src : ".");
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p[1400];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        FILE *f = fopen(p, "rb");
        if (!f)
            continue;
        char buf[MAX_BODY];
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        add_seed(buf, n);
    }
    closedir(d);
}

static uint64_t g_rng = 12345;

static uint64_t rnd(uint64_t n)
{
    g_rng = gm_mix64(g_rng);
    return n ? g_rng % n : 0;
}

static const char *const TOKENS[] = {
    "{",         "}",          "[",         "]",           ",",           ":",           "\"",         "null",
    "true",      "false",      "0",         "-1",          "1e999",       "-1e999",      "2147483648", "1.5",
    "18446744073709551616", "\"\"",      "\"\\u0000\"", "\"\\ud800\"", "\"\xff\"",    "\"\xe6\x97\"", "[]",
    "{}",        "\"prompt\"", "\"messages\"", "\"role\"",  "\"content\"", "\"stop\"",    "\"n\"",       "\"logprobs\"",
    "\"top_logprobs\"", "\"stream_options\"", "\"stream\"", "\"max_tokens\"", "\"tools\"", "\"type\"", "\"text\"",
    "\"system\"", "\"assistant\"", "[[1],[2]]", "[1,2,3]", "\"tokens\"", "\"seed\"", "\"temperature\"", "\\",
};

/* One mutation of buf[0..*n) in place (cap bytes). */
static void mutate(char *buf, size_t *n, size_t cap)
{
    size_t len = *n;
    switch (rnd(7)) {
    case 0: /* flip a byte */
        if (len)
            buf[rnd(len)] ^= (char)(1u << rnd(8));
        break;
    case 1: /* random byte */
        if (len)
            buf[rnd(len)] = (char)rnd(256);
        break;
    case 2: { /* insert a JSON token */
        const char *t = TOKENS[rnd(sizeof TOKENS / sizeof TOKENS[0])];
        size_t tl = strlen(t), at = rnd(len + 1);
        if (len + tl < cap) {
            memmove(buf + at + tl, buf + at, len - at);
            memcpy(buf + at, t, tl);
            len += tl;
        }
        break;
    }
    case 3: { /* delete a range */
        if (!len)
            break;
        size_t at = rnd(len), k = 1 + rnd(len - at < 16 ? len - at : 16);
        memmove(buf + at, buf + at + k, len - at - k);
        len -= k;
        break;
    }
    case 4: { /* duplicate a range */
        if (!len)
            break;
        size_t at = rnd(len), k = 1 + rnd(len - at < 64 ? len - at : 64), to = rnd(len + 1);
        if (len + k < cap) {
            char tmp[64];
            memcpy(tmp, buf + at, k);
            memmove(buf + to + k, buf + to, len - to);
            memcpy(buf + to, tmp, k);
            len += k;
        }
        break;
    }
    case 5: { /* crossover: our head, another seed's tail */
        int s = (int)rnd((uint64_t)g_n_seeds);
        size_t at = rnd(len + 1), from = rnd(g_seed_len[s] + 1), k = g_seed_len[s] - from;
        if (at + k < cap) {
            memcpy(buf + at, g_seeds[s] + from, k);
            len = at + k;
        }
        break;
    }
    default: /* replace a digit run with an extreme number */
        for (size_t i = rnd(len + 1); i < len; i++)
            if (buf[i] >= '0' && buf[i] <= '9') {
                const char *x = rnd(2) ? "99999999999999999999" : "-0.000001";
                size_t xl = strlen(x);
                if (len + xl < cap) {
                    memmove(buf + i + xl, buf + i + 1, len - i - 1);
                    memcpy(buf + i, x, xl);
                    len += xl - 1;
                }
                break;
            }
    }
    *n = len;
}

static void test_seeds_pass(void **st)
{
    load_seeds();
    assert_true(g_n_seeds >= 7);
    for (int i = 0; i < g_n_seeds; i++)
        oai_check_input(g_seeds[i], g_seed_len[i]);
}

static void test_mutations(void **st)
{
    static char buf[MAX_BODY * 2];
    int64_t accepted = 0;
    for (int64_t it = 0; it < N_ITER; it++) {
        int s = (int)rnd((uint64_t)g_n_seeds);
        size_t n = g_seed_len[s];
        memcpy(buf, g_seeds[s], n);
        for (int m = 0, k = 1 + (int)rnd(4); m < k; m++)
            mutate(buf, &n, sizeof buf);
        oai_request r;
        oai_error e;
        if (oai_parse_request(OAI_COMPLETIONS, buf, n, &r, &e) == GM_OK) {
            accepted++;
            oai_request_free(&r);
        }
        oai_check_input(buf, n);
    }
    /* the mutations must not be so wild that nothing parses */
    print_message("%lld of %d mutated bodies were valid completions requests\n", (long long)accepted, N_ITER);
    assert_true(accepted > N_ITER / 100);
    for (int i = 0; i < g_n_seeds; i++)
        free(g_seeds[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seeds_pass),
        cmocka_unit_test(test_mutations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
