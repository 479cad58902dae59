/* test_ctl.c - the step contract (ctl/): the plan decoder against protobuf-c and the
 * encoder through it, the worker spec through control.proto (every field, field
 * numbers as GM_SPEC_FIELDS says), the step validator (each rejection, the
 * previous-token rule), the slot deltas from sender to receiver, and the sizing
 * rule on fake GPUs (H100 80 GB and H200 141 GB with 2b/7b in bf16 and FP8, small
 * GPUs, a pool too small, explicit values, budgets that do not fit). No processes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "ctl/check.h"
#include "ctl/msg.h"
#include "ctl/plan.h"
#include "ctl/sizing.h"
#include "ctl/slots.h"
#include "ctl/spec.h"
#include "test_check.h"

typedef Gemma__Control__V1__ControlMessage ctl_msg;

/* ---- plan codec ---- */

typedef struct t_pool {
    void *ptrs[4096];
    int n;
} t_pool;

static void *t_alloc(void *ad, size_t n)
{
    t_pool *p = ad;
    if (p->n == 4096)
        return NULL;
    return p->ptrs[p->n++] = malloc(n);
}

static void t_free(void *ad, void *ptr)
{
    (void)ad, (void)ptr;
}

static void t_release(t_pool *p)
{
    for (int i = 0; i < p->n; i++)
        free(p->ptrs[i]);
    p->n = 0;
}

static uint64_t g_r = 99;
static uint32_t r32(void)
{
    g_r = g_r * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(g_r >> 33);
}

static void same_plan(const ctl_msg *a, const ctl_msg *b)
{
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(a->body_case, GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_PLAN);
    assert_int_equal(b->body_case, GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_PLAN);
    assert_int_equal(a->plan->step_id, b->plan->step_id);
    assert_int_equal(a->plan->n_seqs, b->plan->n_seqs);
    assert_int_equal(a->plan->n_block_copies, b->plan->n_block_copies);
    if (a->plan->n_block_copies)
        assert_memory_equal(a->plan->block_copies, b->plan->block_copies,
                            a->plan->n_block_copies * sizeof *a->plan->block_copies);
    for (size_t i = 0; i < a->plan->n_seqs; i++) {
        const Gemma__Control__V1__SeqPlan *x = a->plan->seqs[i], *y = b->plan->seqs[i];
        assert_int_equal(x->slot, y->slot);
        assert_int_equal(x->start_pos, y->start_pos);
        assert_int_equal(x->logits_mode, y->logits_mode);
        assert_int_equal(!!x->reset, !!y->reset);
        assert_int_equal(x->n_tokens, y->n_tokens);
        if (x->n_tokens)
            assert_memory_equal(x->tokens, y->tokens, x->n_tokens * sizeof *x->tokens);
        assert_int_equal(x->n_block_table, y->n_block_table);
        if (x->n_block_table)
            assert_memory_equal(x->block_table, y->block_table, x->n_block_table * sizeof *x->block_table);
        assert_int_equal(x->sampling != NULL, y->sampling != NULL);
        if (x->sampling) {
            assert_memory_equal(&x->sampling->temperature, &y->sampling->temperature, 4);
            assert_memory_equal(&x->sampling->top_p, &y->sampling->top_p, 4);
            assert_int_equal(x->sampling->top_k, y->sampling->top_k);
            assert_int_equal(x->sampling->seed, y->sampling->seed);
            assert_memory_equal(&x->sampling->presence_penalty, &y->sampling->presence_penalty, 4);
            assert_memory_equal(&x->sampling->frequency_penalty, &y->sampling->frequency_penalty, 4);
            assert_memory_equal(&x->sampling->repetition_penalty, &y->sampling->repetition_penalty, 4);
            assert_int_equal(x->sampling->n_prompt, y->sampling->n_prompt);
            assert_int_equal(x->sampling->min_tokens, y->sampling->min_tokens);
            assert_int_equal(!!x->sampling->logprobs, !!y->sampling->logprobs);
            assert_int_equal(x->sampling->top_logprobs, y->sampling->top_logprobs);
            assert_int_equal(x->sampling->n_stop_ids, y->sampling->n_stop_ids);
            if (x->sampling->n_stop_ids)
                assert_memory_equal(x->sampling->stop_ids, y->sampling->stop_ids,
                                    x->sampling->n_stop_ids * sizeof *x->sampling->stop_ids);
        }
    }
}

/* Random plans: protobuf-c's bytes decode by hand to what protobuf-c decodes; our
 * encoder's bytes are protobuf-c's; truncated or flipped bytes never crash. */
