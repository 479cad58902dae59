/* msg.c - contract values <-> control.proto messages (see msg.h). */
#include "ctl/msg.h"

#include <stdio.h>
#include <string.h>

void ctl_spec_pack(const gm_worker_spec *s, Gemma__Control__V1__WorkerSpec *m)
{
    gemma__control__v1__worker_spec__init(m);
#define PACK_(type, name, num) m->name = s->name;
    GM_SPEC_FIELDS(PACK_)
#undef PACK_
    m->model_dir = (char *)s->model_dir;
}

gm_status ctl_spec_unpack(const Gemma__Control__V1__WorkerSpec *m, gm_worker_spec *s)
{
    ctl_spec_init(s);
    if (!m)
        return gm_fail(GM_ERR_FORMAT, "worker spec: none in the message");
#define UNPACK_(type, name, num) s->name = (type)m->name;
    GM_SPEC_FIELDS(UNPACK_)
#undef UNPACK_
    gm_status st = ctl_spec_set_model(s, m->model_dir);
    return st != GM_OK ? st : ctl_spec_check(s);
}

void ctl_model_pack(const gm_model_config *c, Gemma__Control__V1__ModelConfig *m)
{
    gemma__control__v1__model_config__init(m);
    m->vocab_size = c->vocab_size;
    m->hidden_size = c->hidden_size;
    m->intermediate_size = c->intermediate_size;
    m->num_layers = c->num_layers;
    m->num_heads = c->num_heads;
    m->num_kv_heads = c->num_kv_heads;
    m->head_dim = c->head_dim;
    m->max_position = c->max_position;
    m->rope_theta = c->rope_theta;
    m->rms_norm_eps = c->rms_norm_eps;
    m->bos_id = c->bos_id;
    m->eos_id = c->eos_id;
    m->pad_id = c->pad_id;
    m->torch_dtype = (char *)c->torch_dtype;
}

void ctl_model_unpack(const Gemma__Control__V1__ModelConfig *m, gm_model_config *c)
{
    memset(c, 0, sizeof *c);
    if (!m)
        return;
    c->vocab_size = m->vocab_size;
    c->hidden_size = m->hidden_size;
    c->intermediate_size = m->intermediate_size;
    c->num_layers = m->num_layers;
    c->num_heads = m->num_heads;
    c->num_kv_heads = m->num_kv_heads;
    c->head_dim = m->head_dim;
    c->max_position = m->max_position;
    c->rope_theta = m->rope_theta;
    c->rms_norm_eps = m->rms_norm_eps;
    c->bos_id = m->bos_id;
    c->eos_id = m->eos_id;
    c->pad_id = m->pad_id;
    snprintf(c->torch_dtype, sizeof c->torch_dtype, "%s", m->torch_dtype ? m->torch_dtype : "");
    gm_config_set_gemma1(c);
}

void ctl_sizing_pack(const gm_sizing *z, Gemma__Control__V1__Ready *r)
{
    r->kv_num_blocks = z->kv_num_blocks;
    r->kv_bytes = z->kv_bytes;
    r->max_seqs = z->max_seqs;
    r->max_tokens = z->max_tokens;
    r->max_context = z->max_context;
    r->why_kv = (char *)z->why_kv;
    r->why_max_seqs = (char *)z->why_seqs;
    r->why_max_tokens = (char *)z->why_tokens;
    r->why_max_context = (char *)z->why_context;
}

void ctl_sizing_unpack(const Gemma__Control__V1__Ready *r, gm_sizing *z)
{
    memset(z, 0, sizeof *z);
    z->kv_num_blocks = r->kv_num_blocks;
    z->kv_bytes = r->kv_bytes;
    z->max_seqs = r->max_seqs;
    z->max_tokens = r->max_tokens;
    z->max_context = r->max_context;
    snprintf(z->why_kv, sizeof z->why_kv, "%s", r->why_kv ? r->why_kv : "");
    snprintf(z->why_seqs, sizeof z->why_seqs, "%s", r->why_max_seqs ? r->why_max_seqs : "");
    snprintf(z->why_tokens, sizeof z->why_tokens, "%s", r->why_max_tokens ? r->why_max_tokens : "");
    snprintf(z->why_context, sizeof z->why_context, "%s", r->why_max_context ? r->why_max_context : "");
}
