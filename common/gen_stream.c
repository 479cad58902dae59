/* gen_stream.c - stop rule plus streaming detokenizer for generated text. */
#include "gen_stream.h"

#include <stdlib.h>

struct gm_gen_stream {
    gm_detok *d;
    bool chat;
    bool stopped;
    int32_t eos, eot; /* stop ids */
};

gm_gen_stream *gm_gen_stream_new(const gm_tokenizer *t, bool chat)
{
    gm_gen_stream *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->d = gm_detok_new(t);
    if (!s->d) {
        free(s);
        return NULL;
    }
    s->chat = chat;
    s->eos = GM_TOK_EOS;
    s->eot = GM_TOK_END_OF_TURN;
    return s;
}

void gm_gen_stream_set_stop_ids(gm_gen_stream *s, int32_t eos, int32_t end_of_turn)
{
    s->eos = eos;
    s->eot = end_of_turn;
}

void gm_gen_stream_destroy(gm_gen_stream **s)
{
    if (!s || !*s)
        return;
    gm_detok_destroy(&(*s)->d);
    free(*s);
    *s = NULL;
}

size_t gm_gen_stream_push(gm_gen_stream *s, int32_t id, char *out, bool *stop)
{
    out[0] = '\0';
    if (stop)
        *stop = s->stopped;
    if (s->stopped)
        return 0;
    if (id == s->eos || (s->chat && id == s->eot)) {
        s->stopped = true;
        if (stop)
            *stop = true;
        return 0;
    }
    return gm_detok_push(s->d, id, out);
}

size_t gm_gen_stream_finish(gm_gen_stream *s, char *out)
{
    out[0] = '\0';
    return gm_detok_flush(s->d, out);
}