static void test_plan_codec(void **state)
{
    (void)state;
    t_pool tp = {.n = 0};
    ProtobufCAllocator al = {t_alloc, t_free, &tp};
    for (int round = 0; round < 300; round++) {
        enum { MAXN = 24 };
        Gemma__Control__V1__SeqPlan sp[MAXN], *spp[MAXN];
        Gemma__Control__V1__Sampling sa[MAXN];
        int32_t toks[MAXN][6], blks[MAXN][6], stops[MAXN][GM_MAX_STOP_SET];
        size_t n = r32() % MAXN;
        for (size_t i = 0; i < n; i++) {
            gemma__control__v1__seq_plan__init(&sp[i]);
            gemma__control__v1__sampling__init(&sa[i]);
            sp[i].slot = (int32_t)(r32() % 3 ? r32() % 5000 : r32());
            sp[i].n_tokens = r32() % 6;
            for (size_t j = 0; j < sp[i].n_tokens; j++)
                toks[i][j] = r32() % 4 ? (int32_t)(r32() % 256000) : (int32_t)r32();
            sp[i].tokens = toks[i];
            sp[i].start_pos = (int32_t)(r32() % 9000);
            sp[i].n_block_table = r32() % 6;
            for (size_t j = 0; j < sp[i].n_block_table; j++)
                blks[i][j] = r32() % 4 ? (int32_t)(r32() % 100000) : -(int32_t)(r32() % 9);
            sp[i].block_table = blks[i];
            sp[i].logits_mode = (int32_t)(r32() % 3);
            sp[i].reset = r32() % 2;
            if (r32() % 2) {
                sa[i].temperature = (float)(r32() % 100) / 50.0f;
                sa[i].top_k = (int32_t)(r32() % 100);
                sa[i].top_p = (float)(r32() % 100) / 100.0f;
                sa[i].seed = (uint64_t)r32() << (r32() % 32);
                if (r32() % 2) { /* the sampling extensions, each present or absent */
                    sa[i].presence_penalty = r32() % 3 ? (float)((int)(r32() % 9) - 4) / 2.0f : 0.0f;
                    sa[i].frequency_penalty = r32() % 3 ? -(float)(r32() % 100) / 50.0f : 0.0f;
                    sa[i].repetition_penalty = r32() % 3 ? (float)(r32() % 100) / 25.0f : 0.0f;
                    sa[i].n_prompt = (int32_t)(r32() % 3 ? r32() % 9000 : 0);
                    sa[i].min_tokens = (int32_t)(r32() % 3 ? r32() % 300 : 0);
                    sa[i].logprobs = r32() % 2;
                    sa[i].top_logprobs = (int32_t)(r32() % 21);
                    sa[i].n_stop_ids = r32() % 4 ? r32() % GM_MAX_STOP_SET : 0;
                    for (size_t j = 0; j < sa[i].n_stop_ids; j++)
                        stops[i][j] = r32() % 4 ? (int32_t)(r32() % 256000) : -(int32_t)(r32() % 5);
                    sa[i].stop_ids = stops[i];
                }
                sp[i].sampling = &sa[i];
            }
            spp[i] = &sp[i];
        }
        Gemma__Control__V1__StepPlan plan = GEMMA__CONTROL__V1__STEP_PLAN__INIT;
        plan.step_id = (uint64_t)r32() << (r32() % 30);
        plan.seqs = spp;
        plan.n_seqs = n;
        int32_t copies[8];
        plan.n_block_copies = r32() % 3 ? 0 : 2 * (r32() % 4);
        for (size_t j = 0; j < plan.n_block_copies; j++)
            copies[j] = r32() % 4 ? (int32_t)(r32() % 100000) : -(int32_t)(r32() % 9);
        plan.block_copies = copies;
        ctl_msg cm = GEMMA__CONTROL__V1__CONTROL_MESSAGE__INIT;
        cm.body_case = GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_PLAN;
        cm.plan = &plan;
        size_t len = gemma__control__v1__control_message__get_packed_size(&cm);
        uint8_t *buf = malloc(len + 64), *mine = malloc(len + 64);
        gemma__control__v1__control_message__pack(&cm, buf);
        assert_int_equal(ctl_plan_size(&cm), len);
        assert_int_equal(ctl_plan_pack(&cm, len, mine), len);
        assert_memory_equal(buf, mine, len);
        ctl_msg *ref = gemma__control__v1__control_message__unpack(NULL, len, buf);
        same_plan(ctl_plan_decode(buf, len, &al), ref);
        t_release(&tp);
        same_plan(ctl_msg_unpack(buf, len, &al), ref);
        t_release(&tp);
        /* every truncation: NULL or a plan, never a crash (the fallback then decides) */
        for (size_t cut = 0; cut < len; cut += 1 + len / 50)
            ctl_plan_decode(buf, cut, &al), t_release(&tp);
        /* a byte flipped: no crash either */
        if (len) {
            buf[r32() % len] ^= (uint8_t)(1 + r32() % 255);
            ctl_plan_decode(buf, len, &al);
            t_release(&tp);
        }
        gemma__control__v1__control_message__free_unpacked(ref, NULL);
        free(buf);
        free(mine);
    }
    /* what another encoder may write: unpacked repeated, fields out of order, unknown fields,
     * a scalar twice (the last wins), the sampling message twice (the last wins, as in protobuf-c) */
    const uint8_t seq[] = {
        0x18, 0x05,                   /* start_pos 5 (before slot) */
        0x08, 0x03,                   /* slot 3 */
        0x10, 0x01,                   /* tokens: -1, unpacked */
        0x12, 0x02, 0x04, 0x06,       /* tokens: 2, 3 packed */
        0x20, 0x07,                   /* block 7, unpacked */
        0x58, 0x2a,                   /* field 11 varint: unknown */
        0x32, 0x02, 0x10, 0x05,       /* sampling: top_k 5 */
        0x32, 0x05, 0x1d, 0x00, 0x00, 0x80, 0x3f, /* sampling again: top_p 1.0 */
        0x08, 0x04,                   /* slot 4 (wins) */
        0x38, 0x01,                   /* reset */
    };
    uint8_t msg[64];
    size_t k = 0;
    msg[k++] = 0x22; /* ControlMessage.plan */
    msg[k++] = (uint8_t)(2 + 2 + sizeof seq);
    msg[k++] = 0x08, msg[k++] = 0x09; /* step_id 9 */
    msg[k++] = 0x12, msg[k++] = (uint8_t)sizeof seq;
    memcpy(msg + k, seq, sizeof seq);
    k += sizeof seq;
    const uint8_t copies_split[] = {0x18, 0x07, 0x1a, 0x02, 0x09, 0x0b}; /* block copies: 7 unpacked, then 9, 11 */
    memcpy(msg + k, copies_split, sizeof copies_split);
    k += sizeof copies_split;
    msg[1] = (uint8_t)(msg[1] + sizeof copies_split);
    ctl_msg *ref = gemma__control__v1__control_message__unpack(NULL, k, msg);
    assert_non_null(ref);
    ctl_msg *mine = ctl_plan_decode(msg, k, &al);
    same_plan(mine, ref);
    assert_int_equal(mine->plan->seqs[0]->slot, 4);
    assert_int_equal(mine->plan->seqs[0]->n_tokens, 3);
    assert_int_equal(mine->plan->seqs[0]->tokens[0], -1);
    assert_int_equal(mine->plan->seqs[0]->sampling->top_k, 0);
    assert_true(mine->plan->seqs[0]->sampling->top_p == 1.0f);
    assert_int_equal(mine->plan->n_block_copies, 3);
    assert_int_equal(mine->plan->block_copies[2], 11);
    gemma__control__v1__control_message__free_unpacked(ref, NULL);
    t_release(&tp);
    /* the sampling extensions as another encoder may write them: stop ids unpacked then packed, a bool as a
     * multi-byte varint, a field number past the known ones (skipped) */
    const uint8_t samp[] = {
        0x32, 0x16,                   /* SeqPlan.sampling, 22 bytes: */
        0x50, 0x07,                   /*   stop_ids: 7, unpacked */
        0x52, 0x02, 0x01, 0x6a,       /*   stop_ids: 1, 106 packed */
        0x58, 0x81, 0x00,             /*   logprobs: true (a two-byte varint) */
        0x60, 0x05,                   /*   top_logprobs 5 */
        0x3d, 0x00, 0x00, 0xc0, 0x3f, /*   repetition_penalty 1.5 */
        0x48, 0x03,                   /*   min_tokens 3 */
        0x40, 0x0c,                   /*   n_prompt 12 */
        0x68, 0x01,                   /*   field 13: unknown */
        0x08, 0x02,                   /* slot 2 */
    };
    k = 0;
    msg[k++] = 0x22;
    msg[k++] = (uint8_t)(2 + sizeof samp);
    msg[k++] = 0x12, msg[k++] = (uint8_t)sizeof samp;
    memcpy(msg + k, samp, sizeof samp);
    k += sizeof samp;
    ref = gemma__control__v1__control_message__unpack(NULL, k, msg);
    assert_non_null(ref);
    mine = ctl_plan_decode(msg, k, &al);
    same_plan(mine, ref);
    const Gemma__Control__V1__Sampling *ms = mine->plan->seqs[0]->sampling;
    assert_int_equal(ms->n_stop_ids, 3);
    assert_int_equal(ms->stop_ids[2], 106);
    assert_true(ms->logprobs);
    assert_int_equal(ms->top_logprobs, 5);
    assert_true(ms->repetition_penalty == 1.5f);
    assert_int_equal(ms->min_tokens, 3);
    assert_int_equal(ms->n_prompt, 12);
    gemma__control__v1__control_message__free_unpacked(ref, NULL);
    t_release(&tp);
    /* other messages are not the hand decoder's business; ctl_msg_unpack hands them to protobuf-c */
    Gemma__Control__V1__Shutdown sd = GEMMA__CONTROL__V1__SHUTDOWN__INIT;
    sd.reason = "x";
    ctl_msg sm = GEMMA__CONTROL__V1__CONTROL_MESSAGE__INIT;
    sm.body_case = GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_SHUTDOWN;
    sm.shutdown = &sd;
    k = gemma__control__v1__control_message__pack(&sm, msg);
    assert_null(ctl_plan_decode(msg, k, &al));
    t_release(&tp);
    ctl_msg *any = ctl_msg_unpack(msg, k, NULL);
    assert_non_null(any);
    assert_int_equal(any->body_case, GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_SHUTDOWN);
    assert_string_equal(any->shutdown->reason, "x");
    gemma__control__v1__control_message__free_unpacked(any, NULL);
    msg[0] = 0xff; /* malformed */
    assert_null(ctl_msg_unpack(msg, k, NULL));
}

