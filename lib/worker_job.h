/* SPDX-License-Identifier: MIT */
/*
 * The job as the layers above the worker see it: its node, and the calls
 * they make for it. A call in flight (a session command, say) is linked in
 * its worker's list, so that the worker can detach it from a job that is
 * finished (its `job` becomes NULL) and cancel it when the worker is freed.
 * This is all such a layer knows of the worker (lib/session_job.c uses it);
 * the worker calls nothing above it, only the `cancel` function it is given.
 */
#ifndef TEMPEST_WORKER_JOB_H
#define TEMPEST_WORKER_JOB_H

#include <tempest/tempest.h>

typedef struct tp_job_call tp_job_call;

/** The call's worker is being freed: the call reports TEMPEST_ECANCELED
 *  now, and nothing later. It is unlinked and its `job` is NULL already. */
typedef void tp_job_call_cancel_fn(tp_job_call *call);

/** A call in flight for a job; embedded in the caller's own struct. */
struct tp_job_call {
    tp_job_call *prev, *next;
    tp_job_call **head;            /* the worker's list; NULL once unlinked */
    tempest_job *job;              /* NULL once the job is finished */
    tp_job_call_cancel_fn *cancel; /* set by the caller before linking */
};

/** The job's node (borrowed; it outlives the job and its worker). */
tempest_node *tp_job_node(const tempest_job *job);

/** Links `call` in the list of the worker of `call->job` (not NULL). */
void tp_job_call_link(tp_job_call *call);

/** Unlinks `call`; does nothing when it is not linked. */
void tp_job_call_unlink(tp_job_call *call);

#endif
