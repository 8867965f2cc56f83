/* SPDX-License-Identifier: MIT */
/*
 * What the node's setup needs from the requester and responder (lib/rpc.c):
 * the node's share of RPC (its responders and requesters, the direct-call
 * connections), and the `RPC` listener command that hands requests to the
 * node's responders.
 */
#ifndef TEMPEST_RPC_PRIV_H
#define TEMPEST_RPC_PRIV_H

struct tempest_node;

/** Attaches the node's share of RPC to a new node (lib/services.c): its
 *  `stop` hook cancels the direct calls (TEMPEST_ECANCELED) and frees the
 *  share. Responders and requesters must be freed before (they are logged
 *  and left alone otherwise). Returns 0 or a negative TEMPEST_E code. */
int tp_rpc_attach(struct tempest_node *node);

/** Adds the `RPC <service> <type> <json>` command to a new node's listener
 *  (lib/services.c): it replies at once with an error, or defers the reply
 *  to the responder's handler. `RPC <job_id> <json> [MORE|ERROR]` stays an
 *  answer to a job whose action is named RPC. Returns 0 or a negative
 *  TEMPEST_E code. */
int tp_responder_attach(struct tempest_node *node);

#endif