/* ---- worker spec ---- */

/* Every field away from ctl_spec_init's value. */
static void spec_all_set(gm_worker_spec *s)
{
    ctl_spec_init(s);
    s->backend = GM_BACKEND_NULL;
    s->tp_size = 4;
    s->device = 7;
    s->kv_block_size = 32;
    s->kv_num_blocks = 12345;
    s->kv_mem_bytes = 5ll << 30;
    s->kv_mem_fraction = 0.8125;
    s->max_seqs = 333;
    s->max_tokens = 4444;
    s->max_context = 5555;
    s->quant = GM_QUANT_AWQ;
    s->kv_dtype = GM_KV_FP8;
    s->use_graphs = 0;
    s->lm_head_fp8 = 1;
    s->verbose = 1;
    assert_int_equal(ctl_spec_set_model(s, "/models/gemma-2b \"quoted\""), GM_OK);
}

/* Case c of test_spec's range checks: one field out of its range. */
static void spec_spoil(gm_worker_spec *x, int c)
{
    switch (c) {
    case 0: x->backend = (gm_backend)3; break;
    case 1: x->tp_size = 0; break;
    case 2: x->device = -1; break;
    case 3: x->kv_block_size = 0; break;
    case 4: x->kv_num_blocks = -1; break;
    case 5: x->kv_mem_bytes = -5; break;
    case 6: x->kv_mem_fraction = 1.5; break;
    case 7: x->kv_mem_fraction = NAN; break;
    case 8: x->max_seqs = -1; break;
    case 9: x->max_tokens = 1 << 25; break;
    case 10: x->max_context = -2; break;
    case 11: x->quant = (gm_quant)7; break;
    case 12: x->kv_dtype = (gm_kv_dtype)-1; break;
    case 13: x->use_graphs = 2; break;
    case 14: x->lm_head_fp8 = -1; break;
    default: x->verbose = 9; break;
    }
}

