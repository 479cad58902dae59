/* beam_run.c - beam search requests in gemmad: the scheduler's beam group (daemon/sched.h) driven by
 * the search's rules (daemon/beam.h), and the result handed to the request's choices.
 *
 * A request with beam_width W has W sequences, one scheduler group: choices 0..n-1 hold beams 0..n-1,
 * this module the rest. Every entry of a beam asks the workers for its token's top 2W alternatives
 * (greedy sampling, top_logprobs = 2W: the raw logits' log-probabilities; what they sample is ignored).
 * When every live beam's alternatives are in, beam_advance picks the next round and
 * sched_beam_reseat re-points the beams (shared blocks, copy-on-write of the last partial one). Nothing
 * is streamed: at the end the n best hypotheses are written into the choices' sequences (their tokens,
 * log-probabilities and text) and the choices complete as usual. A request that ends any other way
 * (cancel, client gone, worker failure, shutdown) ends every beam and reports no tokens. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "daemon/beam.h"
#include "daemon/server_int.h"

struct gd_beam {
    beam_search *bs;
    sched_seq *lead;
    sched_seq *own[SCHED_MAX_BEAM]; /* beams no choice holds (index >= n_ch); freed with the request */
    int32_t n_own;
    gm_token_logprobs lp[SCHED_MAX_BEAM]; /* each beam's latest alternatives */
    uint32_t fed;                         /* beams whose alternatives of this round are in lp */
    bool over;                            /* the result was handed out */
};

gm_status gd_beam_start(gd_server *s, gd_req *r, sched_seq **seqs, int32_t width)
{
    (void)s;
    beam_opts o = {width, r->n_ch, r->beam_length_penalty, r->beam_early_stopping, seqs[0]->max_new};
    gd_beam *b = calloc(1, sizeof *b);
    if (!b || !(b->bs = beam_new(&o))) {
        free(b);
        return gm_fail(GM_ERR_NOMEM, "beam search: %s", gm_last_error());
    }
    b->lead = seqs[0];
    for (int32_t i = r->n_ch; i < width; i++)
        b->own[b->n_own++] = seqs[i];
    r->beam = b;
    return GM_OK;
}

static bool beam_is_stop(void *arg, int32_t tok)
{
    void **a = arg;
    return sched_is_stop(a[0], a[1], tok);
}

/* The search is over: the best hypotheses become the choices' output. */
static void beam_deliver(gd_server *s, gd_req *r)
{
    gd_beam *b = r->beam;
    const beam_hyp *h[SCHED_MAX_BEAM];
    int32_t n = beam_result(b->bs, h);
    b->over = true;
    for (int32_t i = 0; i < b->lead->beam_width; i++)
        sched_finish_seq(s->sch, b->lead->beams[i], SCHED_FINISH_STOP);
    double now = gm_now_ms();
    if (r->t_first == 0)
        r->t_first = now;
    char buf[GM_DETOK_MAX_OUT];
    for (int32_t i = 0; i < r->n_ch; i++) {
        gd_choice *c = &r->ch[i];
        sched_seq *q = c->seq;
        int32_t len = i < n ? h[i]->n : 0;
        if (len)
            memcpy(q->tokens + q->n_prompt, h[i]->ids, (size_t)len * sizeof(int32_t));
        q->n_tokens = q->n_prompt + len;
        q->stop_token = i < n && h[i]->stopped;
        s->c.completion_tokens += len;
        for (int32_t k = 0; k < len; k++) {
            if (r->lp_top >= 0)
                gd_req_add_logprobs(r, i, &(gm_token_logprobs){.logprob = h[i]->lps[k]});
            if (c->dt && !(k == len - 1 && q->stop_token)) {
                size_t m = gm_detok_push(c->dt, h[i]->ids[k], buf);
                if (m)
                    txo_append(c->tx, buf, m);
            }
        }
        gd_choice_complete(s, r, i,
                           q->stop_token ? GEMMA__V1__FINISH_REASON__FINISH_STOP : GEMMA__V1__FINISH_REASON__FINISH_LENGTH);
    }
}

void gd_beam_on_step(gd_server *s, gd_req *r, sched_seq *q, bool got, int32_t tok, const gm_token_logprobs *lp)
{
    gd_beam *b = r->beam;
    if (r->done || b->over)
        return;
    if (q->state == SCHED_FINISHED) { /* a NaN row, or no token: the whole search fails */
        if (tok == GM_SAMPLE_NONFINITE)
            gd_req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__NONFINITE_LOGITS,
                            "the model's logits for this request were NaN or Inf at position %d", q->n_tokens);
        else
            gd_req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__INTERNAL,
                            "the engine returned no token for a beam");
        return;
    }
    if (!got)
        return;
    if (!lp) {
        gd_req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__INTERNAL,
                        "the workers returned no log-probabilities for a beam");
        return;
    }
    b->lp[q->index] = *lp;
    b->fed |= 1u << q->index;
    /* the round is complete once every live beam's alternatives are here (the commit marks them all ready
     * before the first is handed to us) */
    if (b->fed != (1u << beam_live(b->bs)) - 1 || !sched_beam_ready(s->sch, b->lead))
        return;
    b->fed = 0;
    beam_top tops[SCHED_MAX_BEAM];
    int32_t live = beam_live(b->bs);
    for (int32_t i = 0; i < live; i++)
        tops[i] = (beam_top){b->lp[i].n_top, b->lp[i].top_ids, b->lp[i].top_logprobs};
    int32_t parent[SCHED_MAX_BEAM], token[SCHED_MAX_BEAM];
    void *arg[2] = {s->sch, b->lead};
    if (beam_advance(b->bs, tops, beam_is_stop, arg, parent, token)) {
        beam_deliver(s, r);
        return;
    }
    if (r->t_first == 0)
        r->t_first = gm_now_ms();
    if (sched_beam_reseat(s->sch, b->lead, parent, token) != GM_OK)
        gd_req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__INTERNAL, "%s",
                        gm_last_error());
}

void gd_beam_end(gd_server *s, gd_req *r)
{
    gd_beam *b = r->beam;
    if (!b || b->over)
        return;
    b->over = true;
    for (int32_t i = 0; i < b->lead->beam_width; i++) {
        sched_seq *q = b->lead->beams[i];
        if (q->state != SCHED_FINISHED)
            sched_finish_seq(s->sch, q, SCHED_FINISH_CANCELLED);
    }
    for (int32_t i = 0; i < r->n_ch; i++) /* an unfinished search has no output */
        if (r->ch[i].seq)
            r->ch[i].seq->n_tokens = r->ch[i].seq->n_prompt;
}

void gd_beam_free(gd_server *s, gd_req *r)
{
    gd_beam *b = r->beam;
    if (!b)
        return;
    gd_beam_end(s, r);
    for (int32_t i = 0; i < b->n_own; i++) {
        s->freed_bytes += 4 * (int64_t)b->own[i]->cap;
        sched_seq_free(s->sch, &b->own[i]);
    }
    beam_destroy(&b->bs);
    free(b);
    r->beam = NULL;
}
