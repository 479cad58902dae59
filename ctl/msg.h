/* msg.h - the contract's values to and from their control.proto messages:
 * the worker spec, the model config and the sizing a rank reports in Ready.
 * One place for each conversion, so that sender and receiver cannot disagree. */
#ifndef GM_CTL_MSG_H
#define GM_CTL_MSG_H

#include "common/model_config.h"
#include "common/status.h"
#include "ctl/sizing.h"
#include "ctl/spec.h"
#include "proto/control.pb-c.h"

/* Fill m from s; m->model_dir points into s (borrowed while m is used). */
void ctl_spec_pack(const gm_worker_spec *s, Gemma__Control__V1__WorkerSpec *m);
/* Fill s from m and check it (ctl_spec_check); m NULL is an error. */
gm_status ctl_spec_unpack(const Gemma__Control__V1__WorkerSpec *m, gm_worker_spec *s);

/* The fields of gm_model_config that control.proto carries; m->torch_dtype points into c. */
void ctl_model_pack(const gm_model_config *c, Gemma__Control__V1__ModelConfig *m);
/* c is zeroed first; m NULL leaves it zero. Gemma 1's switches are set. */
void ctl_model_unpack(const Gemma__Control__V1__ModelConfig *m, gm_model_config *c);

/* A Ready's sizing fields from z (the why strings point into z). */
void ctl_sizing_pack(const gm_sizing *z, Gemma__Control__V1__Ready *r);
void ctl_sizing_unpack(const Gemma__Control__V1__Ready *r, gm_sizing *z);

#endif