static void test_spec(void **state)
{
    (void)state;
    /* names both ways */
    for (int b = 0; b < GM_BACKEND_COUNT; b++)
        assert_int_equal(gm_backend_parse(gm_backend_name((gm_backend)b)), b);
    for (int q = 0; q < GM_QUANT_COUNT; q++)
        assert_int_equal(gm_quant_parse(gm_quant_name((gm_quant)q)), q);
    for (int d = 0; d < GM_KV_DTYPE_COUNT; d++)
        assert_int_equal(gm_kv_dtype_parse(gm_kv_dtype_name((gm_kv_dtype)d)), d);
    assert_int_equal(gm_backend_parse("tpu"), -1);
    assert_int_equal(gm_backend_parse(NULL), -1);
    assert_int_equal(gm_quant_parse("int4"), -1);
    assert_int_equal(gm_kv_dtype_parse("f32"), -1);
    assert_string_equal(gm_backend_name((gm_backend)9), "?");
    assert_string_equal(gm_quant_name((gm_quant)-1), "?");

    gm_worker_spec d, s, back;
    ctl_spec_init(&d);
    assert_int_equal(d.backend, GM_BACKEND_CPU);
    assert_int_equal(d.tp_size, 1);
    assert_int_equal(d.kv_block_size, 16);
    assert_int_equal(d.use_graphs, 1);
    assert_int_equal(d.max_seqs, 0);
    assert_int_equal(d.kv_mem_bytes, 0);
    assert_int_equal(ctl_spec_check(&d), GM_OK);
    spec_all_set(&s);
    assert_int_equal(ctl_spec_check(&s), GM_OK);
    /* each field really differs from the default, and the diff names it */
#define DIFFERS_(type, name, num)                                                                                    \
    {                                                                                                                \
        gm_worker_spec t = d;                                                                                        \
        t.name = s.name;                                                                                             \
        assert_true(d.name != s.name);                                                                               \
        assert_string_equal(ctl_spec_diff(&d, &t), #name);                                                           \
    }
    GM_SPEC_FIELDS(DIFFERS_)
#undef DIFFERS_
    assert_null(ctl_spec_diff(&s, &s));

    /* through control.proto's bytes and back: nothing dropped or misread */
    Gemma__Control__V1__WorkerSpec m;
    ctl_spec_pack(&s, &m);
    ctl_msg cm = GEMMA__CONTROL__V1__CONTROL_MESSAGE__INIT;
    cm.body_case = GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_SPEC;
    cm.spec = &m;
    size_t len = gemma__control__v1__control_message__get_packed_size(&cm);
    uint8_t *buf = malloc(len);
    gemma__control__v1__control_message__pack(&cm, buf);
    ctl_msg *u = ctl_msg_unpack(buf, len, NULL);
    assert_non_null(u);
    assert_int_equal(u->body_case, GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_SPEC);
    GOK(ctl_spec_unpack(u->spec, &back));
    assert_null(ctl_spec_diff(&s, &back));
    assert_memory_equal(&s, &back, sizeof s);
    gemma__control__v1__control_message__free_unpacked(u, NULL);
    free(buf);
    assert_int_equal(ctl_spec_unpack(NULL, &back), GM_ERR_FORMAT);

    /* GM_SPEC_FIELDS numbers are the proto's, and the proto has no field the list lacks */
    const ProtobufCMessageDescriptor *desc = &gemma__control__v1__worker_spec__descriptor;
    unsigned listed = 1; /* model_dir */
#define NUMBER_(type, name, num)                                                                                     \
    {                                                                                                                \
        const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(desc, #name);            \
        assert_non_null(f);                                                                                          \
        assert_int_equal(f->id, num);                                                                                \
        listed++;                                                                                                    \
    }
    GM_SPEC_FIELDS(NUMBER_)
#undef NUMBER_
    assert_int_equal(desc->n_fields, listed);
    assert_int_equal(protobuf_c_message_descriptor_get_field_by_name(desc, "model_dir")->id, 2);

    /* range checks, each naming its field */
    static const char *const bad[] = {"backend",  "tp_size",    "device",     "kv_block_size", "kv_num_blocks",
                                      "kv_mem_bytes", "kv_mem_fraction", "kv_mem_fraction", "max_seqs",
                                      "max_tokens", "max_context", "quant",    "kv_dtype",   "use_graphs",
                                      "lm_head_fp8", "verbose"};
    for (int c = 0; c < (int)(sizeof bad / sizeof bad[0]); c++) {
        gm_worker_spec t = d;
        spec_spoil(&t, c);
        assert_int_equal(ctl_spec_check(&t), GM_ERR_INVALID_ARG);
        if (!strstr(gm_last_error(), bad[c]))
            fail_msg("%s: error does not name it: %s", bad[c], gm_last_error());
    }
    char longdir[GM_SPEC_PATH_MAX + 8];
    memset(longdir, 'a', sizeof longdir - 1);
    longdir[sizeof longdir - 1] = 0;
    assert_int_equal(ctl_spec_set_model(&s, longdir), GM_ERR_INVALID_ARG);
    GOK(ctl_spec_set_model(&s, NULL));
    assert_string_equal(s.model_dir, "");
}

/* ---- step validator ---- */

static const ctl_limits g_lim = {.max_seqs = 4, .max_tokens = 16, .max_context = 64, .kv_block_size = 8,
                                 .vocab_size = 100, .kv_blocks = 10};
static int32_t g_tok[16] = {2, 5, 7, 9, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53}, g_prev = GM_TOKEN_PREVIOUS;
static int32_t g_tab[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

static const gm_stop_set g_stops_many = {GM_MAX_STOP_SET + 1, {0}}, g_stops_bad = {2, {1, 100}};

static gm_seq_step step_ok(int32_t slot)
{
    gm_seq_step s = {slot, g_tok, 3, 0, g_tab, 1, GM_LOGITS_LAST, GM_SAMPLING_GREEDY};
    return s;
}

/* What each rejection case of step_spoil must say. */
static const char *const g_step_says[] = {
    "takes 0..4",         "outside",           "outside",         "reuses slot",      "0 tokens",
    "tokens",             "exceed the context", "exceed the context", "blocks, 2 needed", "block table",
    "pool has 10",        "vocabulary is 100", "is id -7",        "is id -1",         "at position 0",
    "bad sampling",       "bad sampling",      "bad sampling",    "bad sampling",     "bad sampling",
    "bad sampling",       "bad penalties",     "bad penalties",   "bad penalties",    "bad penalties",
    "n_prompt -1",        "min_tokens -2",     "logprobs 2",      "top_logprobs 21",  "67 stop ids",
    "stop id 100",        "unknown logits mode", "a verify entry takes no", "a verify entry takes no",
    "a verify entry takes no", "at most 16",
};
#define N_STEP_CASES ((int)(sizeof g_step_says / sizeof g_step_says[0]))

/* Case c: spoil a valid step s[0..4] (slots 0..3, 0); returns how many entries to check. */
static int step_spoil(gm_seq_step *s, int c)
{
    static const int32_t past_vocab[] = {1, 100, 2}, negative[] = {1, -7, 2}, fed3[] = {-1, -1, -1};
    switch (c) {
    case 0: return 5;                                                    /* too many sequences */
    case 1: s[0].slot = 4; break;                                        /* slot out of range */
    case 2: s[0].slot = -1; break;
    case 3: s[1].slot = s[0].slot; return 2;                             /* a slot twice */
    case 4: s[0].n_tokens = 0; break;
    case 5: s[0].tokens = NULL; break;
    case 6: s[0].start_pos = -1; break;
    case 7: s[0].start_pos = 62, s[0].n_blocks = 8; break;               /* past the context */
    case 8: s[0].start_pos = 6; break;                                   /* too few blocks */
    case 9: s[0].block_table = NULL; break;
    case 10: s[0].block_table = g_tab + 8, s[0].start_pos = 30, s[0].n_blocks = 5; break; /* id 10 */
    case 11: s[0].tokens = past_vocab; break;
    case 12: s[0].tokens = negative; break;
    case 13: s[0].tokens = fed3; break;                                  /* -1 inside a prefill */
    case 14: s[0].tokens = &g_prev, s[0].n_tokens = 1; break;            /* -1 at position 0 */
    case 15: s[0].sampling.temperature = NAN; break;
    case 16: s[0].sampling.temperature = -1; break;
    case 17: s[0].sampling.temperature = INFINITY; break;
    case 18: s[0].sampling.top_k = -1; break;
    case 19: s[0].sampling.top_p = 0; break;
    case 20: s[0].sampling.top_p = 1.5f; break;
    case 21: s[0].sampling.presence_penalty = NAN; break;
    case 22: s[0].sampling.frequency_penalty = INFINITY; break;
    case 23: s[0].sampling.repetition_penalty = -1.0f; break;
    case 24: s[0].sampling.repetition_penalty = NAN; break;
    case 25: s[0].sampling.n_prompt = -1; break;
    case 26: s[0].sampling.min_tokens = -2; break;
    case 27: s[0].sampling.logprobs = 2; break;
    case 28: s[0].sampling.top_logprobs = GM_MAX_TOP_LOGPROBS + 1; break;
    case 29: s[0].stops = &g_stops_many; break;
    case 30: s[0].stops = &g_stops_bad; break;
    case 31: s[0].logits_mode = 4; break;
    case 32: s[0].logits_mode = GM_LOGITS_VERIFY, s[0].sampling.repetition_penalty = 1.2f; break;
    case 33: s[0].logits_mode = GM_LOGITS_VERIFY, s[0].sampling.logprobs = 1; break;
    case 34: s[0].logits_mode = GM_LOGITS_VERIFY, s[0].tokens = &g_prev, s[0].n_tokens = 1, s[0].start_pos = 3; break;
    default: s[0].n_tokens = 8, s[1].n_tokens = 9, s[1].n_blocks = 2; return 2; /* 17 > max_tokens */
    }
    return 1;
}

static void test_check_step(void **state)
{
    (void)state;
    ctl_marks mk = {0};
    ctl_step_sums sums;
    gm_seq_step q[5];
    q[0] = step_ok(0);
    q[1] = step_ok(3);
    q[1].logits_mode = GM_LOGITS_ALL;
    q[2] = step_ok(1);
    q[2].tokens = &g_prev, q[2].n_tokens = 1, q[2].start_pos = 8, q[2].n_blocks = 2; /* run-ahead decode */
    GOK(ctl_check_step(&g_lim, &mk, q, 3, NULL, &sums));
    assert_int_equal(sums.tokens, 7);
    assert_int_equal(sums.logits_rows, 1 + 3 + 1);
    GOK(ctl_check_step(&g_lim, &mk, NULL, 0, NULL, NULL)); /* an empty step is valid */
    q[1].logits_mode = GM_LOGITS_VERIFY; /* speculative decoding: a sample per new position */
    GOK(ctl_check_step(&g_lim, &mk, q, 3, NULL, &sums));
    assert_int_equal(sums.logits_rows, 1 + 3 + 1);
    assert_int_equal(sums.verify_rows, 3);
    q[1].logits_mode = GM_LOGITS_ALL;
    static const gm_stop_set stops = {3, {1, 99, 0}};
    q[0].sampling.presence_penalty = -2.0f, q[0].sampling.frequency_penalty = 2.0f;
    q[0].sampling.repetition_penalty = 1.3f, q[0].sampling.n_prompt = 3, q[0].sampling.min_tokens = 5;
    q[0].sampling.logprobs = 1, q[0].sampling.top_logprobs = GM_MAX_TOP_LOGPROBS;
    q[0].stops = &stops;
    GOK(ctl_check_step(&g_lim, &mk, q, 3, NULL, NULL)); /* the extensions at their limits */
    int32_t last[4] = {-1, 42, -1, -1};
    GOK(ctl_check_step(&g_lim, &mk, q, 3, last, NULL)); /* slot 1 has a sample */

    /* each rejection, with the words its message must carry */
    for (int c = 0; c < N_STEP_CASES; c++) {
        for (int i = 0; i < 5; i++)
            q[i] = step_ok(i % 4);
        int n = step_spoil(q, c);
        gm_clear_error();
        gm_status st = ctl_check_step(&g_lim, &mk, q, n, NULL, NULL);
        if (st != GM_ERR_INVALID_ARG || !strstr(gm_last_error(), g_step_says[c]))
            fail_msg("case %d (%s): %s: %s", c, g_step_says[c], gm_status_str(st), gm_last_error());
    }
    /* the previous-token rule with each slot's last sample */
    q[0] = step_ok(0);
    q[0].tokens = &g_prev, q[0].n_tokens = 1, q[0].start_pos = 3;
    GOK(ctl_check_step(&g_lim, &mk, q, 1, NULL, NULL)); /* no table given: the engine resolves it */
    assert_int_equal(ctl_check_step(&g_lim, &mk, q, 1, last, NULL), GM_ERR_INVALID_ARG); /* slot 0: none */
    assert_non_null(strstr(gm_last_error(), "has none"));
    q[0].slot = 1;
    GOK(ctl_check_step(&g_lim, &mk, q, 1, last, NULL));
    GOK(ctl_check_previous(&q[0], 0, last));
    /* marks survive a stamp wrap */
    mk.stamp = UINT32_MAX;
    q[1] = step_ok(2);
    GOK(ctl_check_step(&g_lim, &mk, q, 2, NULL, NULL));
    q[1].slot = 1;
    assert_int_equal(ctl_check_step(&g_lim, &mk, q, 2, NULL, NULL), GM_ERR_INVALID_ARG);
    ctl_marks_free(&mk);
}

/* Block copies: each refusal, and what passes. */
static void test_check_copies(void **state)
{
    (void)state;
    gm_block_copy ok[3] = {{1, 2}, {1, 3}, {4, 5}}; /* one block copied twice is fine */
    GOK(ctl_check_copies(&g_lim, ok, 3));
    GOK(ctl_check_copies(&g_lim, NULL, 0));
    struct {
        gm_block_copy c[2];
        int32_t n;
        const char *says;
    } bad[] = {
        {{{1, 2}, {3, 2}}, 2, "overlap"},       /* dst twice */
        {{{1, 2}, {2, 3}}, 2, "overlap"},       /* a dst read */
        {{{1, 2}, {3, 1}}, 2, "overlap"},       /* a src written */
        {{{4, 4}, {0, 1}}, 1, "onto itself"},
        {{{-1, 2}, {0, 1}}, 1, "pool has"},
        {{{1, 100000}, {0, 1}}, 1, "pool has"},
        {{{1, 2}, {0, 1}}, -1, "block copies"},
    };
    for (size_t c = 0; c < sizeof bad / sizeof bad[0]; c++) {
        gm_status st = ctl_check_copies(&g_lim, bad[c].c, bad[c].n);
        if (st != GM_ERR_INVALID_ARG || !strstr(gm_last_error(), bad[c].says))
            fail_msg("case %zu: %s: %s", c, gm_status_str(st), gm_last_error());
    }
    gm_block_copy many[5] = {{0, 1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}}; /* more than max_seqs */
    assert_int_equal(ctl_check_copies(&g_lim, many, g_lim.max_seqs + 1), GM_ERR_INVALID_ARG);
}

/* ---- slot deltas: sender -> bytes -> receiver ---- */

/* Send steps[0..n) from tx to rx through the plan codec; the receiver's view. */
static gm_status send_plan(ctl_slots *tx, ctl_slots *rx, const gm_seq_step *steps, int n, int64_t kv_blocks,
                           gm_seq_step *got, t_pool *tp, Gemma__Control__V1__SeqPlan *sp)
{
    Gemma__Control__V1__Sampling sa[8];
    Gemma__Control__V1__SeqPlan *spp[8];
    for (int i = 0; i < n; i++) {
        ctl_slots_put(tx, &steps[i], &sp[i], &sa[i]);
        spp[i] = &sp[i];
    }
    Gemma__Control__V1__StepPlan plan = GEMMA__CONTROL__V1__STEP_PLAN__INIT;
    plan.step_id = 1;
    plan.seqs = spp;
    plan.n_seqs = (size_t)n;
    ctl_msg cm = GEMMA__CONTROL__V1__CONTROL_MESSAGE__INIT;
    cm.body_case = GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_PLAN;
    cm.plan = &plan;
    uint8_t buf[4096];
    size_t len = ctl_plan_size(&cm);
    assert_true(len <= sizeof buf);
    ctl_plan_pack(&cm, len, buf);
    ProtobufCAllocator al = {t_alloc, t_free, tp};
    ctl_msg *m = ctl_msg_unpack(buf, len, &al);
    assert_non_null(m);
    return ctl_slots_take(rx, m->plan, kv_blocks, got);
}

static void same_entry(const gm_seq_step *a, const gm_seq_step *b)
{
    assert_int_equal(a->slot, b->slot);
    assert_int_equal(a->n_tokens, b->n_tokens);
    assert_memory_equal(a->tokens, b->tokens, (size_t)a->n_tokens * sizeof *a->tokens);
    assert_int_equal(a->start_pos, b->start_pos);
    assert_int_equal(a->n_blocks, b->n_blocks);
    assert_memory_equal(a->block_table, b->block_table, (size_t)a->n_blocks * sizeof *a->block_table);
    assert_int_equal(a->logits_mode, b->logits_mode);
    const gm_sampling *x = &a->sampling, *y = &b->sampling; /* field by field: padding may differ */
    assert_true(x->temperature == y->temperature && x->top_k == y->top_k && x->top_p == y->top_p);
    assert_true(x->seed == y->seed && x->presence_penalty == y->presence_penalty);
    assert_true(x->frequency_penalty == y->frequency_penalty && x->repetition_penalty == y->repetition_penalty);
    assert_true(x->n_prompt == y->n_prompt && x->min_tokens == y->min_tokens && x->logprobs == y->logprobs);
    assert_true(x->top_logprobs == y->top_logprobs);
    int32_t na = a->stops ? a->stops->n : 0, nb = b->stops ? b->stops->n : 0;
    assert_int_equal(na, nb);
    if (na)
        assert_memory_equal(a->stops->ids, b->stops->ids, (size_t)na * sizeof *a->stops->ids);
}

static void test_slots(void **state)
{
    (void)state;
    ctl_slots tx, rx;
    GOK(ctl_slots_init(&tx, 4, 0));
    GOK(ctl_slots_init(&rx, 4, 6));
    assert_null(tx.tables);
    t_pool tp = {.n = 0};
    Gemma__Control__V1__SeqPlan sp[8];
    gm_seq_step got[8];
    int32_t table[2][6] = {{5, 1, 9, 2, 7, 3}, {0, 4, 6, 8, 10, 11}};
    gm_sampling hot = {0.7f, 40, 0.9f, 77, 0.5f, -0.25f, 1.2f, 5, 3, 1, 4};
    gm_stop_set stops = {3, {1, 107, 9}}, stops2 = {2, {1, 107}};
    /* a sequence that grows: prefill, then decodes, its table growing by deltas */
    for (int k = 0; k < 8; k++) {
        gm_seq_step s[2];
        for (int i = 0; i < 2; i++) {
            s[i] = (gm_seq_step){i ? 3 : 0, k ? &g_prev : g_tok, k ? 1 : 5, k ? 5 + 4 * (k - 1) : 0, table[i],
                                 k + 1 < 6 ? k + 1 : 6, GM_LOGITS_LAST, i ? hot : GM_SAMPLING_GREEDY, i ? &stops : NULL};
            if (k >= 4 && i == 1)
                s[i].sampling.temperature = 0.5f; /* a sampling change goes out as a delta */
            if (k >= 6 && i == 1)
                s[i].stops = &stops2; /* and so does a change of the stop set alone */
        }
        if (k == 7)
            s[1].stops = NULL;
        GOK(send_plan(&tx, &rx, s, 2, 12, got, &tp, sp));
        for (int i = 0; i < 2; i++)
            same_entry(&s[i], &got[i]);
        assert_int_equal(!!sp[0].reset, k == 0);
        assert_int_equal(sp[0].n_block_table, k < 6 ? 1 : 0); /* only the appended block */
        assert_int_equal(sp[1].sampling != NULL, k == 0 || k == 4 || k == 6 || k == 7);
        assert_null(got[0].stops);
        t_release(&tp);
    }
    /* a shrinking table and a new sequence at position 0 reset the slot */
    gm_seq_step s = {0, g_tok, 2, 4, table[1], 2, GM_LOGITS_NONE, GM_SAMPLING_GREEDY};
    GOK(send_plan(&tx, &rx, &s, 1, 12, got, &tp, sp));
    assert_true(sp[0].reset);
    same_entry(&s, &got[0]);
    t_release(&tp);
    s.start_pos = 0;
    s.n_blocks = 1;
    GOK(send_plan(&tx, &rx, &s, 1, 12, got, &tp, sp));
    assert_true(sp[0].reset);
    same_entry(&s, &got[0]);
    t_release(&tp);
    /* a new sequence in the slot at a cached prefix (start_pos > 0, a longer table): only its reset
     * flag tells; without it the delta would extend the last sequence's table */
    s = (gm_seq_step){0, g_tok, 2, 8, table[0], 4, GM_LOGITS_LAST, GM_SAMPLING_GREEDY};
    s.reset = true;
    GOK(send_plan(&tx, &rx, &s, 1, 12, got, &tp, sp));
    assert_true(sp[0].reset);
    assert_int_equal(sp[0].n_block_table, 4);
    same_entry(&s, &got[0]);
    t_release(&tp);
    /* and a block replaced by its copy (same length): the same */
    int32_t cow[4] = {5, 1, 11, 2};
    s = (gm_seq_step){0, &g_prev, 1, 10, cow, 4, GM_LOGITS_LAST, GM_SAMPLING_GREEDY};
    s.reset = true;
    GOK(send_plan(&tx, &rx, &s, 1, 12, got, &tp, sp));
    assert_true(sp[0].reset);
    same_entry(&s, &got[0]);
    t_release(&tp);
    s.reset = false; /* the next decode extends it again */
    s.start_pos = 11;
    GOK(send_plan(&tx, &rx, &s, 1, 12, got, &tp, sp));
    assert_false(sp[0].reset);
    assert_int_equal(sp[0].n_block_table, 0);
    same_entry(&s, &got[0]);
    t_release(&tp);

    /* after a failure both ends forget: the next entry resends the whole table */
    ctl_slots_forget(&tx);
    ctl_slots_forget(&rx);
    s.start_pos = 4, s.n_blocks = 3;
    GOK(send_plan(&tx, &rx, &s, 1, 12, got, &tp, sp));
    assert_true(sp[0].reset);
    assert_int_equal(sp[0].n_block_table, 3);
    t_release(&tp);

    /* the receiver's refusals */
    Gemma__Control__V1__SeqPlan q = GEMMA__CONTROL__V1__SEQ_PLAN__INIT, *qp[5] = {&q, &q, &q, &q, &q};
    Gemma__Control__V1__StepPlan p = GEMMA__CONTROL__V1__STEP_PLAN__INIT;
    p.seqs = qp;
    int32_t blocks[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    q.block_table = blocks;
    struct {
        const char *says;
        size_t n_seqs;
        int32_t slot;
        bool reset;
        size_t n_blocks;
        int32_t first;
    } refuse[] = {
        {"no sequences", 0, 0, true, 1, 1},       {"5 sequences > max_seqs 4", 5, 0, true, 1, 1},
        {"outside 0..3", 1, 4, true, 1, 1},       {"outside 0..3", 1, -1, true, 1, 1},
        {"has no block table", 1, 2, false, 1, 1}, {"at most 6", 1, 0, true, 7, 1},
        {"out of range 0..11", 1, 0, true, 1, 12}, {"out of range 0..11", 1, 0, true, 1, -1},
    };
    ctl_slots_forget(&rx);
    for (size_t c = 0; c < sizeof refuse / sizeof refuse[0]; c++) {
        p.n_seqs = refuse[c].n_seqs;
        q.slot = refuse[c].slot;
        q.reset = refuse[c].reset;
        q.n_block_table = refuse[c].n_blocks;
        blocks[0] = refuse[c].first;
        gm_status st = ctl_slots_take(&rx, &p, 12, got);
        if (st != GM_ERR_INVALID_ARG || !strstr(gm_last_error(), refuse[c].says))
            fail_msg("case %zu: %s: %s", c, gm_status_str(st), gm_last_error());
    }
    /* a reset without sampling means greedy */
    p.n_seqs = 1, q.slot = 1, q.reset = true, q.n_block_table = 2, blocks[0] = 0;
    q.tokens = g_tok, q.n_tokens = 2;
    rx.samp[1] = hot;
    rx.stops[1] = stops;
    GOK(ctl_slots_take(&rx, &p, 12, got));
    assert_memory_equal(&got[0].sampling, &GM_SAMPLING_GREEDY, sizeof(gm_sampling));
    assert_null(got[0].stops); /* and no stop set */
    /* more stop ids than a slot holds */
    int32_t many[GM_MAX_STOP_SET + 1] = {0};
    Gemma__Control__V1__Sampling sa = GEMMA__CONTROL__V1__SAMPLING__INIT;
    sa.top_p = 1.0f, sa.stop_ids = many, sa.n_stop_ids = GM_MAX_STOP_SET + 1;
    q.sampling = &sa;
    assert_int_equal(ctl_slots_take(&rx, &p, 12, got), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "67 stop ids"));
    sa.n_stop_ids = GM_MAX_STOP_SET;
    GOK(ctl_slots_take(&rx, &p, 12, got));
    assert_int_equal(got[0].stops->n, GM_MAX_STOP_SET);
    assert_int_equal(ctl_slots_init(&tx, 0, 0), GM_ERR_INVALID_ARG);
    ctl_slots_free(&tx);
    ctl_slots_free(&rx);
}

/* ---- sizing ---- */

#define GB 1000000000ll
#define GIB_ (1ll << 30)

static gm_model_config model(int seven)
{
    gm_model_config c;
    memset(&c, 0, sizeof c);
    c.vocab_size = 256000;
    c.hidden_size = seven ? 3072 : 2048;
    c.intermediate_size = seven ? 24576 : 16384;
    c.num_layers = seven ? 28 : 18;
    c.num_heads = seven ? 16 : 8;
    c.num_kv_heads = seven ? 16 : 1;
    c.head_dim = 256;
    c.max_position = 8192;
    c.rope_theta = 10000.0f;
    c.rms_norm_eps = 1e-6f;
    gm_config_set_gemma1(&c);
    return c;
}

/* Weights a rank holds: the layers in bf16 or e4m3, the embedding always bf16. */
static int64_t weight_bytes(const gm_model_config *c, int fp8, int tp)
{
    int64_t embed = (int64_t)c->vocab_size * c->hidden_size;
    int64_t layers = gm_config_param_count(c) - embed;
    return (layers * (fp8 ? 1 : 2) + embed * 2) / tp;
}

/* Both steps of the CUDA engine on a fake GPU: free after weights (and a 0.5 GiB
 * context), then free after the runtime buffers as the estimate says. */
static gm_status size_gpu(const gm_model_config *c, const gm_worker_spec *sp, int64_t total, int fp8,
                          gm_sizing *z1, gm_sizing *z2)
{
    gm_device_mem mem = {total, total - weight_bytes(c, fp8, sp->tp_size) - (GIB_ / 2), 0, 0};
    gm_status st = gm_sizing_decide(c, sp, &mem, z1);
    if (st != GM_OK)
        return st;
    assert_int_equal(z1->kv_num_blocks, 0); /* step 1 sizes no pool */
    mem.free_runtime = mem.free_weights - gm_sizing_runtime_bytes(c, sp, z1->max_seqs, z1->max_tokens, z1->max_context);
    if (mem.free_runtime <= 0)
        mem.free_runtime = 1;
    st = gm_sizing_decide(c, sp, &mem, z2);
    if (st == GM_OK) { /* same inputs: the same limits */
        assert_int_equal(z2->max_seqs, z1->max_seqs);
        assert_int_equal(z2->max_tokens, z1->max_tokens);
        assert_int_equal(z2->max_context, z1->max_context);
        double f = sp->kv_mem_fraction > 0 ? sp->kv_mem_fraction : 0.9;
        if (sp->kv_mem_bytes == 0 && sp->kv_num_blocks == 0)
            assert_int_equal(z2->kv_num_blocks, (int64_t)((double)mem.free_runtime * f) / z2->kv_block_bytes);
        print_message("    pool %7lld blocks (%6.2f GiB), seqs %4d, tokens %4d, context %4d\n",
                      (long long)z2->kv_num_blocks, (double)z2->kv_num_blocks * (double)z2->kv_block_bytes / GIB_,
                      z2->max_seqs, z2->max_tokens, z2->max_context);
    }
    return st;
}

static gm_worker_spec cuda_spec(int kv8)
{
    gm_worker_spec s;
    ctl_spec_init(&s);
    s.backend = GM_BACKEND_CUDA;
    s.kv_dtype = kv8 ? GM_KV_FP8 : GM_KV_BF16;
    return s;
}

static void test_sizing_big_gpus(void **state)
{
    (void)state;
    const int64_t h100 = 80 * GB, h200 = 141 * GB;
    for (int g = 0; g < 2; g++)
        for (int seven = 0; seven < 2; seven++)
            for (int fp8 = 0; fp8 < 2; fp8++) {
                gm_model_config c = model(seven);
                gm_worker_spec sp = cuda_spec(fp8);
                sp.quant = fp8 ? GM_QUANT_FP8 : GM_QUANT_NONE;
                gm_sizing z1, z2;
                print_message("%s %s %s:\n", g ? "H200 141 GB" : "H100 80 GB", seven ? "7b" : "2b",
                              fp8 ? "fp8" : "bf16");
                GOK(size_gpu(&c, &sp, g ? h200 : h100, fp8, &z1, &z2));
                assert_int_equal(z2.max_tokens, 8192);
                assert_int_equal(z2.max_context, 8192); /* every such pool holds a whole context */
                int64_t pool_tokens = z2.kv_num_blocks * 16;
                assert_true(z2.kv_num_blocks * z2.kv_block_bytes > 40 * GIB_);
                /* max_seqs = clamp(pool tokens / 256, 8, 1024), from step 1's estimate of the pool */
                int64_t want = pool_tokens / 256 > 1024 ? 1024 : pool_tokens / 256;
                assert_true(z2.max_seqs >= 8 && z2.max_seqs <= 1024);
                assert_true(llabs(z2.max_seqs - want) <= want / 20 + 1);
                if (!seven)
                    assert_int_equal(z2.max_seqs, 1024);
                assert_non_null(strstr(z2.why_kv, "0.90 of the"));
                assert_non_null(strstr(z2.why_seqs, "sequences of 256"));
                assert_non_null(strstr(z2.why_tokens, "default step budget"));
                assert_non_null(strstr(z2.why_context, "max_position"));
            }
    /* 2b FP8 on an H100 with tp 2: each rank holds half the weights, the one KV head replicated */
    gm_model_config c = model(0);
    gm_worker_spec sp = cuda_spec(1);
    sp.tp_size = 2;
    assert_int_equal(gm_sizing_block_bytes(&c, &sp), 2 * 18 * 1 * 16 * 256);
    gm_model_config c7 = model(1);
    assert_int_equal(gm_sizing_block_bytes(&c7, &sp), 2 * 28 * 8 * 16 * 256);
}

static void test_sizing_small_gpus(void **state)
{
    (void)state;
    gm_model_config c2 = model(0), c7 = model(1);
    gm_worker_spec sp = cuda_spec(0);
    gm_sizing z1, z2;
    /* 2b bf16 on a 12 GB card: a smaller pool, a smaller batch, still a whole context */
    print_message("12 GB, 2b bf16:\n");
    GOK(size_gpu(&c2, &sp, 12 * GB, 0, &z1, &z2));
    assert_true(z2.max_seqs < 1024 && z2.max_seqs >= 8);
    /* 2b bf16 on an 8 GB card: the step budget shrinks to fit */
    print_message("8 GB, 2b bf16:\n");
    GOK(size_gpu(&c2, &sp, 8 * GB, 0, &z1, &z2));
    assert_true(z2.max_tokens < 8192 && z2.max_tokens >= 512);
    assert_non_null(strstr(z2.why_tokens, "halved"));
    /* 7b bf16 on a 20 GB card: the pool cannot hold one 8192-token sequence */
    print_message("20 GB, 7b bf16:\n");
    GOK(size_gpu(&c7, &sp, 20 * GB, 0, &z1, &z2));
    assert_true(z2.max_context < 8192);
    assert_int_equal(z2.max_context % 16, 0);
    assert_non_null(strstr(z2.why_context, "holds only"));
    assert_int_equal(z2.max_seqs, 8);
    /* 7b bf16 on a 16 GB card: the weights do not fit */
    assert_int_equal(size_gpu(&c7, &sp, 16 * GB, 0, &z1, &z2), GM_ERR_CAPACITY);
    assert_non_null(strstr(gm_last_error(), "weights leave no device memory"));
    /* a pool that holds no block */
    gm_device_mem mem = {18 * GB, 18 * GB - weight_bytes(&c7, 0, 1) - GIB_ / 2, 0, 0};
    mem.free_weights = gm_sizing_runtime_bytes(&c7, &sp, 8, 512, 8192) + 1000;
    assert_int_equal(gm_sizing_decide(&c7, &sp, &mem, &z1), GM_ERR_CAPACITY);
    assert_non_null(strstr(gm_last_error(), "would not hold one block"));
    mem.free_weights = 4 * GIB_; /* step 2 with next to nothing left */
    GOK(gm_sizing_decide(&c7, &sp, &mem, &z1));
    mem.free_runtime = 1000;
    assert_int_equal(gm_sizing_decide(&c7, &sp, &mem, &z1), GM_ERR_CAPACITY);
    assert_non_null(strstr(gm_last_error(), "holds no block"));
}

static void test_sizing_explicit(void **state)
{
    (void)state;
    gm_model_config c = model(0);
    gm_worker_spec sp = cuda_spec(1);
    sp.max_seqs = 100, sp.max_tokens = 1000, sp.max_context = 2048, sp.kv_mem_bytes = 10 * GIB_;
    gm_sizing z1, z2;
    GOK(size_gpu(&c, &sp, 80 * GB, 1, &z1, &z2));
    assert_int_equal(z2.max_seqs, 100);
    assert_int_equal(z2.max_tokens, 1000);
    assert_int_equal(z2.max_context, 2048);
    assert_int_equal(z2.kv_bytes, 10 * GIB_);
    assert_int_equal(z2.kv_num_blocks, 10 * GIB_ / z2.kv_block_bytes);
    assert_non_null(strstr(z2.why_seqs, "set explicitly"));
    assert_non_null(strstr(z2.why_tokens, "set explicitly"));
    assert_non_null(strstr(z2.why_context, "set explicitly"));
    assert_non_null(strstr(z2.why_kv, "set explicitly"));
    /* a context past the model's is the model's */
    sp.max_context = 100000;
    GOK(size_gpu(&c, &sp, 80 * GB, 1, &z1, &z2));
    assert_int_equal(z2.max_context, 8192);
    /* exact blocks, and a fraction */
    sp = cuda_spec(1);
    sp.kv_num_blocks = 4096;
    GOK(size_gpu(&c, &sp, 80 * GB, 1, &z1, &z2));
    assert_int_equal(z2.kv_num_blocks, 4096);
    assert_int_equal(z2.max_seqs, 4096 * 16 / 256);
    sp = cuda_spec(1);
    sp.kv_mem_fraction = 0.5;
    GOK(size_gpu(&c, &sp, 80 * GB, 1, &z1, &z2));
    assert_non_null(strstr(z2.why_kv, "0.50 of the"));
    /* a budget larger than the GPU: a clear error that says what fits */
    sp = cuda_spec(1);
    sp.kv_mem_bytes = 200 * GIB_;
    assert_int_equal(size_gpu(&c, &sp, 80 * GB, 1, &z1, &z2), GM_ERR_CAPACITY);
    assert_non_null(strstr(gm_last_error(), "does not fit"));
    assert_non_null(strstr(gm_last_error(), "would fit"));
    print_message("  %s\n", gm_last_error());
    sp = cuda_spec(1);
    sp.kv_num_blocks = 100000000;
    assert_int_equal(size_gpu(&c, &sp, 80 * GB, 1, &z1, &z2), GM_ERR_CAPACITY);
    assert_non_null(strstr(gm_last_error(), "would fit"));
}

static void test_sizing_host(void **state)
{
    (void)state;
    gm_model_config c = model(0);
    gm_worker_spec sp;
    ctl_spec_init(&sp);
    gm_device_mem none = {0};
    gm_sizing z;
    for (int b = 0; b < 2; b++) {
        sp.backend = b ? GM_BACKEND_NULL : GM_BACKEND_CPU;
        GOK(gm_sizing_decide(&c, &sp, &none, &z));
        assert_int_equal(z.max_seqs, 64);
        assert_int_equal(z.max_tokens, 2048);
        assert_int_equal(z.max_context, 8192);
        assert_int_equal(z.kv_bytes, 64ll << 20);
        assert_int_equal(z.kv_block_bytes, 2 * 18 * 16 * 256 * (b ? 2 : 4)); /* cpu: f32; null: bf16 */
        assert_int_equal(z.kv_num_blocks, (64ll << 20) / z.kv_block_bytes);
        assert_non_null(strstr(z.why_kv, b ? "null backend's default" : "cpu backend's default"));
        GOK(gm_sizing_decide(NULL, &sp, &none, &z)); /* no model (null backend) */
        assert_int_equal(z.max_context, 0);
        assert_int_equal(z.kv_num_blocks, 0);
    }
    sp.max_seqs = 3, sp.max_tokens = 99, sp.kv_mem_bytes = 1 << 20;
    GOK(gm_sizing_decide(&c, &sp, &none, &z));
    assert_int_equal(z.max_seqs, 3);
    assert_int_equal(z.max_tokens, 99);
    assert_int_equal(z.kv_bytes, 1 << 20);
    sp.kv_block_size = 0;
    assert_int_equal(gm_sizing_decide(&c, &sp, &none, &z), GM_ERR_INVALID_ARG);
    sp.kv_block_size = 16;
    gm_device_mem gpu = {80 * GB, 70 * GB, 0, 0};
    assert_int_equal(gm_sizing_decide(NULL, &sp, &gpu, &z), GM_ERR_INVALID_ARG);
}

int main(void)
{
    gm_log_init("test_ctl", GM_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_codec),        cmocka_unit_test(test_spec),
        cmocka_unit_test(test_check_step),        cmocka_unit_test(test_slots),
        cmocka_unit_test(test_check_copies),
        cmocka_unit_test(test_sizing_big_gpus),   cmocka_unit_test(test_sizing_small_gpus),
        cmocka_unit_test(test_sizing_explicit),   cmocka_unit_test(test_sizing_host),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
