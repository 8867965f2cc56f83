/* SPDX-License-Identifier: MIT */
/*
 * What the node needs from the requester and responder (lib/rpc.c): the
 * dispatch of `RPC` commands that arrive on the node listener to the
 * node's responders, and the teardown of the direct-call connections.
 */
#ifndef TEMPEST_RPC_PRIV_H
#define TEMPEST_RPC_PRIV_H

#include <stdbool.h>
#include <stddef.h>

struct evbuffer;
struct tempest_node;

/** True when a listener command is a request (`RPC <service> <type> <json>`)
 *  rather than an answer to a job whose action is named RPC
 *  (`RPC <job_id> <json> [MORE|ERROR]`). */
bool tp_rpc_is_request(int argc, const char **argv, const size_t *argvlen);

/** Serves one `RPC` command (a tp_command_fn body): replies at once with an
 *  error, or defers the reply to the responder's handler. */
void tp_rpc_command(struct tempest_node *node, int argc, const char **argv, const size_t *argvlen,
                    struct evbuffer *out);

/** Cancels the direct calls (TEMPEST_ECANCELED) and frees the node's RPC
 *  state; called by the node's destroy. Responders and requesters must be
 *  freed before (they are logged and left alone otherwise). */
void tp_rpc_node_free(struct tempest_node *node);

#endif
